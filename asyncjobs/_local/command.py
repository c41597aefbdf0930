"""Command jobs: an external program whose stdout lines are output items and whose stderr lines
are error records.

``CommandSpec.build`` checks everything it can before a job exists (a bad ``cwd`` raises at
``start_command`` and creates no job); ``run_command`` is the job's body, driven through its
``Run`` (the runner API).

- The program leads its own process group (a new session), so stopping the job stops whatever it
  started too: ``stop()`` sends SIGTERM to the group, waits ``stop_grace`` seconds (on the
  runner's ``Clock``), sends SIGKILL, and always reaps. When the job ends, for whatever reason,
  anything still left in the group is killed: nothing a job started outlives it (a program
  meant to must leave the group: ``setsid``).
- The job ends once the program has exited *and* both pipes are at EOF, so output written by a
  grandchild that still holds the pipes is not lost (and such a job stays ``RUNNING`` until it is
  done, or stopped).
- Reading is the backpressure: one task per pipe appends its lines to the job's log, waiting when a
  ``block`` buffer is full; then the reading stops, the pipe fills and the kernel holds the program.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio
import attrs
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from .._core import checks
from .._core.checks import SHELL as _SHELL
from .._core.checks import Input as Input
from .._core.clock import REAL, Clock
from .._core.errors import CommandFailed, JobArgumentError
from .._core.jsonlines import JsonLines, OutputMode, check_output
from .._core.lines import CHUNK, check_lines, input_chunks, splitter
from .._core.models import StreamName
from .._core.runner import Run
from . import pipes

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
    #: ``"json"``: stdout lines parsed as JSON (``_core.jsonlines``), off the native path.
    output: OutputMode = attrs.field(default="text", repr=False)  # reprs as before issue 15

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
        output: object = "text",
    ) -> CommandSpec:
        """Check a ``start_command`` call; bad arguments raise ``JobArgumentError`` here (the
        rules are ``_core.checks``': ``session.jobs`` checks a call with them before sending it,
        and the job host builds its command jobs here).

        - ``command``: an argv list of str (run directly, no shell) or a str (run by
          ``/bin/sh -c``).
        - ``cwd``: the directory to run in; default the caller's current directory.
        - ``env``: adds to / overrides the caller's environment; it does not replace it.
        - ``input``: ``None`` (stdin is ``/dev/null``), ``bytes``, a ``str`` (sent as UTF-8), or an
          iterable of lines (``str`` or ``bytes``; a line without a trailing newline gets one),
          fed by a task, then stdin is closed. A program that stops reading early is fine.
        - ``lines``: ``True`` splits stdout and stderr into lines; ``False`` passes the bytes
          through unsplit, one ``bytes`` item per chunk read.
        - ``output``: ``"json"`` parses each stdout line as JSON into a data record (a line
          that is not JSON: an error record holding a ``JsonLineError``).

        No NUL byte in an argv element, the shell string, ``cwd`` or ``env``: the operating
        system can't pass one.
        """
        argv, display = checks.command(command)
        return cls(
            argv,
            display,
            _cwd(cwd),
            _env(env),
            checks.input(input),
            checks.grace(stop_grace),
            check_lines(lines),
            check_output(output, lines=lines is True),
        )


def _cwd(value: object) -> str:
    """``cwd`` as an absolute path that exists here (the machine that runs the job)."""
    given = checks.cwd(value)
    if given is None:
        return os.getcwd()
    path = os.path.abspath(given)
    if not os.path.exists(path):
        raise JobArgumentError(
            f"cwd {path!r} does not exist; create it first or pass an existing directory as cwd="
        )
    if not os.path.isdir(path):
        raise JobArgumentError(f"cwd {path!r} is not a directory; pass a directory as cwd=")
    return str(path)


def _env(value: object) -> dict[str, str] | None:
    """``env`` added to this process's environment: the whole environment the job gets."""
    added = checks.env(value)
    return None if added is None else {**os.environ, **added}


