"""The parent's end of the worker protocol (defined in ``worker``): frames, a job's call made
into one frame (``prepare_call``), and ``Worker``, one worker process with its pipes (how it is
started, how it is stopped).

A frame is ``worker.HEADER`` (the length) then a pickle. Pickle is fine here: both ends are our
own processes, started by us. Nothing read from another host ever goes through this module.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import Process

from .._core import checks
from .._core.clock import REAL, Clock
from .._core.errors import JobArgumentError
from . import worker as _worker
from .worker import HEADER

#: How much to ask the pipe for at once: many small frames arrive in one read.
CHUNK: Final = 1 << 18


class UndecodableFrame(Exception):
    """A whole frame arrived but does not unpickle here (e.g. a class this process can't
    import); the stream is still in step."""


class Interrupted(Exception):
    """A send or receive woken by ``Worker.interrupt()``: the worker's job is being stopped."""


def encode(message: object) -> bytes:
    """One frame holding ``message``."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


@final
class FrameReader:
    """Length-prefixed frames from a non-blocking pipe (which it owns), read in large chunks
    into one buffer.

    ``receive()`` is safe to cancel: bytes already read stay in the buffer for the next call.
    A frame that does not unpickle raises, but is consumed: the next frame reads fine. A read
    that found data without waiting is followed by a checkpoint, so a fast producer cannot keep
    the event loop to itself. ``interrupt()`` wakes a waiting ``receive()`` (and fails every
    later one) with ``Interrupted``.
    """

    __slots__ = ("_buffer", "_fd", "_interrupted")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._interrupted = False

    async def receive(self, *, fresh: bool = False) -> Any:
        """The next message; ``anyio.EndOfStream`` once the peer is gone (also mid-frame: a
        torn frame means the peer died while writing it). ``fresh``: the peer was just sent a
        request, so let others run once before the first read (the answer is likely there by
        then) rather than after it."""
        buffer = self._buffer
        waited = False
        if fresh and not buffer:
            await anyio.lowlevel.checkpoint()
            waited = True
        while True:
            have = len(buffer)
            if have >= HEADER.size:
                (size,) = HEADER.unpack_from(buffer)
                end = HEADER.size + size
                if have >= end:
                    break
                want = max(CHUNK, end - have)
            else:
                want = CHUNK
            if self._interrupted:
                raise Interrupted
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                chunk = os.read(self._fd, want)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._fd)
                except anyio.ClosedResourceError:
                    if self._interrupted:
                        raise Interrupted from None
                    raise
                waited = True
                continue
            except OSError as exc:  # EIO and the like: the pipe is no good any more
                raise anyio.BrokenResourceError from exc
            if not chunk:
                raise anyio.EndOfStream
            buffer += chunk
            if not waited:
                await anyio.lowlevel.checkpoint()
                waited = True
        data = buffer[HEADER.size : end]
        del buffer[:end]  # consumed even if it does not unpickle: the stream stays in step
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise UndecodableFrame(f"{type(exc).__name__}: {exc}") from exc

    def interrupt(self) -> None:
        if not self._interrupted:
            self._interrupted = True
            if self._fd >= 0:
                anyio.notify_closing(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            anyio.notify_closing(fd)
            os.close(fd)

    @property
    def buffered(self) -> int:
        """Bytes read from the pipe but not yet returned as a message."""
        return len(self._buffer)


# -- a job's call -----------------------------------------------------------------------------


@attrs.frozen
class ProcessCall:
    """A job's call, pickled once at start: ``frame`` is what one write to a worker sends."""

    name: str
    frame: bytes = attrs.field(repr=False)


def prepare_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
) -> ProcessCall:
    """Check and pickle a call for ``start_process``; bad input raises ``JobArgumentError``.

    ``cwd=None`` is the caller's directory now (a warm worker may have started elsewhere);
    ``env`` adds to (or overrides) the worker's environment for this job only.
    """
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    payload = _pickle_call(fn, args, kwargs, name)
    return ProcessCall(name, encode((_directory(cwd), _environment(env), payload)))


