"""Command jobs on asyncio without streams or watcher threads: the event loop's reader callbacks
hand what each read of a pipe brought straight to the job's log, one batch per read, and a
``pidfd`` tells the loop when the program exited.

anyio's ``open_process`` (asyncio's ``create_subprocess_exec`` underneath) wraps each pipe in a
transport and a ``StreamReader``: every read costs a ``receive`` coroutine and its futures, a
program needs a task per pipe and a task group around them, and asyncio's default child watcher
starts a thread per program to wait for it. For the short commands that fan-outs and harnesses
run by the hundred that is most of a job's cost beyond the ``fork``. Here the loop calls back
on readable pipes, and the job's own task only waits: for the end (the program reaped and both
pipes at EOF), for room in a full ``block`` buffer (the pipe is not read meanwhile, so it fills
and the kernel holds the program: the same backpressure), or for a stop.

``run_command`` takes this path on asyncio (Linux ≥ 5.3: ``os.pidfd_open``) for a command
without ``input=`` and with the default pump; trio, stdin feeding and the job host's own pump
take the anyio path. The semantics (order, seqs, EOF before the end, the group killed at the
end) are the same, and the same tests run on both.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import deque
from collections.abc import Mapping
from typing import Any

from .._core.lines import Splitter, splitter
from .._core.log import RecordLog
from .._core.models import StreamName

_READ = 256 * 1024  # what asyncio's pipe transports read at once


def available() -> bool:
    """True on a running asyncio loop on a system with ``pidfd_open``."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio
        return False
    return True


class NativeProcess:
    """One program: its two pipes and its pidfd registered with the loop, its output appended
    to ``log`` as it comes. ``drain()`` is the job's wait; ``pid``, ``returncode`` and
    ``wait()`` are what the terminating needs; ``close()`` releases the descriptors."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pipes: dict[int, StreamName],
        log: RecordLog,
        lines: bool,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._popen = popen
        self.pid = popen.pid
        self._log = log
        #: The open pipes: fd → (stream, splitter); a pipe leaves at EOF.
        self._pipes: dict[int, tuple[StreamName, Splitter]] = {
            fd: (name, splitter(lines)) for fd, name in pipes.items()
        }
        self._paused: set[int] = set()
        #: Lines a full ``block`` buffer did not take, in order: (stream, lines).
        self._backlog: deque[tuple[StreamName, list[Any]]] = deque()
        self._failed: Exception | None = None
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._pidfd = -1
        for fd in self._pipes:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read, fd)
        self._watch()

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfd here after all (a sandbox): a thread waits, as asyncio's
            self._loop.run_in_executor(None, self._popen.wait).add_done_callback(
                lambda _: self._on_exit()
            )
            return
        self._loop.add_reader(self._pidfd, self._reap)

    # -- the loop's callbacks ---------------------------------------------------------------

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof(fd)
            return
        if self._failed is None:
            name, split = self._pipes[fd]
            lines = split.feed(data)
            if lines:
                self._add(fd, name, lines)

    def _eof(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        os.close(fd)
        name, split = self._pipes.pop(fd)
        tail = split.flush()
        if tail is not None and self._failed is None:
            self._add(fd, name, [tail])
        self._maybe_done()

    def _reap(self) -> None:
        if self._popen.poll() is None:
            return  # not yet (a spurious wake-up)
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._on_exit()

    def _on_exit(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self._pipes and self._exited.done():
            self._wake()

    # -- appending ---------------------------------------------------------------------------

    def _add(self, fd: int, name: StreamName, lines: list[Any]) -> None:
        if self._backlog:  # keep the order: behind what already waits for room
            self._hold(fd, name, lines)
            return
        try:
            taken = self._log.append_lines_nowait(name, lines)
        except Exception as exc:  # e.g. the spill failed (a full disk): the job fails of it
            self._failed = exc
            self._wake()
            return
        if taken < len(lines):
            self._hold(fd, name, lines[taken:])

    def _hold(self, fd: int, name: StreamName, lines: list[Any]) -> None:
        if fd in self._pipes and fd not in self._paused:
            self._loop.remove_reader(fd)  # nothing more is read: the pipe fills, the kernel waits
            self._paused.add(fd)
        self._backlog.append((name, lines))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the job's side ----------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def drain(self) -> None:
        """Wait until the program exited and both pipes are at EOF, appending what a full
        ``block`` buffer held back as room comes. Raises what an append raised."""
        while True:
            if self._failed is not None:
                raise self._failed
            if self._backlog:
                name, lines = self._backlog[0]
                await self._log.append_lines(name, lines)
                self._backlog.popleft()
                if not self._backlog:
                    self._resume()
                continue
            if not self._pipes and self._exited.done():
                return
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _resume(self) -> None:
        for fd in self._paused:
            if fd in self._pipes:
                self._loop.add_reader(fd, self._read, fd)
        self._paused.clear()

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        code = self._popen.returncode
        assert code is not None
        return code

    def stop_reading(self) -> None:
        """Read nothing more (the job is ending early: a stop, a failure)."""
        for fd in self._pipes:
            if fd not in self._paused:
                self._loop.remove_reader(fd)
                self._paused.add(fd)

    def close(self) -> None:
        """Close the pipes and the pidfd (call it once the program was reaped)."""
        for fd in self._pipes:
            if fd not in self._paused:
                self._loop.remove_reader(fd)
            os.close(fd)
        self._pipes.clear()
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def spawn(
    argv: tuple[str, ...], cwd: str, env: Mapping[str, str] | None, lines: bool, log: RecordLog
) -> NativeProcess:
    """Start ``argv`` in a new session (its own process group), stdin ``/dev/null``, stdout and
    stderr read into ``log``. ``OSError`` propagates, for the caller to translate."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return NativeProcess(popen, {out_r: "output", err_r: "error"}, log, lines)
