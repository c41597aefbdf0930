"""Process jobs: a Python callable run in a child Python process (Start-Job with a script block).

``prepare_call`` (in ``frames``) pickles the call once, at start, so that a callable that
cannot cross to a child fails there and then. A process job then runs like every other job:
``run_in_slot`` waits for a slot of the manager's process limiter (the limiter alone bounds how
many run), and ``run_process``, the job's body, leases a warm worker process from the
``WorkerPool`` (or has one started), writes one frame and reads frames back until the job's end,
appending each item through the job's ``Run``. Awaiting the append is the backpressure: in
``block`` mode the runner stops reading, the pipe fills and the child blocks in its write.

``stop()`` interrupts the worker's pipes from ``Run.on_stop`` (``Worker.interrupt``), which wakes
the exchange wherever it waits: no cancel scope or watcher task per job. A stopped job's worker
is killed (its whole process group: TERM, ``stop_grace`` on the pool's ``Clock``, KILL, reap,
inside a shield) and never reused; a worker that dies mid-job fails its job with
``CommandFailed``.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Any, final

import anyio
import attrs

from .._core.clock import REAL, Clock
from .._core.errors import AsyncJobsError, CommandFailed, RemoteError, map_os_errors
from .._core.runner import Run
from .frames import (
    Interrupted,
    ProcessCall,
    UndecodableFrame,
    Worker,
    prepare_call,
    spawn_worker,
)
from .worker import ERROR, ITEM, RESULT

__all__ = ["ProcessCall", "ProcessStart", "WorkerPool", "prepare_call", "run_process"]


@attrs.frozen
class WorkerPoolStatistics:
    """A snapshot of a ``WorkerPool``: live workers, idle ones, and how many were started."""

    live: int
    idle: int
    size: int
    spawned: int


@final
class WorkerPool:
    """The worker processes of one ``JobManager``: started on demand, reused, never outliving it.

    A worker runs one job at a time and afterwards waits idle for the next (at most ``size`` are
    kept). An ``isolated`` job gets a fresh worker that exits after it. Leaving ``async with``
    closes the idle workers (EOF on stdin, then a kill after ``stop_grace``) and kills the rest.
    """

    def __init__(self, *, size: int, stop_grace: float, clock: Clock = REAL) -> None:
        self.size = size
        self.stop_grace = stop_grace
        #: What ``stop_grace`` is measured on (a test passes a ``FakeClock``).
        self.clock = clock
        self._idle: list[Worker] = []
        self._live: dict[int, Worker] = {}  # every worker started and not yet reaped, by pid
        self._spawned = 0
        self._closed = False

    @property
    def idle(self) -> int:
        """How many warm workers wait for a job."""
        return len(self._idle)

    def pids(self) -> list[int]:
        """The pids of the workers not yet reaped (busy or idle)."""
        return sorted(self._live)

    def statistics(self) -> WorkerPoolStatistics:
        return WorkerPoolStatistics(len(self._live), len(self._idle), self.size, self._spawned)

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in list(self._live.values()):
                    tg.start_soon(self._close if worker in idle else self.kill, worker)

    # -- workers ---------------------------------------------------------------------------

    async def lease(self, call: ProcessCall, *, isolated: bool, label: str) -> Worker:
        """A worker for one job: the most recently idle one (no await: the common case), else
        a new one (``isolated``: always a new one, which exits after the job). A worker that
        cannot start raises, as ``map_os_errors`` translates it, naming ``label``'s job."""
        worker = None if isolated else self.take_idle()
        if worker is None:
            with map_os_errors(f"{label}: starting a worker process for {call.name}"):
                worker = await self.acquire(isolated=isolated)
        return worker

    def take_idle(self) -> Worker | None:
        """The most recently idle worker if it is alive (no await: the common case)."""
        idle = self._idle
        if idle and not self._closed and idle[-1].alive:
            return idle.pop()
        return None

    async def acquire(self, *, isolated: bool) -> Worker:
        """An idle worker (one that died while idle is reaped and skipped), or a new one."""
        if self._closed:
            raise AsyncJobsError("this worker pool is closed: its JobManager has exited")
        while self._idle and not isolated:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await self.kill(worker)
        worker = await spawn_worker()
        self._live[worker.pid] = worker
        self._spawned += 1
        return worker

    def keep(self, worker: Worker, *, reuse: bool) -> bool:
        """Put a healthy worker back in the idle list (no await: the common end of a job);
        False if it must be released with ``release()`` instead. (Whether it is still alive is
        checked when it is taken again: on trio that check is a system call.)"""
        healthy = worker.pid in self._live and not worker.busy and not worker.interrupted
        if reuse and healthy and not self._closed and len(self._idle) < self.size:
            if worker not in self._idle:
                self._idle.append(worker)
            return True
        return False

    async def release(self, worker: Worker, *, reuse: bool) -> None:
        """Take a worker back after a job: keep it idle, let it exit, or kill it if out of step."""
        if worker.pid not in self._live or worker in self._idle:
            return  # already reaped (stopped or dead) or already back
        if worker.busy or worker.interrupted or not worker.alive:
            await self.kill(worker)
        elif not self.keep(worker, reuse=reuse):
            await self._close(worker)

    async def kill(self, worker: Worker) -> None:
        """Kill a worker's process group and reap it (shielded; see ``Worker.kill``)."""
        try:
            await worker.kill(self.stop_grace, self.clock)
        finally:
            self._live.pop(worker.pid, None)

    async def reap_dead(self, worker: Worker) -> int | None:
        """Reap a worker whose pipe ended; its exit status (see ``Worker.wait_dead``)."""
        try:
            return await worker.wait_dead(self.stop_grace, self.clock)
        finally:
            self._live.pop(worker.pid, None)

    async def _close(self, worker: Worker) -> None:
        try:
            await worker.close(self.stop_grace, self.clock)
        finally:
            self._live.pop(worker.pid, None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<asyncjobs.WorkerPool {state} live={len(self._live)} idle={len(self._idle)} "
            f"size={self.size}>"
        )