def _pickle_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> bytes:
    try:
        return pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        try:
            pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
        except Exception as fn_exc:
            raise JobArgumentError(
                f"start_process(): {name} cannot be sent to a child process ({fn_exc}); a lambda, "
                "closure or local function cannot be pickled: define it at module level"
            ) from fn_exc
        raise JobArgumentError(
            f"start_process(): the arguments of {name} cannot be sent to a child process ({exc}); "
            "pass picklable arguments (plain data, instances of module-level classes)"
        ) from exc


def _directory(cwd: str | os.PathLike[str] | None) -> str:
    given = checks.cwd(cwd)
    if given is None:
        try:
            return os.getcwd()
        except OSError as exc:
            raise JobArgumentError(
                f"start_process(): the current directory is gone ({exc.strerror}); pass cwd="
            ) from exc
    path = os.path.abspath(given)
    if not os.path.isdir(path):
        raise JobArgumentError(
            f"start_process(): cwd {path!r} is not an existing directory; create it or pass "
            "another cwd="
        )
    return path


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return checks.env(env)  # the rules of start_command's env=


# -- one worker process ----------------------------------------------------------------------

#: Loads ``worker.py`` by path (its cached bytecode too) without importing the package.
_BOOT: Final = (
    "import sys\n"
    "from importlib.machinery import SourceFileLoader\n"
    "m = type(sys)('__asyncjobs_worker__')\n"
    "m.__file__ = sys.argv[1]\n"
    "sys.modules[m.__name__] = m\n"
    "SourceFileLoader(m.__name__, m.__file__).exec_module(m)\n"
    "m.main()\n"
)


def worker_argv() -> list[str]:
    """How to start a worker: this interpreter, its flags (as multiprocessing passes them)."""
    flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()
    path = _worker.__file__
    if path is not None and path.endswith(".py") and os.path.exists(path):
        return [sys.executable, *flags, "-c", _BOOT, path]
    # No source file (a zip or bytecode-only install): import it, package and all.
    return [sys.executable, *flags, "-c", "from asyncjobs._local.worker import main; main()"]


def preparation_data() -> dict[str, Any]:
    """``multiprocessing.spawn.get_preparation_data``, made picklable and free of side effects.

    It would fix the parent's start method for good (``get_start_method()`` chooses the default
    when none was set, and a later ``set_start_method`` then raises), so that choice is undone.
    """
    from multiprocessing import context, spawn

    default = context._default_context
    chosen = getattr(default, "_actual_context", None)
    try:
        data = spawn.get_preparation_data("asyncjobs-worker")
    finally:
        setattr(default, "_actual_context", chosen)  # noqa: B010 - private, not in the stubs
    if chosen is None:
        data.pop("start_method", None)
    data["authkey"] = bytes(data["authkey"])  # an AuthenticationString refuses to be pickled
    return data


async def spawn_worker() -> Worker:
    """Start a worker process in its own session (its process group dies with it).

    Its stdin and stdout are pipes of our own, non-blocking on our side: a frame is written with
    one ``os.write`` and read with ``os.read``, with no stream object or checkpoint per frame.
    """
    preamble = encode(preparation_data())  # first: it raises in a worker's half-run __main__
    child_in, to_child = os.pipe()
    try:
        from_child, child_out = os.pipe()
    except BaseException:
        os.close(child_in)
        os.close(to_child)
        raise
    try:
        with anyio.CancelScope(shield=True):  # never lose a process half-started
            process = await anyio.open_process(
                worker_argv(),
                stdin=child_in,
                stdout=child_out,
                stderr=None,
                start_new_session=True,
            )
    except BaseException:
        os.close(to_child)
        os.close(from_child)
        raise
    finally:
        os.close(child_in)
        os.close(child_out)
    os.set_blocking(to_child, False)
    os.set_blocking(from_child, False)
    return Worker(process, from_child, to_child, preamble)


