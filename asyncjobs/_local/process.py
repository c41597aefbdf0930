"""Process jobs: a Python callable run in a child Python process (Start-Job with a script block).

``prepare_call`` (in ``_frames``) pickles the call once, at start, so that a callable that
cannot cross to a child fails there and then. A ``WorkerPool`` keeps warm worker processes
(``_worker.main``) and hands each job to one of them: one frame written, frames read back until
the job's end, each item appended to the job's log. Awaiting the append is the backpressure: in
``block`` mode the runner stops reading, the pipe fills and the child blocks in its write.

Process jobs have no task, task group or cancel scope of their own (per job, that machinery was
a quarter of the parent's work). ``WorkerPool.start`` marks a job ``RUNNING`` at once
when a slot of the manager's process limiter is free (on an idle worker, or on one spawned in
the caller's task), else queues it in ``NOT_STARTED``. A few *drivers*, at most one per slot,
run the jobs: a driver borrows one slot, runs a job, gives the slot back and takes the next
queued job with it (waiting in the limiter's line like any other job when command jobs hold the
slots), and with nothing queued it lingers one scheduling round for the next ``start()``. A job
stopped while queued is ``STOPPED`` at once and skipped: it never reaches a worker. A running
job's ``stop()`` interrupts its worker's pipes from a state listener (``Worker.interrupt``).

A stopped job's worker is killed (its whole process group: TERM, ``stop_grace``, KILL, reap, inside
a shield) and never reused; a worker that dies mid-job fails its job with ``CommandFailed``.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections import deque
from types import TracebackType
from typing import Any, final

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.errors import AsyncJobsError, CommandFailed, RemoteError, map_os_errors
from .._core.job import Job
from .frames import (
    Interrupted,
    ProcessCall,
    UndecodableFrame,
    Worker,
    prepare_call,
    spawn_worker,
)
from .worker import ERROR, ITEM, RESULT

__all__ = ["ProcessCall", "WorkerPool", "prepare_call"]


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

    def __init__(self, *, size: int, stop_grace: float) -> None:
        self.size = size
        self.stop_grace = stop_grace
        self._idle: list[Worker] = []
        self._live: dict[int, Worker] = {}  # every worker started and not yet reaped, by pid
        self._spawned = 0
        self._closed = False
        # Jobs waiting for a slot (NOT_STARTED), oldest first, and the drivers that run them.
        self._queue: deque[tuple[Job, ProcessCall, bool]] = deque()
        self._drivers = 0
        self._parked: list[_Driver] = []  # drivers lingering after their last job
        self._slots: anyio.CapacityLimiter | None = None
        self._tg: TaskGroup | None = None

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

    # -- running jobs ----------------------------------------------------------------------

    async def start(
        self,
        job: Job,
        call: ProcessCall,
        slots: anyio.CapacityLimiter,
        tg: TaskGroup,
        *,
        isolated: bool,
    ) -> None:
        """``start_process``'s part: run ``job`` now if ``slots`` has a free slot (return once it
        runs, or once it failed to get a worker), else queue it and return at once.

        Drivers run in ``tg``; a queued job waits in ``NOT_STARTED`` without a task of its own.
        """
        self._slots, self._tg = slots, tg
        queue = self._queue
        while queue and queue[0][0].state.is_finished:  # stopped while queued
            queue.popleft()
        if not queue:
            worker = None if isolated else self._take_idle()
            parked = self._parked
            driver = parked.pop() if worker is not None and parked else _Driver()
            try:
                slots.acquire_on_behalf_of_nowait(driver)
            except anyio.WouldBlock:  # no free slot: queue it after all
                if worker is not None:
                    self._idle.append(worker)
                if driver.parked:
                    parked.append(driver)
            else:
                job._runner_active = True
                if worker is not None:
                    job._mark_running()
                    if driver.parked:  # it takes the job as it wakes: no new task
                        driver.entry = job, call, worker, isolated
                        return
                else:
                    try:
                        worker = await self._ready(job, call, isolated=isolated)
                    finally:
                        if worker is None:  # failed or stopped before it ran (or cancelled)
                            slots.release_on_behalf_of(driver)
                            self._serve_queue()
                    if worker is None:
                        return
                self._drivers += 1
                tg.start_soon(self._drive, driver, (job, call, worker, isolated))
                return
        queue.append((job, call, isolated))
        self._serve_queue()

    def _serve_queue(self) -> None:
        """Make sure queued jobs have drivers: up to one per slot."""
        if self._queue and self._drivers < self.size and self._tg is not None:
            self._drivers += 1
            self._tg.start_soon(self._drive, _Driver(), None)

    async def _drive(self, driver: _Driver, first: _Running | None) -> None:
        """Run ``first`` (its slot held by ``driver``), then queued jobs, each on a slot that
        ``driver`` borrows, until the queue is empty and no job comes in while it lingers."""
        slots, queue = self._slots, self._queue
        assert slots is not None
        entry = first
        held = first is not None
        try:
            while True:
                if entry is None:
                    while queue and queue[0][0].state.is_finished:  # stopped while queued
                        queue.popleft()
                    if not queue:
                        entry = await self._linger(driver)
                        if entry is None:
                            if queue:  # queued (no free slot) while it lingered
                                continue
                            return
                        held = True  # start() took the slot for it
                    else:
                        try:
                            slots.acquire_on_behalf_of_nowait(driver)
                        except anyio.WouldBlock:  # in line behind other jobs of the limiter
                            await slots.acquire_on_behalf_of(driver)
                        held = True
                        while queue and entry is None:
                            job, call, isolated = queue.popleft()
                            if not job.state.is_finished:
                                job._runner_active = True
                                entry = job, call, None, isolated
                        if entry is None:  # all stopped while we waited
                            held = False
                            slots.release_on_behalf_of(driver)
                            continue
                await self._run(*entry)
                entry = None
                held = False
                slots.release_on_behalf_of(driver)
        finally:
            self._drivers -= 1
            if held:
                slots.release_on_behalf_of(driver)

    async def _linger(self, driver: _Driver) -> _Running | None:
        """With nothing queued, stay one scheduling round in case a job is started right away
        (``start()`` hands it over, slot taken): cheaper than a new task for it."""
        driver.parked = True
        self._parked.append(driver)
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException as exc:
            if driver.entry is not None:  # handed a job as we were cancelled: it never ran
                job, _, worker, isolated = driver.entry
                driver.entry = None
                assert self._slots is not None and worker is not None
                try:
                    if not self.keep(worker, reuse=not isolated):
                        with anyio.CancelScope(shield=True):
                            await self.release(worker, reuse=not isolated)
                    job._finish_after_error(exc)
                finally:
                    self._slots.release_on_behalf_of(driver)
            raise
        finally:
            driver.parked = False
            if driver in self._parked:
                self._parked.remove(driver)
        entry, driver.entry = driver.entry, None
        return entry

    async def _run(
        self, job: Job, call: ProcessCall, worker: Worker | None, isolated: bool
    ) -> None:
        """Run one job that holds a slot, on ``worker`` or one taken here. Whatever happens,
        the job ends finished, and its worker is back (idle or reaped) before it does."""
        reuse = not isolated
        try:
            if worker is None:
                worker = None if isolated else self._take_idle()
                if worker is not None:
                    job._mark_running()
                else:
                    worker = await self._ready(job, call, isolated=isolated)
                    if worker is None:
                        return
            released = False
            try:
                ended, failure = await _exchange(job, call, worker, self)
                released = True
                if not self.keep(worker, reuse=reuse):
                    with anyio.CancelScope(shield=True):
                        await self.release(worker, reuse=reuse)
            finally:  # cancelled with the manager, or failed here: never leave a worker behind
                if not released:
                    with anyio.CancelScope(shield=True):
                        await self.release(worker, reuse=reuse)
            if not ended:
                job._mark_stopped()
            elif failure is not None:
                job._fail(failure)
            else:
                job._complete()
        except BaseException as exc:
            job._finish_after_error(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not job.state.is_finished:  # a runner that returned without reporting an end
                job._fail(RuntimeError(f"the runner of {job._label()} ended without a result"))

    async def _ready(self, job: Job, call: ProcessCall, *, isolated: bool) -> Worker | None:
        """Get a worker (maybe a new one) for a job that holds a slot, and mark the job
        ``RUNNING``; None if it ended first (``FAILED``: no worker could start; ``STOPPED``:
        stopped while its worker started)."""
        try:
            with map_os_errors(f"{job._label()}: starting a worker process for {call.name}"):
                worker = await self.acquire(isolated=isolated)
        except BaseException as exc:
            job._finish_after_error(exc)
            if isinstance(exc, Exception):
                return None
            raise
        if job.stop_requested:  # stopped while its worker started: it never ran
            job._mark_stopped()
            with anyio.CancelScope(shield=True):
                await self.release(worker, reuse=not isolated)
            return None
        job._mark_running()
        return worker

    def _take_idle(self) -> Worker | None:
        """The most recently idle worker if it is alive (no await: the common case)."""
        idle = self._idle
        if idle and not self._closed and idle[-1].alive:
            return idle.pop()
        return None

    # -- workers ---------------------------------------------------------------------------

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
            await worker.kill(self.stop_grace)
        finally:
            self._live.pop(worker.pid, None)

    async def reap_dead(self, worker: Worker) -> int | None:
        """Reap a worker whose pipe ended; its exit status (see ``Worker.wait_dead``)."""
        try:
            return await worker.wait_dead(self.stop_grace)
        finally:
            self._live.pop(worker.pid, None)

    async def _close(self, worker: Worker) -> None:
        try:
            await worker.close(self.stop_grace)
        finally:
            self._live.pop(worker.pid, None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<asyncjobs.WorkerPool {state} live={len(self._live)} idle={len(self._idle)} "
            f"size={self.size}>"
        )


#: A job that holds a slot: (job, call, its worker if already taken, isolated).
_Running = tuple[Job, ProcessCall, Worker | None, bool]


@final
class _Driver:
    """A task running process jobs one after another; it borrows their slots of the limiter."""

    __slots__ = ("entry", "parked")

    def __init__(self) -> None:
        self.entry: _Running | None = None  # a job handed over while it lingers
        self.parked = False


async def _exchange(
    job: Job, call: ProcessCall, worker: Worker, pool: WorkerPool
) -> tuple[bool, BaseException | None]:
    """Send the call, append what comes back: ``(ended, failure)``, ``failure`` None if the job
    completed, ``ended`` False if ``stop()`` came first.

    ``stop()`` moves the job to ``STOPPING``; a state listener interrupts the worker's pipes
    right there, which wakes the exchange wherever it waits (no cancel scope or watcher task
    per job: this path is run once per job and should cost little).
    """
    log = job._log
    assert log is not None
    listener = worker.interrupt_on_stop
    job._listeners.append(listener)
    try:
        if job.stop_requested:
            return False, None
        if not worker.write(call.frame):
            await worker.flush()
        frames = worker.frames
        message = await frames.receive(fresh=True)
        while True:
            if message[0] == ITEM:
                try:
                    log.append_nowait(message[1], message[2])
                except anyio.WouldBlock:  # block mode, full: wait for room
                    await log.append(message[1], message[2])
                message = await frames.receive()
                continue
            worker.busy = False
            if message[0] == RESULT:
                if message[1] is not None:
                    try:
                        log.append_nowait("output", message[1])
                    except anyio.WouldBlock:
                        await log.append("output", message[1])
                return True, None
            failure: BaseException = _remote_error(message)
            break
    except Interrupted:
        return False, None
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        if worker.interrupted:
            return False, None
        failure = _death(job, call, worker, await pool.reap_dead(worker))
    except UndecodableFrame as exc:
        failure = CommandFailed(
            f"{job._label()}: worker process {worker.pid} sent a value this process cannot "
            f"unpickle ({exc}); make sure the classes of what {call.name} returns or emits "
            "can be imported here"
        )
        failure.__cause__ = exc.__cause__
    finally:
        job._listeners.remove(listener)
    await log.append("error", failure)
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


def _death(job: Job, call: ProcessCall, worker: Worker, status: int | None) -> CommandFailed:
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
        f"worker process {worker.pid} of {job._label()} died ({how}) while running {call.name}",
        exit_status=status if status is not None and status >= 0 else None,
        signal=-status if status is not None and status < 0 else None,
    )