# -- running -----------------------------------------------------------------------------------


#: Reads one of a program's pipes until EOF, into wherever its output goes: ``(pipe, stream)``.
Pump = Callable[[ByteReceiveStream, StreamName], Awaitable[None]]


async def run_command(
    run: Run, spec: CommandSpec, pump: Pump | None = None, *, clock: Clock = REAL
) -> None:
    """The body of a command job (see ``run_in_slot``): spawn, read both pipes until the
    program exited and they are at EOF, report how it ended.

    ``pump`` reads a pipe; the default splits it into the job's record log (the job host
    passes one that packs lines into its store). Whatever ends it (the program, ``stop()``, a
    cancellation with the manager, a failing input iterable), the process group is terminated
    (the grace period on ``clock``) and reaped before this returns or raises.
    """
    if pump is None:
        if spec.input is None and spec.output == "text" and pipes.available():
            await _run_native(run, spec, clock)
            return

        async def pump(stream: ByteReceiveStream, name: StreamName) -> None:
            if name == "output" and spec.output == "json":
                await _pump_json(stream, run, JsonLines(run.label))
            else:
                await _pump(stream, run, name, spec.lines)

    process = await _spawn(run, spec)
    drained = False
    try:
        if not run.stop_requested:  # else stop() landed while it was being spawned
            run.started()
            drained = await _supervise(run, spec, process, pump)
    finally:
        with anyio.CancelScope(shield=True):
            await _terminate(process, spec.stop_grace, clock)
            # Closes the pipes and reaps (shielded itself). A program reaped with both pipes
            # at EOF and no stdin pipe has nothing left to close (asyncio closed its transport
            # at the last EOF): skipping it spares a short command two scheduling rounds.
            if not drained or process.stdin is not None:
                await process.aclose()
    _report(run, spec, process.returncode)


async def _run_native(run: Run, spec: CommandSpec, clock: Clock) -> None:
    """``run_command`` on the loop's reader callbacks (see ``pipes``): no reader tasks."""
    try:
        process = pipes.spawn(spec.argv, spec.cwd, spec.env, spec.lines, run.log)
    except OSError as exc:
        raise _failed_spawn(run, spec, exc) from exc
    try:
        if not run.stop_requested:  # else stop() landed before it could start
            run.started()
            with run.cancelled_on_stop():
                await process.drain()
    finally:
        process.stop_reading()  # a stop or a failure: nothing more is appended
        with anyio.CancelScope(shield=True):
            await _terminate(process, spec.stop_grace, clock)
        process.close()
    _report(run, spec, process.returncode)


async def _spawn(run: Run, spec: CommandSpec) -> Process:
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
        raise _failed_spawn(run, spec, exc) from exc


def _failed_spawn(run: Run, spec: CommandSpec, exc: OSError) -> CommandFailed:
    error = _spawn_error(run.label, spec, exc)
    run.append_nowait("error", error)  # why it failed, where records are read too
    return error


def _spawn_error(label: str, spec: CommandSpec, exc: OSError) -> CommandFailed:
    program = spec.argv[0]
    where = f"{label}: can't run {program!r}"
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


async def _supervise(run: Run, spec: CommandSpec, process: Process, pump: Pump) -> bool:
    """Feed stdin and read stdout and stderr until the program has exited and both pipes are at
    EOF (stdin feeding is abandoned then), or until ``stop()``. True if it got that far (the
    program reaped, both pipes read to EOF), False if a stop cut it short."""
    assert process.stdout is not None and process.stderr is not None
    failed: list[Exception] = []
    drained: list[bool] = []  # the stderr pump reached EOF
    done = False
    # stop() cancels through a state listener, and stdout is read in this task: one task and
    # one task group per command less (short commands are dominated by them).
    with run.cancelled_on_stop():
        async with anyio.create_task_group() as tg:
            if process.stdin is not None and spec.input is not None:
                tg.start_soon(_feed, process.stdin, spec.input, failed, tg.cancel_scope)
            stderr_done = anyio.Event()
            tg.start_soon(
                _pump_then_set, pump, process.stderr, stderr_done, failed, tg.cancel_scope, drained
            )
            try:
                await pump(process.stdout, "output")
            except Exception as exc:  # e.g. the log's spill failed (a full disk)
                failed.append(exc)
            else:
                await stderr_done.wait()
                await process.wait()
                done = bool(drained)
            tg.cancel_scope.cancel()
    # The job's reason is the failure itself, not a task group's ExceptionGroup around it:
    # a pump failed (the log refused a line: its spill failed), or a lazy input iterable
    # raised or yielded something that is not a line.
    if failed:
        raise failed[0]
    return done and process.returncode is not None