# -- one job ------------------------------------------------------------------------------------


@final
class ProcessStart:
    """One process job's start: in its body (``run``), or before it without an await when an
    idle worker is there (``begin``, the slot queue's fast path: no task, no scheduling round
    per job when jobs come one after another)."""

    __slots__ = ("call", "isolated", "pool", "worker")

    def __init__(self, call: ProcessCall, pool: WorkerPool, *, isolated: bool) -> None:
        self.call = call
        self.pool = pool
        self.isolated = isolated
        self.worker: Worker | None = None  # leased by begin()

    def begin(self, run: Run) -> Callable[[], None] | None:
        if self.isolated:
            return None
        worker = self.pool.take_idle()
        if worker is None:
            return None
        self.worker = worker
        run.started()
        return self._give_back

    def _give_back(self) -> None:
        """The job never reached its body: its worker goes back idle (or, if the pool will not
        keep it, the pool's exit kills it with every live worker)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            self.pool.keep(worker, reuse=True)

    async def run(self, run: Run) -> None:
        await run_process(run, self.call, self.pool, isolated=self.isolated, worker=self.worker)


async def run_process(
    run: Run, call: ProcessCall, pool: WorkerPool, *, isolated: bool, worker: Worker | None = None
) -> None:
    """The body of a process job (see ``run_in_slot``): lease a worker (unless ``worker`` was
    leased for it already, the job then running), run the call on it, report how it ended.
    Whatever happens, the worker is back (idle, or reaped) before this returns or raises; a
    worker that cannot start fails the job (``run_in_slot`` records it)."""
    begun = worker is not None
    if worker is None:
        worker = await pool.lease(call, isolated=isolated, label=run.label)
    reuse = not isolated
    released = False
    try:
        if not begun:
            if run.stop_requested:  # stopped while its worker started: it never ran
                run.stopped()
                return
            run.started()
        ended, failure = await _exchange(run, call, worker, pool)
        released = pool.keep(worker, reuse=reuse)  # no await: the common end of a job
    finally:  # cancelled with the manager, stopped, failed: never leave a worker behind
        if not released:
            with anyio.CancelScope(shield=True):
                await pool.release(worker, reuse=reuse)
    if not ended:
        run.stopped()
    elif failure is not None:
        run.failed(failure)
    else:
        run.completed()


async def _exchange(
    run: Run, call: ProcessCall, worker: Worker, pool: WorkerPool
) -> tuple[bool, BaseException | None]:
    """Send the call, append what comes back: ``(ended, failure)``, ``failure`` None if the job
    completed, ``ended`` False if ``stop()`` came first (it interrupts the worker's pipes, which
    wakes the exchange wherever it waits)."""
    try:
        with run.on_stop(worker.interrupt):
            if not worker.write(call.frame):
                await worker.flush()
            frames = worker.frames
            message = await frames.receive(fresh=True)
            while message[0] == ITEM:
                await run.append(message[1], message[2])
                message = await frames.receive()
            worker.busy = False
            if message[0] == RESULT:
                if message[1] is not None:
                    await run.append("output", message[1])
                return True, None
            failure: BaseException = _remote_error(message)
    except Interrupted:
        return False, None
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        if worker.interrupted:
            return False, None
        failure = _death(run.label, call, worker, await pool.reap_dead(worker))
    except UndecodableFrame as exc:
        failure = CommandFailed(
            f"{run.label}: worker process {worker.pid} sent a value this process cannot "
            f"unpickle ({exc}); make sure the classes of what {call.name} returns or emits "
            "can be imported here"
        )
        failure.__cause__ = exc.__cause__
    await run.append("error", failure)
    return True, failure


def _remote_error(message: tuple[Any, ...]) -> RemoteError:
    assert message[0] == ERROR
    _, type_name, text, traceback, blob = message
    error = RemoteError(text, type_name=type_name, traceback=traceback)
    error.add_note(traceback.rstrip("\n"))
    if blob is not None:
        # It may not unpickle (e.g. an exception class whose __init__ takes other arguments).
        with contextlib.suppress(Exception):
            error.__cause__ = pickle.loads(blob)
    return error


def _death(label: str, call: ProcessCall, worker: Worker, status: int | None) -> CommandFailed:
    if status is None:
        how = "closed its pipe"
    elif status < 0:
        try:
            how = f"killed by {signal.Signals(-status).name}"
        except ValueError:
            how = f"killed by signal {-status}"
    else:
        how = f"exit status {status}"
    return CommandFailed(
        f"worker process {worker.pid} of {label} died ({how}) while running {call.name}",
        exit_status=status if status is not None and status >= 0 else None,
        signal=-status if status is not None and status < 0 else None,
    )
