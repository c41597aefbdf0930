"""Command jobs: an external program whose stdout lines are output items and whose stderr lines
are error records.

``CommandSpec.build`` checks everything it can before a job exists (a bad ``cwd`` raises at
``start_command`` and creates no job); ``run_command`` is the job's body.

- The program leads its own process group (a new session), so stopping the job stops whatever it
  started too: ``stop()`` sends SIGTERM to the group, waits ``stop_grace`` seconds, sends SIGKILL,
  and always reaps. When the job ends, for whatever reason, anything still left in the group is
  killed: nothing a job started outlives it (a program meant to must leave the group: ``setsid``).
- The job ends once the program has exited *and* both pipes are at EOF, so output written by a
  grandchild that still holds the pipes is not lost (and such a job stays ``RUNNING`` until it is
  done, or stopped).
- Reading is the backpressure: one task per pipe appends its lines to the job's log, waiting when a
  ``block`` buffer is full; then the reading stops, the pipe fills and the kernel holds the program.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeAlias

import anyio
import attrs
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from ._errors import CommandFailed, JobArgumentError
from ._job import Job
from ._lines import CHUNK, check_lines, input_chunks, splitter
from ._log import RecordLog
from ._models import StreamName

#: What is fed to stdin: all of it at once, or lines as an iterable yields them.
Input: TypeAlias = bytes | Iterable[str | bytes] | None

_SHELL = ("/bin/sh", "-c")
_BROKEN = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    BrokenPipeError,
    ConnectionResetError,
)


@attrs.frozen
class CommandSpec:
    """A command checked and ready to run. ``argv`` is what is executed (a shell string becomes
    ``("/bin/sh", "-c", string)``), ``display`` what users read as ``job.command``, ``env`` the
    whole environment (``None``: the caller's)."""

    argv: tuple[str, ...]
    display: str
    cwd: str
    env: Mapping[str, str] | None = attrs.field(repr=False)  # no environment in reprs and logs
    input: Input = attrs.field(default=None, repr=False)
    stop_grace: float = 5.0
    lines: bool = True

    @classmethod
    def build(
        cls,
        command: str | Iterable[str | os.PathLike[str]],
        *,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        input: Any,
        stop_grace: float,
        lines: object = True,
    ) -> CommandSpec:
        """Check a ``start_command`` call; bad arguments raise ``JobArgumentError`` here.

        - ``command``: an argv list of str (run directly, no shell) or a str (run by
          ``/bin/sh -c``).
        - ``cwd``: the directory to run in; default the caller's current directory.
        - ``env``: adds to / overrides the caller's environment; it does not replace it.
        - ``input``: ``None`` (stdin is ``/dev/null``), ``bytes``, a ``str`` (sent as UTF-8), or an
          iterable of lines (``str`` or ``bytes``; a line without a trailing newline gets one),
          fed by a task, then stdin is closed. A program that stops reading early is fine.
        - ``lines``: ``True`` splits stdout and stderr into lines; ``False`` passes the bytes
          through unsplit, one ``bytes`` item per chunk read.
        """
        argv, display = _argv(command)
        return cls(
            argv,
            display,
            _cwd(cwd),
            _env(env),
            _input(input),
            _grace(stop_grace),
            check_lines(lines),
        )


def _argv(command: object) -> tuple[tuple[str, ...], str]:
    if isinstance(command, str):
        if not command.strip():
            raise JobArgumentError("start_command() got an empty command string; give a program")
        return (*_SHELL, command), command
    if isinstance(command, bytes | bytearray) or not isinstance(command, Iterable):
        raise JobArgumentError(
            f"command must be an argv list of str (['ls', '-l']) or a shell string ('ls -l'), "
            f"got {type(command).__name__}: {command!r}"
        )
    items = tuple(command)
    if not items:
        raise JobArgumentError("start_command() got an empty argv; the first item is the program")
    argv = tuple(os.fspath(a) if isinstance(a, os.PathLike) else a for a in items)
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise JobArgumentError(
                f"command[{i}] must be a str, got {type(items[i]).__name__}: {items[i]!r}; "
                f"convert it with str() (argv is {items!r})"
            )
    return argv, shlex.join(argv)


def _cwd(cwd: object) -> str:
    if cwd is None:
        return os.getcwd()
    if not isinstance(cwd, str | os.PathLike):
        raise JobArgumentError(f"cwd must be a path (str or os.PathLike), got {cwd!r}")
    path = os.path.abspath(os.fspath(cwd))
    if not os.path.exists(path):
        raise JobArgumentError(
            f"cwd {path!r} does not exist; create it first or pass an existing directory as cwd="
        )
    if not os.path.isdir(path):
        raise JobArgumentError(f"cwd {path!r} is not a directory; pass a directory as cwd=")
    return str(path)


def _env(env: object) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise JobArgumentError(f"env must be a mapping of str to str, got {env!r}")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise JobArgumentError(f"env: {key!r} is not a valid variable name (a str, no '=')")
        if not isinstance(value, str) or "\0" in value:
            raise JobArgumentError(
                f"env[{key!r}] must be a str without NUL, got {type(value).__name__}: {value!r}"
            )
    return {**os.environ, **env}


def _input(value: object) -> Input:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise JobArgumentError(
            f"input must be bytes, str or an iterable of lines (str or bytes), "
            f"got {type(value).__name__}: {value!r}"
        )
    if isinstance(value, list | tuple):  # checked now, so that the caller hears of a bad line
        return b"".join(input_chunks(value))
    return value  # lazy (a generator, a file): checked line by line as it is fed


def _grace(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise JobArgumentError(f"stop_grace must be a number of seconds >= 0, got {value!r}")
    return float(value)


# -- running -----------------------------------------------------------------------------------


#: Reads one of a program's pipes until EOF, into wherever its output goes: ``(pipe, stream)``.
Pump = Callable[[ByteReceiveStream, StreamName], Awaitable[None]]


async def run_command(
    job: Job, spec: CommandSpec, started: Callable[[], None], pump: Pump | None = None
) -> None:
    """The body of a command job (see ``_runner.run_in_slot``): spawn, read both pipes until the
    program exited and they are at EOF, report how it ended.

    ``pump`` reads a pipe; the default splits it into the job's record log (the job host
    passes one that packs lines into its store). Whatever ends it (the program, ``stop()``, a
    cancellation with the manager, a failing input iterable), the process group is terminated
    and reaped before this returns or raises.
    """
    if pump is None:
        log = job._log
        assert log is not None

        async def pump(stream: ByteReceiveStream, name: StreamName) -> None:
            await _pump(stream, log, name, spec.lines)

    process = await _spawn(job, spec)
    async with process:  # closes the pipes and reaps, once _terminate has made sure it exits
        try:
            if not job.stop_requested:  # else stop() landed while it was being spawned
                started()
                await _supervise(job, spec, process, pump)
        finally:
            with anyio.CancelScope(shield=True):
                await _terminate(process, spec.stop_grace)
    _report(job, spec, process.returncode)


async def _spawn(job: Job, spec: CommandSpec) -> Process:
    """Start the program in a new session (so in its own process group). ``OSError`` becomes
    ``CommandFailed`` here, the one place where the operating system's errors are translated."""
    try:
        return await anyio.open_process(
            spec.argv,
            stdin=subprocess.DEVNULL if spec.input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.cwd,
            env=spec.env,
            start_new_session=True,
        )
    except OSError as exc:
        error = _spawn_error(job, spec, exc)
        assert job._log is not None
        job._log.append_nowait("error", error)  # why it failed, where records are read too
        raise error from exc


def _spawn_error(job: Job, spec: CommandSpec, exc: OSError) -> CommandFailed:
    program = spec.argv[0]
    where = f"{job._label()}: can't run {program!r}"
    if exc.filename is not None and os.fspath(exc.filename) == spec.cwd:
        message = f"{where}: its cwd {spec.cwd!r} is gone ({exc.strerror}); pass an existing cwd="
    elif isinstance(exc, FileNotFoundError):
        fix = "check the path" if "/" in program else "check the program name and PATH"
        message = f"{where}: no such program; {fix}"
    elif isinstance(exc, PermissionError):
        message = f"{where}: permission denied; is it an executable file (chmod +x)?"
    else:
        message = f"{where}: {exc.strerror or exc}; check the program name and PATH"
    return CommandFailed(message)


async def _supervise(job: Job, spec: CommandSpec, process: Process, pump: Pump) -> None:
    """Feed stdin and read stdout and stderr until the program has exited and both pipes are at
    EOF (stdin feeding is abandoned then), or until ``stop()``."""
    assert process.stdout is not None and process.stderr is not None
    failed: list[Exception] = []
    with anyio.CancelScope() as scope:
        # stop() cancels through a state listener, and stdout is read in this task: one task
        # and one task group per command less (short commands are dominated by them).
        def on_change(changed: Job) -> None:
            if changed.stop_requested:
                scope.cancel()

        job._listeners.append(on_change)
        try:
            if job.stop_requested:
                scope.cancel()
            async with anyio.create_task_group() as tg:
                if process.stdin is not None and spec.input is not None:
                    tg.start_soon(_feed, process.stdin, spec.input, failed, tg.cancel_scope)
                stderr_done = anyio.Event()
                tg.start_soon(_pump_then_set, pump, process.stderr, stderr_done)
                await pump(process.stdout, "output")
                await stderr_done.wait()
                await process.wait()
                tg.cancel_scope.cancel()
        finally:
            job._listeners.remove(on_change)
    if failed:  # a lazy input iterable raised, or yielded something that is not a line
        raise failed[0]


async def _pump_then_set(pump: Pump, stream: ByteReceiveStream, done: anyio.Event) -> None:
    try:
        await pump(stream, "error")
    finally:
        done.set()


async def _pump(stream: ByteReceiveStream, log: RecordLog, name: StreamName, lines: bool) -> None:
    """Append every line (or, with ``lines=False``, every chunk) of ``stream`` to ``log``, in
    order, until EOF.

    The hot loop: ``append_nowait`` costs no coroutine per line. When a ``block`` buffer is full it
    raises ``WouldBlock`` and the awaited ``append`` waits for room; meanwhile nothing is read.
    """
    split = splitter(lines)
    append_nowait = log.append_nowait
    while True:
        try:
            chunk = await stream.receive(CHUNK)
        except anyio.EndOfStream:
            break
        for line in split.feed(chunk):
            try:
                append_nowait(name, line)
            except anyio.WouldBlock:
                await log.append(name, line)
    tail = split.flush()
    if tail is not None:
        await log.append(name, tail)


async def _feed(
    stdin: ByteSendStream, data: Input, failed: list[Exception], scope: anyio.CancelScope
) -> None:
    """Write ``data`` to stdin, then close it. A program that exits or closes its stdin before
    reading everything is its own business: the rest is discarded."""
    chunks = input_chunks(data) if data is not None and not isinstance(data, bytes) else [data]
    try:
        for chunk in chunks:
            if chunk:
                await stdin.send(chunk)
        await stdin.aclose()
    except _BROKEN:
        pass
    except Exception as exc:  # the caller's iterable failed: so does the job
        failed.append(exc)
        scope.cancel()


async def _terminate(process: Process, grace: float) -> None:
    """Make sure nothing of the program runs any more (call it shielded): a running program's
    group gets SIGTERM, ``grace`` seconds, then SIGKILL; the program is reaped; whatever is left
    of its group afterwards (a grandchild) is killed."""
    pgid = process.pid  # a new session: the program leads its own group
    if process.returncode is None:
        _killpg(pgid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            _killpg(pgid, signal.SIGKILL)
    await process.wait()
    _killpg(pgid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pgid, sig)


def _report(job: Job, spec: CommandSpec, code: int | None) -> None:
    """The exit status becomes the job's end: COMPLETED, FAILED, or STOPPED if it was asked to."""
    if job.state.is_finished:  # already ended elsewhere: nothing left to report
        return
    job.exit_status = code
    if job.stop_requested:
        job._mark_stopped()
    elif code == 0:
        job._complete()
    else:
        assert code is not None
        job._fail(_exit_error(job, spec, code))


def _exit_error(job: Job, spec: CommandSpec, code: int) -> CommandFailed:
    display = spec.display if len(spec.display) <= 100 else spec.display[:97] + "..."
    subject = f"{job._label()}: command {display!r}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal"
        return CommandFailed(
            f"{subject} was killed by {name} ({-code})", exit_status=code, signal=-code
        )
    hint = ""
    if spec.argv[:2] == _SHELL and code in (126, 127):
        hint = (
            " (the shell did not find the command; check its name and PATH)"
            if code == 127
            else " (the shell could not execute the command; check its permissions)"
        )
    return CommandFailed(f"{subject} exited with status {code}{hint}", exit_status=code)