@final
class Worker:
    """One worker process and the two pipes to it; it runs one job at a time.

    ``busy`` is True from sending a job until its final frame arrived: a worker stopped while
    busy is out of step with the protocol and can only be killed.
    """

    __slots__ = (
        "_preamble",
        "_unsent",
        "_wfd",
        "busy",
        "frames",
        "interrupted",
        "jobs",
        "pid",
        "process",
    )

    def __init__(self, process: Process, rfd: int, wfd: int, preamble: bytes) -> None:
        self.process = process
        self.pid = process.pid
        self.frames = FrameReader(rfd)  # the worker's stdout, non-blocking
        self._wfd = wfd  # the worker's stdin, non-blocking; -1 once closed
        self._preamble = preamble  # the preparation frame, sent along with the first job
        self._unsent: bytes | memoryview = b""  # what write() left to flush()
        self.busy = False
        self.interrupted = False
        self.jobs = 0

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def write(self, frame: bytes) -> bool:
        """Start sending one frame (the first one goes with the preparation data) with no
        await: True if it was written whole, else finish it with ``flush()``."""
        self.busy = True
        self.jobs += 1
        if self._preamble:
            frame, self._preamble = self._preamble + frame, b""
        self._unsent = frame
        return self._write()

    def _write(self) -> bool:
        if self.interrupted:
            raise Interrupted
        if self._wfd < 0:
            raise anyio.ClosedResourceError
        data = self._unsent
        try:
            done = os.write(self._wfd, data)
        except BlockingIOError:
            done = 0
        except OSError as exc:  # EPIPE: the worker closed its end (it died)
            raise anyio.BrokenResourceError from exc
        self._unsent = memoryview(data)[done:] if done < len(data) else b""
        return not self._unsent

    async def flush(self) -> None:
        """Write the rest of the frame ``write()`` started, as the pipe makes room.
        ``anyio.BrokenResourceError`` if the worker is gone."""
        while not self._write():
            try:
                await anyio.wait_writable(self._wfd)
            except anyio.ClosedResourceError:
                if self.interrupted:
                    raise Interrupted from None
                raise

    def interrupt(self) -> None:
        """Wake a send or receive waiting on this worker with ``Interrupted``, and fail every
        later one: its job is being stopped, and the worker, out of step, is to be killed."""
        if not self.interrupted:
            self.interrupted = True
            self.frames.interrupt()
            if self._wfd >= 0:
                anyio.notify_closing(self._wfd)

    def _close_stdin(self) -> None:
        fd, self._wfd = self._wfd, -1
        if fd >= 0:
            anyio.notify_closing(fd)
            os.close(fd)

    def _close_pipes(self) -> None:
        self._close_stdin()
        self.frames.close()

    def signal_group(self, signum: int) -> None:
        """Signal the worker's process group: the worker and whatever it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def kill(self, grace: float, clock: Clock = REAL) -> None:
        """TERM the group, KILL it after ``grace`` seconds on ``clock``, always reap (shielded)."""
        with anyio.CancelScope(shield=True):
            if self.alive:
                self.signal_group(signal.SIGTERM)
                await self._wait_then_kill(grace, clock)
            self._close_pipes()
            await self.process.aclose()

    async def close(self, grace: float, clock: Clock = REAL) -> None:
        """Let an idle worker exit on its own (EOF on its stdin); kill it if it does not."""
        with anyio.CancelScope(shield=True):
            self._close_stdin()
            if self.alive:
                await self._wait_then_kill(grace, clock)
            else:  # it ended just now (reaped by that very check, on trio)
                self.signal_group(signal.SIGKILL)
            self._close_pipes()
            await self.process.aclose()

    async def wait_dead(self, grace: float, clock: Clock = REAL) -> int | None:
        """After EOF: reap the worker and return its exit status (negative: the signal), or
        ``None`` if it had to be killed because it lived on without its pipe."""
        try:
            if self.alive:
                return await self._wait_then_kill(grace, clock)
            self.signal_group(signal.SIGKILL)  # it ended just now: what it left in its group
            return self.process.returncode
        finally:  # cancelled or not: reaped
            await self.kill(grace, clock)

    async def _wait_then_kill(self, grace: float, clock: Clock) -> int | None:
        """Wait up to ``grace`` for the worker to end, then SIGKILL its group: the worker itself
        if it is still there, else whatever it left behind. The group is signalled right as
        the worker is reaped (no await in between), never later, when its pid may be reused.
        The exit status if it ended within ``grace``."""
        with clock.move_on_after(grace):
            await self.process.wait()
        status = self.process.returncode
        self.signal_group(signal.SIGKILL)
        return status

    def __repr__(self) -> str:
        state = "busy" if self.busy else "idle" if self.alive else "exited"
        return f"<asyncjobs worker pid={self.pid} {state} jobs={self.jobs}>"