async def _pump_then_set(
    pump: Pump,
    stream: ByteReceiveStream,
    done: anyio.Event,
    failed: list[Exception],
    scope: anyio.CancelScope,
    drained: list[bool],
) -> None:
    try:
        await pump(stream, "error")
        drained.append(True)
    except Exception as exc:  # the job fails of it: stop the rest
        failed.append(exc)
        scope.cancel()
    finally:
        done.set()


async def _pump(stream: ByteReceiveStream, run: Run, name: StreamName, lines: bool) -> None:
    """Append every line (or, with ``lines=False``, every chunk) of ``stream`` to the job's log,
    in order, until EOF.

    The hot loop: what one read brings is one ``Run.extend``, one batch in the log (no object
    per line). When a ``block`` buffer is full it takes what fits and waits for room for the
    rest; meanwhile nothing is read, the pipe fills and the kernel holds the program."""
    split = splitter(lines)
    extend = run.extend
    while True:
        try:
            chunk = await stream.receive(CHUNK)
        except anyio.EndOfStream:
            break
        await extend(name, split.feed(chunk))
    tail = split.flush()
    if tail is not None:
        await run.append(name, tail)


async def _pump_json(stream: ByteReceiveStream, run: Run, parse: JsonLines) -> None:
    """``_pump`` for ``output="json"``: stdout's lines as data records, in order with the
    error records of the lines that were not JSON."""
    while True:
        try:
            chunk = await stream.receive(CHUNK)
        except anyio.EndOfStream:
            break
        for name, values in parse.feed(chunk):
            for value in values:  # one record each: a data record's size is its own
                await run.append(name, value)
    for name, values in parse.flush():
        for value in values:
            await run.append(name, value)


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


class _Reapable(Protocol):
    """What ``_terminate`` needs of a process: anyio's ``Process`` or ``pipes.NativeProcess``."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...


async def _terminate(process: _Reapable, grace: float, clock: Clock) -> None:
    """Make sure nothing of the program runs any more (call it shielded): a running program's
    group gets SIGTERM, ``grace`` seconds on ``clock``, then SIGKILL; the program is reaped;
    whatever is left of its group afterwards (a grandchild) is killed."""
    pgid = process.pid  # a new session: the program leads its own group
    if process.returncode is None:
        _killpg(pgid, signal.SIGTERM)
        with clock.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            _killpg(pgid, signal.SIGKILL)
    await process.wait()
    _killpg(pgid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pgid, sig)


def _report(run: Run, spec: CommandSpec, code: int | None) -> None:
    """The exit status becomes the job's end: COMPLETED, FAILED, or STOPPED if it was asked to."""
    if run.job.state.is_finished:  # already ended elsewhere: nothing left to report
        return
    run.job.exit_status = code
    if run.stop_requested:
        run.stopped()
    elif code == 0:
        run.completed()
    else:
        assert code is not None
        run.failed(_exit_error(run.label, spec, code))


def _exit_error(label: str, spec: CommandSpec, code: int) -> CommandFailed:
    display = spec.display if len(spec.display) <= 100 else spec.display[:97] + "..."
    subject = f"{label}: command {display!r}"
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
