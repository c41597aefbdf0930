"""``JobManager``: the job table (where Get-Job looks) and the owner of every job's runner.

All runners live in the manager's task group; leaving ``async with`` stops every job that still
runs, reaps every process and waits for every thread, so nothing outlives the manager.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core import checks
from .._core.clock import REAL, Clock
from .._core.errors import AsyncJobsError, JobArgumentError, JobStateError, NoSuchJob
from .._core.job import (
    Job,
    JobKind,
    ensure_job,
    label,
    new_leaf_job,
    new_parent_job,
    release,
    watch,
)
from .._core.log import RecordLog
from .._core.models import Buffer, ManagerStatistics
from .._core.runner import Run, SlotQueue
from .._core.state import JobState
from . import command as _command
from . import process as _process
from .arguments import check_callable as _check_callable
from .arguments import default_threads as _default_threads
from .arguments import describe as _describe
from .arguments import positive as _positive
from .arguments import states as _states
from .remote import RemoteMethods
from .thread import run_thread

if TYPE_CHECKING:
    pass


@final
class JobManager(RemoteMethods):
    """A table of jobs and the limits they run under (a PowerShell session's job table).

    ``async with JobManager(thread_limit=8, process_limit=4) as jobs:`` — jobs beyond a limit wait
    in ``NOT_STARTED`` until a slot frees. Leaving the block stops what still runs.
    ``clock`` is what ``stop_grace`` is measured on: anyio's time, or a test's
    ``asyncjobs._core.clock.FakeClock``, on which grace periods pass at once.
    """

    def __init__(
        self,
        *,
        thread_limit: int | None = None,
        process_limit: int | None = None,
        buffer: Buffer | None = None,
        stop_grace: float = 5.0,
        clock: Clock = REAL,
    ) -> None:
        self.thread_limit = _positive("thread_limit", thread_limit, _default_threads())
        self.process_limit = _positive("process_limit", process_limit, os.cpu_count() or 1)
        self.buffer = buffer if buffer is not None else Buffer()
        if not isinstance(self.buffer, Buffer):
            raise JobArgumentError(f"buffer must be an asyncjobs.Buffer, got {buffer!r}")
        self.stop_grace = checks.grace(stop_grace)
        #: What grace periods are measured on (tests pass an ``asyncjobs._core.clock.FakeClock``).
        self.clock = clock
        self._jobs: dict[int, Job] = {}
        self._next_id = 1
        self._tg: TaskGroup | None = None
        self._closed = False
        self._waiters: list[_Waiter] = []
        self._thread_slots: anyio.CapacityLimiter | None = None
        self._thread_pool: anyio.CapacityLimiter | None = None
        self._process_slots: anyio.CapacityLimiter | None = None
        # Where jobs wait for a slot (one queue per limiter: command and process jobs share one).
        self._thread_queue: SlotQueue | None = None
        self._process_queue: SlotQueue | None = None
        self._workers: _process.WorkerPool | None = None
        self._exits: AsyncExitStack | None = None
        self._pool: Any = None  # held connections (``invoke(persist=)``): a ConnectionPool

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> JobManager:
        if self._tg is not None or self._closed:
            raise AsyncJobsError("a JobManager can be entered once; make a new one")
        self._thread_slots = anyio.CapacityLimiter(self.thread_limit)
        # The pool limiter only bounds to_thread; slots are taken on _thread_slots first.
        self._thread_pool = anyio.CapacityLimiter(self.thread_limit)
        self._process_slots = anyio.CapacityLimiter(self.process_limit)
        self._thread_queue = SlotQueue(self._thread_slots)
        self._process_queue = SlotQueue(self._process_slots)
        # Entered in order, left in reverse: the records are freed last, the workers outlive
        # the runners' task group, and if entering something fails, the stack leaves what was
        # entered before it (nothing outlives its owner).
        async with AsyncExitStack() as stack:
            stack.callback(self._release_all)
            self._workers = await stack.enter_async_context(
                _process.WorkerPool(
                    size=self.process_limit, stop_grace=self.stop_grace, clock=self.clock
                )
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._exits = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._exits is not None
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                await self._stop_all()
        finally:
            # Every runner has finished (runners record failures, never raise them), so the
            # group ends cleanly; the caller's own exception then propagates as it was, not
            # wrapped in an ExceptionGroup. Then the workers are reaped (the pool shields
            # that itself) and the records freed.
            await self._exits.aclose()
        return None

    def _release_all(self) -> None:
        for job in self._jobs.values():
            release(job)

    async def _stop_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for job in self._jobs.values():
                if not job.state.is_finished:
                    tg.start_soon(job.stop)

    def _open_group(self) -> TaskGroup:
        if self._tg is None or self._closed:
            raise AsyncJobsError(
                "this JobManager is not open; start jobs inside 'async with JobManager() as jobs:'"
            )
        return self._tg

    # -- starting jobs ---------------------------------------------------------------------

    async def start_thread(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        buffer: Buffer | None = None,
        **kwargs: Any,
    ) -> Job:
        """Run ``fn(*args, **kwargs)`` in a worker thread (Start-ThreadJob).

        A return value is one output item; a generator's or async generator's items stream as
        they are yielded; an exception fails the job. Returns once the job runs, or waits in
        ``NOT_STARTED`` because ``thread_limit`` threads are busy.
        """
        tg = self._open_group()
        _check_callable(fn, "start_thread")
        job = self._new_job(name, "ThreadJob", _describe(fn), buffer)
        assert self._thread_queue is not None and self._thread_pool is not None
        pool = self._thread_pool

        async def body(run: Run) -> None:
            await run_thread(run, fn, args, kwargs, pool)

        await self._thread_queue.start(tg, job, body)
        return job

    async def start_process(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        buffer: Buffer | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        isolated: bool = False,
        **kwargs: Any,
    ) -> Job:
        """Run ``fn(*args, **kwargs)`` in a child Python process (Start-Job).

        By default a warm worker process is reused (one job at a time per worker; a stopped
        job's worker is killed and replaced). ``isolated=True`` runs the job in a fresh process
        that exits afterwards: full isolation, at the cost of a Python start-up per job.
        ``fn`` and its arguments must be picklable (a module-level function, not a lambda).
        """
        self._open_group()
        _check_callable(fn, "start_process")
        call = _process.prepare_call(fn, args, kwargs, cwd=cwd, env=env)
        await anyio.lowlevel.checkpoint()  # cancelled here: no job made
        tg = self._open_group()
        job = self._new_job(name, "BackgroundJob", _describe(fn), buffer)
        assert self._process_queue is not None and self._workers is not None
        start = _process.ProcessStart(call, self._workers, isolated=isolated)
        await self._process_queue.start(tg, job, start.run, start.begin)
        return job

    async def start_command(
        self,
        command: str | Iterable[str],
        /,
        *,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | str | Iterable[str | bytes] | None = None,
        buffer: Buffer | None = None,
        stop_grace: float | None = None,
        lines: bool = True,
        output: str = "text",
    ) -> Job:
        """Run an external program (Start-Job with a native command).

        ``command`` is an argv list (run directly) or a string (run by ``/bin/sh -c``). Stdout
        lines are output items, stderr lines error records; a non-zero exit fails the job with
        ``exit_status`` set. ``lines=False`` passes both through unsplit, as ``bytes`` chunks
        (binary output, bulk data). ``output="json"``: each stdout line parsed as JSON into a
        data record (docs/harness.md). A missing ``cwd`` raises here and creates no job.
        """
        tg = self._open_group()
        spec = _command.CommandSpec.build(
            command,
            cwd=cwd,
            env=env,
            input=input,
            stop_grace=self.stop_grace if stop_grace is None else stop_grace,
            lines=lines,
            output=output,
        )
        job = self._new_job(name, "BackgroundJob", spec.display, buffer)
        assert self._process_queue is not None

        clock = self.clock

        async def body(run: Run) -> None:
            await _command.run_command(run, spec, clock=clock)

        await self._process_queue.start(tg, job, body)
        return job

    def _new_job(
        self,
        name: str | None,
        kind: JobKind,
        command: str,
        buffer: Buffer | None,
        *,
        location: str = "localhost",
    ) -> Job:
        checks.name(name)
        if buffer is not None and not isinstance(buffer, Buffer):
            raise JobArgumentError(f"buffer must be an asyncjobs.Buffer, got {buffer!r}")
        job_id = self._next_id
        self._next_id += 1
        log = RecordLog(
            job_id=job_id,
            location=location,
            buffer=buffer or self.buffer,
            name=f"job {job_id}" + (f" ({name!r})" if name else ""),
        )
        job = new_leaf_job(
            id=job_id, name=name, kind=kind, command=command, location=location, log=log
        )
        watch(job, self._job_changed)
        self._jobs[job_id] = job
        return job

    def _add_parent(
        self, name: str | None, kind: JobKind, command: str, children: list[Job]
    ) -> Job:
        """Register a parent job over already registered children (used by ``invoke``)."""
        job_id = self._next_id
        self._next_id += 1
        job = new_parent_job(id=job_id, name=name, kind=kind, command=command, children=children)
        watch(job, self._job_changed)
        for child in children:
            self._jobs.pop(child.id, None)  # children are reached through their parent
        self._jobs[job_id] = job
        return job

    def _job_changed(self, job: Job) -> None:
        if not job.state.is_finished:
            return
        key = id(job)
        for waiter in self._waiters:
            if key in waiter.pending:
                waiter.pending.discard(key)
                if waiter.any or not waiter.pending:
                    waiter.event.set()

    # -- the table -------------------------------------------------------------------------

    def __getitem__(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        for job in self._all():  # a child: reached through its parent
            if job.id == job_id:
                return job
        raise NoSuchJob(f"no job with id {job_id!r} in this JobManager; jobs.get() lists them")

    def __contains__(self, job: object) -> bool:
        """A job (or its id) is in this table: O(1), ``wait(*jobs)`` resolves thousands."""
        if isinstance(job, Job):
            top = job.parent or job
            return self._jobs.get(top.id) is top
        if isinstance(job, int):
            try:
                self[job]
            except KeyError:
                return False
            return True
        return False

    def __len__(self) -> int:
        return len(self._jobs)

    def _all(self) -> Iterable[Job]:
        for job in self._jobs.values():
            yield job
            yield from job.children

    def get(
        self,
        *,
        id: int | Iterable[int] | None = None,
        name: str | None = None,
        state: JobState | str | Iterable[JobState | str] | None = None,
        kind: str | None = None,
        location: str | None = None,
        has_more_data: bool | None = None,
        include_children: bool = False,
    ) -> list[Job]:
        """The jobs that match every filter given (Get-Job); ``name`` takes shell wildcards."""
        checks.name(name)
        checks.name(location, "location")
        ids = None if id is None else ({id} if isinstance(id, int) else set(id))
        states = None if state is None else _states(state)
        out: list[Job] = []
        for job in self._jobs.values():
            family = (job, *job.children) if include_children else (job,)
            for j in family:
                if ids is not None and j.id not in ids:
                    continue
                if name is not None and not fnmatch.fnmatchcase(j.name, name):
                    continue
                if states is not None and j.state not in states:
                    continue
                if kind is not None and j.kind != kind:
                    continue
                if location is not None and not fnmatch.fnmatchcase(j.location, location):
                    continue
                if has_more_data is not None and j.has_more_data is not has_more_data:
                    continue
                out.append(j)
        return out

    def _resolve(self, job: Job | int) -> Job:
        if isinstance(job, int) and not isinstance(job, bool):
            return self[job]
        job = ensure_job(job)
        if job not in self:
            raise NoSuchJob(f"{label(job)} is not in this JobManager (removed, or another's)")
        return job

    async def wait(
        self, *jobs: Job | int, any: bool = False, timeout: float | None = None
    ) -> list[Job]:
        """Wait-Job: the given jobs (default: all) that are finished when it returns.

        ``any=True`` returns once one is finished. At ``timeout`` it returns what is finished so
        far (maybe nothing) instead of raising; ``timeout=0`` only polls, ``None`` (or
        ``math.inf``) waits as long as it takes; a negative or NaN ``timeout`` is refused.
        """
        timeout = checks.timeout(timeout)
        chosen = [self._resolve(j) for j in jobs] if jobs else list(self._jobs.values())
        waiter = _Waiter({id(j) for j in chosen if not j.state.is_finished}, any)
        if waiter.pending and not (any and len(waiter.pending) < len(chosen)):
            self._waiters.append(waiter)  # _job_changed ticks jobs off as they finish: O(n)
            try:
                with anyio.move_on_after(timeout):
                    await waiter.event.wait()
            finally:
                self._waiters.remove(waiter)
        await anyio.lowlevel.checkpoint()
        return [j for j in chosen if j.state.is_finished]

    async def stop(self, job: Job | int) -> None:
        """Stop-Job: stop the job and wait until it is finished."""
        await self._resolve(job).stop()

    async def remove(self, job: Job | int, *, force: bool = False) -> None:
        """Remove-Job: drop a finished job and its records. A job not finished raises
        ``JobStateError`` unless ``force=True``, which stops it first."""
        target = self._resolve(job)
        if target.parent is not None:
            raise JobStateError(
                f"{label(target)} is a child of {label(target.parent)}; remove the parent",
                job=label(target),
            )
        if not target.state.is_finished:
            if not force:
                raise JobStateError(
                    f"{label(target)} is {target.state.name}; stop it first or pass force=True",
                    job=label(target),
                    from_state=target.state,
                )
            await target.stop()
        self._jobs.pop(target.id, None)
        release(target)

    def statistics(self) -> ManagerStatistics:
        by_state: dict[str, int] = {}
        for job in self._jobs.values():
            by_state[job.state.name] = by_state.get(job.state.name, 0) + 1
        threads = self._thread_slots.borrowed_tokens if self._thread_slots else 0
        procs = self._process_slots.borrowed_tokens if self._process_slots else 0
        return ManagerStatistics(
            jobs=len(self._jobs),
            by_state=by_state,
            threads_in_use=int(threads),
            thread_limit=self.thread_limit,
            processes_in_use=int(procs),
            process_limit=self.process_limit,
            idle_workers=self._workers.idle if self._workers else 0,
        )

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open" if self._tg else "not entered"
        running = sum(1 for j in self._jobs.values() if not j.state.is_finished)
        return (
            f"<asyncjobs.JobManager {status} jobs={len(self._jobs)} running={running} "
            f"thread_limit={self.thread_limit} process_limit={self.process_limit}>"
        )


@attrs.define(eq=False)
class _Waiter:
    """One ``wait()`` call: the jobs it still waits for, woken by ``_job_changed``."""

    pending: set[int]
    any: bool
    event: anyio.Event = attrs.field(factory=anyio.Event)
