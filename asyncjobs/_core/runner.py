"""The runner API: what a runner may do to its job, and the one shape every runner has.

A runner turns the outside world into appends and events, nothing else. It gets a ``Run``, its
handle on one job, and reports through it: ``started()`` once the work really runs, ``append``
for every record, then exactly one of ``completed()``, ``failed(reason)``, ``stopped()``;
``disconnected()`` / ``reconnected()`` for a link that comes and goes, ``blocked()`` /
``unblocked()`` for a producer held by a full ``block`` buffer, ``on_stop`` to act when
``stop()`` is asked for. No module outside the core touches ``Job``'s private attributes:
everything a runner needs is here.

``run_in_slot`` is the one shape: wait for a slot, report running, do the work, always finish.
Whatever happens to the body (an exception, a cancellation with its manager) the job ends in a
finished state: failure is a state, never a job left RUNNING because its runner died.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, final

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .job import Job, JobKind
from .log import RecordLog
from .models import Buffer, StreamName
from .state import Event


def _nothing() -> None:
    pass


@final
class Run:
    """A runner's handle on one job (see the module docstring for the order of the calls)."""

    __slots__ = ("_on_started", "job", "log")

    def __init__(self, job: Job, on_started: Callable[[], None] = _nothing) -> None:
        log = job._log
        if log is None:
            raise TypeError(f"{job._label()} is a parent job: it has no runner")
        self.job = job
        #: The job's record log: ``append`` through the methods below, or read it.
        self.log: RecordLog = log
        self._on_started = on_started

    @property
    def label(self) -> str:
        """How errors name the job: ``job 3 ('build')``."""
        return self.job._label()

    @property
    def stop_requested(self) -> bool:
        return self.job.stop_requested

    # -- records -----------------------------------------------------------------------------

    def append_nowait(self, stream: StreamName, value: Any) -> None:
        """Append now; ``anyio.WouldBlock`` if a ``block`` buffer is full."""
        self.log.append_nowait(stream, value)

    async def append(self, stream: StreamName, value: Any) -> None:
        """Append, waiting for room in a full ``block`` buffer (the backpressure). It never
        suspends when there is room, which is almost always."""
        try:
            self.log.append_nowait(stream, value)
        except anyio.WouldBlock:
            await self.log.append(stream, value)

    async def extend(self, stream: StreamName, values: list[Any]) -> None:
        """Append ``values`` in order as one batch (what one read of a pipe brought: one entry
        in the log, consecutive seqs, no object per line). A full ``block`` buffer takes what
        fits and the rest waits for room; one coroutine per batch, not per record."""
        log = self.log
        taken = log.append_lines_nowait(stream, values)
        if taken < len(values):
            await log.append_lines(stream, values[taken:])

    # -- events ------------------------------------------------------------------------------

    def started(self) -> None:
        """The work really runs (a stop asked for meanwhile takes effect right after)."""
        self.job._mark_running()
        self._on_started()

    def completed(self) -> None:
        self.job._complete()

    def failed(self, reason: BaseException) -> None:
        self.job._fail(reason)

    def stopped(self) -> None:
        """The stop took effect (idempotent)."""
        self.job._mark_stopped()

    def finish_after(self, exc: BaseException) -> None:
        """End the job after ``exc`` ended its runner: stopped if it was a cancellation or a
        stop was asked for, else failed with ``exc``. Nothing if it has already finished."""
        self.job._finish_after_error(exc)

    def disconnected(self) -> None:
        self.job._apply(Event.DISCONNECT)

    def reconnected(self) -> None:
        self.job._apply(Event.RECONNECT)

    def blocked(self) -> None:
        """The producer waits for a full ``block`` buffer (state ``BLOCKED``)."""
        self.job._apply(Event.BLOCK)

    def unblocked(self) -> None:
        self.job._apply(Event.UNBLOCK)

    @contextmanager
    def on_stop(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call ``callback()`` once, when a stop is asked for inside the block, or on entry if
        one already was. A state listener, not a watcher task: it costs nothing per job."""
        job = self.job
        fired = False

        def listener(changed: Job) -> None:
            nonlocal fired
            if not fired and changed.stop_requested:
                fired = True
                callback()

        job._listeners.append(listener)
        try:
            listener(job)
            yield
        finally:
            job._listeners.remove(listener)

    @contextmanager
    def cancelled_on_stop(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that a stop cancels (on entry too, if one already was asked for)."""
        with anyio.CancelScope() as scope, self.on_stop(scope.cancel):
            yield scope


#: The work of a runner: it calls ``run.started()`` once the job really runs.
Body = Callable[[Run], Awaitable[None]]


async def run_in_slot(
    job: Job,
    limiter: anyio.CapacityLimiter,
    body: Body,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``body`` for ``job`` once ``limiter`` has a slot for it.

    While no slot is free the job waits in ``NOT_STARTED`` and ``start_*`` has already returned;
    ``stop()`` in that time finishes it as ``STOPPED`` without ever running it.
    """
    signalled = False
    try:
        limiter.acquire_on_behalf_of_nowait(job)
    except anyio.WouldBlock:
        signalled = True
        task_status.started()
        if not await _wait_for_slot(job, limiter):
            return

    def on_started() -> None:
        nonlocal signalled
        if not signalled:
            signalled = True
            task_status.started()

    run = Run(job, on_started)
    try:
        if job.stop_requested:  # stopped in the instant between slot and start
            limiter.release_on_behalf_of(job)
            run.stopped()
            return
        job._runner_active = True
        await _body_in_slot(run, limiter, body)
    finally:
        if not signalled:  # start_* returns the job, finished as it is (e.g. FAILED at spawn)
            task_status.started()


async def _body_in_slot(run: Run, limiter: anyio.CapacityLimiter, body: Body) -> None:
    """Run ``body`` for a job that holds its slot; whatever happens, the job ends finished and
    the slot is free again."""
    try:
        await body(run)
    except BaseException as exc:
        run.finish_after(exc)
        if isinstance(exc, Exception):
            return  # recorded as the job's failure: it is the job's error, not the manager's
        raise
    finally:
        limiter.release_on_behalf_of(run.job)
        if not run.job.state.is_finished:  # a body that returned without reporting its end
            run.failed(RuntimeError(f"the runner of {run.label} ended without a result"))


#: A runner's start without an await, ``SlotQueue.start``'s fast path: given the ``Run`` of a
#: job that holds its slot, start it now (e.g. on an idle worker process: ``run.started()``) and
#: return how to undo that should the job never reach its body; None if it can't start so.
Begin = Callable[[Run], "Callable[[], None] | None"]


@final
class _Parked:
    """A driver lingering one scheduling round for a job that ``start`` may hand it."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[Run, Body, Callable[[], None]] | None = None


@final
class SlotQueue:
    """Starts jobs on the slots of ``limiter`` through ``run_in_slot``; a job that must wait for a
    slot waits in a queue here, without a task of its own.

    ``start`` runs a job at once in a new task if a slot is free (returning once it runs), else
    queues it and returns, the job in ``NOT_STARTED``. At most one task per slot (a *driver*)
    takes queued jobs one after another, each through ``run_in_slot`` (which waits for the slot
    like any other borrower of the limiter). ``stop()`` on a queued job finishes it as
    ``STOPPED`` at once; its driver skips it. With many more jobs than slots, a task, a cancel
    scope and a limiter wait per queued job were most of a short job's cost.
    """

    __slots__ = ("_drivers", "_parked", "_queue", "limiter")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter
        self._queue: deque[tuple[Job, Body]] = deque()
        self._drivers = 0
        self._parked: list[_Parked] = []

    async def start(self, tg: TaskGroup, job: Job, body: Body, begin: Begin | None = None) -> None:
        """Start ``job`` (see the class docstring). With ``begin``, a job that gets a free slot
        while a driver lingers starts in the caller, without an await, and the driver runs its
        body: no task and no scheduling round per job when jobs come one after another."""
        if self._queue or self.limiter.available_tokens < 1:  # in line behind the others
            self._queue.append((job, body))
            if self._drivers < self.limiter.total_tokens:
                self._drivers += 1
                tg.start_soon(self._drive, None)
            return
        if begin is not None and self._parked and self._hand_over(job, body, begin):
            return
        self._drivers += 1
        await tg.start(self._drive, (job, body))

    def _hand_over(self, job: Job, body: Body, begin: Begin) -> bool:
        self.limiter.acquire_on_behalf_of_nowait(job)
        run = Run(job)
        job._runner_active = True
        undo = begin(run)
        if undo is None:
            job._runner_active = False
            self.limiter.release_on_behalf_of(job)
            return False
        self._parked.pop().entry = (run, body, undo)
        return True

    async def _drive(
        self,
        first: tuple[Job, Body] | None,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            if first is not None:
                await run_in_slot(first[0], self.limiter, first[1], task_status=task_status)
            queue = self._queue
            while True:
                while queue:
                    job, body = queue.popleft()
                    if not job.state.is_finished:  # else stopped while it waited
                        await run_in_slot(job, self.limiter, body)
                entry = await self._linger()
                if entry is not None:
                    await _body_in_slot(entry[0], self.limiter, entry[1])
                elif not queue:
                    return
        finally:
            self._drivers -= 1

    async def _linger(self) -> tuple[Run, Body, Callable[[], None]] | None:
        """Stay one scheduling round in case a job comes right away (``start`` hands it over,
        already running): cheaper than a new task for it."""
        parked = _Parked()
        self._parked.append(parked)
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException as exc:
            if parked.entry is not None:  # handed a job as we were cancelled: it never ran
                run, _, undo = parked.entry
                try:
                    undo()
                    run.finish_after(exc)
                finally:
                    self.limiter.release_on_behalf_of(run.job)
            raise
        finally:
            if parked in self._parked:
                self._parked.remove(parked)
        return parked.entry


async def _wait_for_slot(job: Job, limiter: anyio.CapacityLimiter) -> bool:
    """Wait for a slot or for ``stop()``; True with the slot held, False if stopped first."""
    acquired = False
    with anyio.CancelScope() as scope:
        # stop() cancels the wait through a state listener: no watcher task per queued job.
        def on_change(changed: Job) -> None:
            if changed.stop_requested or changed.state.is_finished:
                scope.cancel()

        job._listeners.append(on_change)
        try:
            if not job.stop_requested:
                await limiter.acquire_on_behalf_of(job)
                acquired = True
        finally:
            job._listeners.remove(on_change)
    if acquired and job.stop_requested:
        limiter.release_on_behalf_of(job)
        acquired = False
    if not acquired and not job.state.is_finished:
        job._mark_stopped()
    return acquired


# -- one job of no manager ------------------------------------------------------------------


async def run_alone(name: str, kind: JobKind, command: str, location: str, body: Body) -> list[Any]:
    """Run ``body`` as one job that no manager holds (``Session.invoke``: one command, waited
    for) and return its output, or raise ``JobFailed`` / ``JobStopped`` as ``await job`` does.
    Its records are released once it has returned."""
    log = RecordLog(job_id=0, location=location, buffer=Buffer())
    job = Job._leaf(id=0, name=name, kind=kind, command=command, location=location, log=log)
    await run_in_slot(job, anyio.CapacityLimiter(1), body)  # always returns it finished
    try:
        return job._outcome()
    finally:
        log.release()
