"""Process jobs: a Python callable run in a child Python process (Start-Job with a script block).

``prepare_call`` (in ``_frames``) pickles the call once, at start, so that a callable that
cannot cross to a child fails there and then. A ``WorkerPool`` keeps warm worker processes
(``_worker.main``) and hands each job to one of them: one frame written, frames read back until
the job's end, each item appended to the job's log. Awaiting the append is the backpressure: in
``block`` mode the runner stops reading, the pipe fills and the child blocks in its write.

A stopped job's worker is killed (its whole process group: TERM, ``stop_grace``, KILL, reap, inside
a shield) and never reused; a worker that dies mid-job fails its job with ``CommandFailed``.
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

from ._errors import AsyncJobsError, CommandFailed, RemoteError, map_os_errors
from ._frames import ProcessCall, UndecodableFrame, Worker, prepare_call, spawn_worker
from ._job import Job
from ._worker import ERROR, ITEM, RESULT

__all__ = ["ProcessCall", "WorkerPool", "prepare_call", "run_process"]


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
        False if it must be released with ``release()`` instead."""
        healthy = worker.pid in self._live and not worker.busy and worker.alive
        if reuse and healthy and not self._closed and len(self._idle) < self.size:
            if worker not in self._idle:
                self._idle.append(worker)
            return True
        return False

    async def release(self, worker: Worker, *, reuse: bool) -> None:
        """Take a worker back after a job: keep it idle, let it exit, or kill it if out of step."""
        if worker.pid not in self._live or worker in self._idle:
            return  # already reaped (stopped or dead) or already back
        if worker.busy or not worker.alive:
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


async def run_process(
    job: Job, call: ProcessCall, pool: WorkerPool, started: Callable[[], None], *, isolated: bool
) -> None:
    """The body of a process job (see ``_runner.run_in_slot``): hand the call to a worker,
    turn its frames into records and its end into the job's end."""
    with map_os_errors(f"{job._label()}: starting a worker process for {call.name}"):
        worker = await pool.acquire(isolated=isolated)
    released = False
    try:
        if job.stop_requested:  # stopped while its worker started: it never ran
            if not job.state.is_finished:
                job._mark_stopped()
            return
        started()
        ended, failure = await _exchange_until_stopped(job, call, worker, pool)
        # The worker first: once the job is finished, its process is idle or reaped.
        released = True
        if not pool.keep(worker, reuse=not isolated):
            with anyio.CancelScope(shield=True):
                await pool.release(worker, reuse=not isolated)
        if not ended:
            job._mark_stopped()
        elif failure is not None:
            job._fail(failure)
        else:
            job._complete()
    finally:  # cancelled with the manager, or failed here: never leave a worker behind
        if not released:
            with anyio.CancelScope(shield=True):
                await pool.release(worker, reuse=not isolated)


async def _exchange_until_stopped(
    job: Job, call: ProcessCall, worker: Worker, pool: WorkerPool
) -> tuple[bool, BaseException | None]:
    """Run the exchange unless ``stop()`` comes first: ``(ended, failure)``.

    ``stop()`` moves the job to ``STOPPING``; a state listener cancels the exchange right
    there (no watcher task per job: this path is run once per job and should cost little).
    """
    with anyio.CancelScope() as scope:

        def on_change(_: Job) -> None:
            if job.stop_requested:
                scope.cancel()

        job._listeners.append(on_change)
        try:
            return True, await _exchange(job, call, worker, pool)
        finally:
            job._listeners.remove(on_change)
    return False, None


async def _exchange(
    job: Job, call: ProcessCall, worker: Worker, pool: WorkerPool
) -> BaseException | None:
    """Send the call, append what comes back; the job's failure, or ``None`` if it completed."""
    log = job._log
    assert log is not None
    try:
        await worker.send(call.frame)
        while True:
            message = await worker.receive()
            if message[0] == ITEM:
                await log.append(message[1], message[2])
                continue
            worker.busy = False
            if message[0] == RESULT:
                if message[1] is not None:
                    await log.append("output", message[1])
                return None
            failure: BaseException = _remote_error(message)
            break
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        failure = _death(job, call, worker, await pool.reap_dead(worker))
    except UndecodableFrame as exc:
        failure = CommandFailed(
            f"{job._label()}: worker process {worker.pid} sent a value this process cannot "
            f"unpickle ({exc}); make sure the classes of what {call.name} returns or emits "
            "can be imported here"
        )
        failure.__cause__ = exc.__cause__
    await log.append("error", failure)
    return failure


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
