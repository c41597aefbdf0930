"""A job host's jobs: each a local ``Job`` whose output goes to the store, and the table of them.

A ``HostJob`` is the ``Sink`` of ``run_host_command``: the lines its pipes gave wait in memory
until a batch is full or the pipe is quiet, then go into the store in one transaction (as many
as the session's ``output_buffering`` lets in while it is disconnected). ``HostedJobs`` starts
them, keeps the store's row of each up to date (Blocked and why, the final state last, so that
whoever sees a job finished finds all its records), and answers what the ops ask of the job
table (a job's info, ``get``'s filter, ``wait``, ``stop``, ``remove``). A final state that a full
disk refuses waits in memory (``unsaved``) and is written once the disk takes it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio
import anyio.abc
import attrs
from anyio.abc import TaskStatus

from .._core.errors import JobStateError, NoSuchJob
from .._core.job import Job, new_leaf_job
from .._core.log import RecordLog
from .._core.models import STREAMS, Buffer
from .._core.runner import Run, run_in_slot
from .._core.state import JobState
from .._local.command import CommandSpec
from .directory import ENV_DIR
from .hosted import FLUSH_BYTES, FLUSH_RECORDS, pack_value, run_host_command
from .hostlog import log
from .records import HostJobInfo, has_more_data, select_jobs
from .store import Piece, Store, StoreError

#: Unreceived records a job of a disconnected session may hold before ``output_buffering``
#: acts: ``block`` stops taking its output (its pipe fills, the program waits), ``drop``
#: discards the oldest.
DISCONNECTED_BOUND: Final = 10_000
PROCESS_LIMIT: Final = 64  # commands running at once; more wait in NotStarted
STOP_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL when a job is stopped

Holding = Literal["block", "drop"]


def held_by(output_buffering: str) -> Holding | None:
    """A session's ``output_buffering`` as the host applies it while the session is
    disconnected: ``"spill"`` (the default) keeps everything, so None."""
    if output_buffering == "block":
        return "block"
    return "drop" if output_buffering == "drop" else None


def _as_data(value: Any) -> Any:
    """A value the store can keep: an exception (the error record of a spawn that failed)
    becomes its message, as a controller would read it."""
    return str(value) if isinstance(value, BaseException) else value


@attrs.define(eq=False)
class HostJob:
    """A job this host runs: the local job, the lines its pipes gave that are not stored yet
    (its ``Sink``), and what its readers wait on."""

    row_id: int
    session: str
    local: Job
    log: RecordLog  # the local job's: empty unless its spawn failed (the error record)
    table: HostedJobs
    run: Run | None = None  # its runner's handle, once it runs
    stored: bool = False  # its row is in the store: its records may follow
    pending: list[Piece] = attrs.field(factory=list)
    pending_records: int = 0
    pending_bytes: int = 0
    appended: anyio.Event = attrs.field(factory=anyio.Event)  # set (and replaced) per flush
    received: anyio.Event = attrs.field(factory=anyio.Event)  # set (and replaced) per take
    done: anyio.Event = attrs.field(factory=anyio.Event)  # final state is in the store
    blocked: bool = False  # held by output_buffering="block" (its state is Blocked)
    lost: StoreError | None = None  # the store refused its output (a full disk): it fails

    # -- the Sink of run_host_command ----------------------------------------------------

    def add(self, pieces: list[Piece]) -> None:
        if self.lost is not None:  # its output can't be stored: the job ends with that
            raise self.lost
        for piece in pieces:
            self.pending.append(piece)
            self.pending_records += piece.records
            self.pending_bytes += len(piece.values)
        if self.pending_records >= FLUSH_RECORDS or self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    @property
    def holding(self) -> bool:
        return bool(self.pending)

    def flush(self) -> None:
        self.table.flush(self)
        if self.lost is not None:
            raise self.lost

    async def room(self) -> None:
        """Wait while ``output_buffering="block"`` holds the job (reconnects and receives
        wake it; it looks again every half second anyway). Meanwhile the job is ``Blocked``,
        and its reason says why and what lets it go on."""
        try:
            while self.table.buffering(self) == "block":
                self.flush()
                if not self.pending and not self.table.held(self):
                    return
                self.table.set_blocked(self, True)
                with anyio.move_on_after(0.5):
                    await self.received.wait()
        finally:
            if self.blocked:
                self.table.set_blocked(self, False)

    def take_pending(self, limit: int | None) -> list[Piece]:
        """The first ``limit`` (all if None) pending records' pieces, no longer pending."""
        if limit is None or limit >= self.pending_records:
            out, self.pending = self.pending, []
            self.pending_records = self.pending_bytes = 0
            return out
        out = []
        while limit > 0:
            piece = self.pending[0]
            if piece.records > limit:
                piece, self.pending[0] = piece.cut(limit)
            else:
                del self.pending[0]
            out.append(piece)
            limit -= piece.records
            self.pending_records -= piece.records
            self.pending_bytes -= len(piece.values)
        return out

    def wake_readers(self) -> None:
        self.appended.set()
        self.appended = anyio.Event()

    def wake_producer(self) -> None:
        self.received.set()
        self.received = anyio.Event()


class HostedJobs:
    """The host's job table: the jobs it runs (``running``) over the store's rows of all."""

    def __init__(
        self,
        store: Store,
        buffering_of: Callable[[str], Holding | None],
        returned: Callable[[int], bool],
    ) -> None:
        self.store = store
        #: A session's ``output_buffering`` while it is disconnected, else None.
        self._buffering_of = buffering_of
        #: Whether a job has records given back unacknowledged (``has_more_data``).
        self._returned = returned
        self.running: dict[int, HostJob] = {}  # every job this host started, by id
        self.unsaved: dict[int, dict[str, Any]] = {}  # final states a full disk refused
        self.finished_one = anyio.Event()  # set (and replaced) whenever a job's done is set
        self.slots = anyio.CapacityLimiter(PROCESS_LIMIT)

    def busy(self) -> bool:
        return any(not j.done.is_set() for j in self.running.values())

    # -- starting and finishing ----------------------------------------------------------

    async def start(
        self,
        tg: anyio.abc.TaskGroup,
        session: str,
        command: str | list[str],
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        buffer: dict[str, Any] | None = None,
    ) -> HostJobInfo:
        """Start a command job in ``tg``: it runs (or waits for a process slot) when this
        returns its info."""
        spec = CommandSpec.build(command, cwd=cwd, env=env, input=input, stop_grace=STOP_GRACE)
        # The job is named and started first, then added to the store in one write, as it is
        # then (Running, or NotStarted while it waits for a process slot). Until then its
        # lines wait in memory and its end is not written (``stored`` is False).
        job_id = self.store.reserve_job_id()
        label = f"job {job_id}" + (f" ({name!r})" if name else "")
        record_log = RecordLog(job_id=job_id, location="localhost", buffer=Buffer(), name=label)
        local = new_leaf_job(
            id=job_id, name=name, kind="BackgroundJob", command=spec.display,
            location="localhost", log=record_log,
        )  # fmt: skip
        job = HostJob(job_id, session, local, record_log, self)
        await tg.start(self._run, job, spec)
        try:
            row = self.store.new_job(
                session=session,
                name=name,
                kind="BackgroundJob",
                command=spec.display,
                location=os.uname().nodename,
                instance_id=str(uuid.uuid4()),
                job_id=job_id,
                state=local.state.value,
                started_at=local.started_at,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await local.stop()
            raise
        job.stored = True
        self.running[row.id] = job
        if local.state.is_finished:  # it failed to start: its error and reason are stored now
            self.finish(job)
            row = self.row(row.id)
        else:
            self.flush(job)
        return self.info(row)

    async def _run(self, job: HostJob, spec: CommandSpec, *, task_status: TaskStatus[None]) -> None:
        """The job's life in its slot; once it is finished (however), its end is stored."""

        async def body(run: Run) -> None:
            job.run = run
            await run_host_command(run, spec, job)

        try:
            await run_in_slot(job.local, self.slots, body, task_status=task_status)
        finally:
            if job.stored and not job.done.is_set():
                self.finish(job)

    def flush(self, job: HostJob, *, everything: bool = False) -> None:
        """Append the job's pending lines: all of them, or while its session is disconnected
        with ``output_buffering="block"``, as many as fit under ``DISCONNECTED_BOUND``."""
        if not job.pending or not job.stored:
            return
        mode = self.buffering(job)
        limit = None
        if mode == "block" and not everything:
            limit = DISCONNECTED_BOUND - self.store.unreceived(job.row_id)
            if limit <= 0:
                return
        pieces = job.take_pending(limit)
        try:
            self.store.append_pieces(job.row_id, pieces)
            if mode == "drop":
                self.store.drop_oldest(job.row_id, keep=DISCONNECTED_BOUND)
        except StoreError as exc:  # its pump ends with this: the job fails, the host goes on
            if job.lost is None:
                job.lost = StoreError(
                    f"job {job.row_id}: its output can't be stored ({exc}); what was stored "
                    "before is kept. Free space on that file system (or move the job host "
                    f"with {ENV_DIR}) and run the job again"
                )
                log(str(job.lost))
            job.pending.clear()
            job.pending_records = job.pending_bytes = 0
        job.wake_readers()

    def finish(self, job: HostJob) -> None:
        """The job is finished: store what it still holds, then its final state (last, so
        that whoever sees it finished finds all its records)."""
        local = job.local
        try:
            self.flush(job, everything=True)
            records = job.log.take(STREAMS)  # the error of a spawn that failed
            reason = str(local.reason) if local.reason is not None else None
            if job.lost is not None:
                reason = str(job.lost)  # not the task group that carried it
            fields = {
                "state": local.state.value,
                "reason": reason,
                "exit_status": local.exit_status,
                "started_at": local.started_at,
                "finished_at": local.finished_at,
            }
            try:
                if records:
                    rows = [(r.stream, pack_value(_as_data(r.value)), r.time) for r in records]
                    self.store.append(job.row_id, rows)
                self.store.set_job(job.row_id, **fields)
            except StoreError as exc:  # a full disk: the host keeps it, and writes it later
                log(f"job {job.row_id}: its final state waits to be stored ({exc})")
                self.unsaved[job.row_id] = fields
        finally:
            job.done.set()
            self.finished_one.set()
            self.finished_one = anyio.Event()
            job.wake_readers()

    def save_unsaved(self) -> None:
        """Write the final states a full disk refused, once it takes them."""
        for job_id, fields in list(self.unsaved.items()):
            try:
                if self.store.job(job_id) is not None:
                    self.store.set_job(job_id, **fields)
            except StoreError:
                return
            del self.unsaved[job_id]

    # -- output_buffering="block" --------------------------------------------------------

    def buffering(self, job: HostJob) -> Holding | None:
        """The session's output_buffering while it is disconnected, else None."""
        return self._buffering_of(job.session)

    def held(self, job: HostJob) -> bool:
        return (
            self.buffering(job) == "block"
            and self.store.unreceived(job.row_id) >= DISCONNECTED_BOUND
        )

    def set_blocked(self, job: HostJob, blocked: bool) -> None:
        """Show a job held by ``output_buffering="block"`` as ``Blocked``, with why, in the
        job table and the store; and as ``Running`` again once it may go on."""
        local = job.local
        if blocked == job.blocked or local.state not in (JobState.RUNNING, JobState.BLOCKED):
            return
        assert job.run is not None  # it runs
        job.blocked = blocked
        if blocked:
            job.run.blocked()
        else:
            job.run.unblocked()
        reason = None
        if blocked:
            reason = (
                f"held by output_buffering='block': {DISCONNECTED_BOUND:,} records are not "
                f"received while session {job.session!r} is disconnected; receive them "
                f"(asyncjobs receive {job.row_id}) or reconnect to let it go on"
            )
        with contextlib.suppress(StoreError):  # a full disk: the job's own write says so
            self.store.set_job(job.row_id, state=local.state.value, reason=reason)

    # -- what the ops ask ----------------------------------------------------------------

    def row(self, job_id: int) -> HostJobInfo:
        row = self.store.job(job_id)
        if row is None:
            raise NoSuchJob(f"no job with id {job_id} on this job host; jobs.get() lists them")
        return self.as_known(row)

    def as_known(self, row: HostJobInfo) -> HostJobInfo:
        """``row`` with the final state the store could not take yet (a full disk)."""
        fields = self.unsaved.get(row.id)
        if fields is None:
            return row
        state = fields.get("state", row.state.value)
        more = has_more_data(state, self.store.unreceived(row.id))
        return attrs.evolve(row, **{**fields, "state": JobState(state), "has_more_data": more})

    def info(self, row: HostJobInfo) -> HostJobInfo:
        """``row`` as the ops answer it: it has more data while records handed out under a
        lease are not acknowledged yet."""
        if row.has_more_data or not self._returned(row.id):
            return row
        return attrs.evolve(row, has_more_data=True)

    def matching(
        self,
        id: int | None = None,
        name: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        location: str | None = None,
        session_name: str | None = None,
        has_more_data: bool | None = None,
    ) -> list[HostJobInfo]:
        """``get``: the jobs that match every filter given (name and location: patterns)."""
        infos = map(self.info, map(self.as_known, self.store.jobs(session_name)))
        return select_jobs(
            infos, id=id, name=name, state=state, kind=kind, location=location,
            has_more_data=has_more_data,
        )  # fmt: skip

    async def wait(
        self, session: str, jobs: list[int], any: bool, timeout: float | None
    ) -> list[HostJobInfo]:
        """Wait-Job: ``jobs`` (none: every job of ``session``), until all (or ``any``) are
        finished or ``timeout`` passed; the finished ones."""
        if jobs:
            # Jobs this host runs (or ran) need no row read now; the others must exist.
            others = [job_id for job_id in jobs if job_id not in self.running]
            found = self.store.jobs_by_id(others)
            for job_id, maybe in zip(others, found, strict=True):
                if maybe is None:
                    self.row(job_id)  # raises NoSuchJob
            ids = list(jobs)
        else:
            found = list(self.store.jobs(session))
            ids = [r.id for r in found if r is not None]
        # A job this host runs is finished once its done is set (its final state is stored
        # then); any other job's stored state does not change, unless it is removed meanwhile.
        settled = {r.id for r in found if r is not None and r.state.is_finished}

        def is_finished(job_id: int) -> bool:
            host_job = self.running.get(job_id)
            if host_job is not None:
                return host_job.done.is_set()
            return job_id in settled or self.row(job_id).state.is_finished

        def finished() -> list[int]:
            return [job_id for job_id in ids if is_finished(job_id)]

        with anyio.move_on_after(timeout):
            while True:
                done = finished()
                if len(done) == len(ids) or (any and done):
                    break
                waiting = [
                    self.running[job_id].done
                    for job_id in ids
                    if job_id in self.running and not self.running[job_id].done.is_set()
                ]
                if not waiting:
                    break
                if any:
                    await self.finished_one.wait()
                else:
                    await waiting[0].wait()
        done = finished()
        infos = []
        for job_id, maybe in zip(done, self.store.jobs_by_id(done), strict=True):
            row = self.as_known(maybe) if maybe is not None else self.row(job_id)
            infos.append(self.info(row))
        return infos

    async def stop(self, job_id: int) -> HostJobInfo:
        """Stop-Job: the job once it is finished (and its end stored)."""
        row = self.row(job_id)
        host_job = self.running.get(job_id)
        if host_job is not None:
            await host_job.local.stop()
            await host_job.done.wait()
        return self.info(self.row(row.id))

    async def remove(self, job_id: int, force: bool) -> None:
        """Remove-Job: the job and its records are gone (a running one only with ``force``:
        it is stopped first)."""
        row = self.row(job_id)
        if not row.state.is_finished:
            if not force:
                raise JobStateError(
                    f"job {row.id} ({row.name!r}) is {row.state.value}; stop it first or pass "
                    "force=True"
                )
            await self.stop(job_id)
        self.running.pop(job_id, None)
        self.store.delete_job(job_id)

    async def stop_all(self, session: str | None = None) -> None:
        """Stop every running job (of ``session`` only, if given) and wait for their ends to
        be stored."""
        async with anyio.create_task_group() as tg:
            for job in list(self.running.values()):
                if not job.done.is_set() and session in (None, job.session):
                    tg.start_soon(_stop_and_settle, job)


async def _stop_and_settle(job: HostJob) -> None:
    await job.local.stop()
    await job.done.wait()
