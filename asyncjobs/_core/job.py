"""``Job``: a state machine (driven through ``state.TRANSITIONS``) plus a record log.

Runners report events (``_mark_running``, ``_complete``, ``_fail``, ``_mark_stopped``); users read
records (``receive``, ``stream``), wait, and stop. A parent job holds no records of its own: its
state is derived from its children and its reads go through them, in child order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import Any, Literal, final

import anyio
import attrs

from . import checks
from .errors import JobArgumentError, JobFailed, JobStateError, JobStopped
from .log import RecordLog, stream_set
from .models import JobStatistics, Record, StateChange, StreamName, sum_buffers
from .reader import EMPTY, LogReader
from .state import Event, JobState, next_state, parent_state
from .util import NoPublicConstructor

JobKind = Literal["ThreadJob", "BackgroundJob", "RemoteJob"]

_OUTPUT: frozenset[StreamName] = frozenset({"output"})


@final
@attrs.define(eq=False, repr=False)
class Job(metaclass=NoPublicConstructor):
    """One job of a ``JobManager``: where it stands, what it produced, how to stop it.

    Made by the manager (``start_thread``, ``start_process``, ``start_command``, ``invoke``).
    ``await job`` waits and returns its output, or raises ``JobFailed`` / ``JobStopped``.
    """

    id: int
    name: str
    kind: JobKind
    command: str
    location: str = "localhost"
    _log: RecordLog | None = None
    _children: tuple[Job, ...] = ()
    parent: Job | None = None
    instance_id: uuid.UUID = attrs.field(factory=uuid.uuid4)
    _state: JobState = JobState.NOT_STARTED
    _reason: BaseException | None = None
    exit_status: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    _history: list[StateChange] = attrs.field(factory=list)
    _changed_event: anyio.Event | None = None
    #: Made only when someone waits (``_finished_waiter``): two events per job were a
    #: measurable part of a short command job's cost.
    _finished: anyio.Event | None = None
    _stop_flag: bool = False
    _listeners: list[Callable[[Job], None]] = attrs.field(factory=list)
    #: Per-phase timings of a remote job (``RemoteTimings``), None for local jobs.
    timings: Any = None
    #: ``invoke(clock=True)``: the host's clock against ours (``ClockOffset``), else None.
    clock: Any = None
    #: ``invoke(probe=True)``: what the host is (``HostInfo``), else None.
    host_info: Any = None
    #: Set by the runner once it holds a slot and is starting the job.
    _runner_active: bool = False
    #: A parent's children by state, kept up to date as they change: deriving the parent's
    #: state then costs O(states), not O(children), however many hosts a fan-out has.
    _child_states: dict[JobState, int] = attrs.field(factory=dict)

    @classmethod
    def _leaf(
        cls,
        *,
        id: int,
        name: str | None,
        kind: JobKind,
        command: str,
        location: str,
        log: RecordLog,
    ) -> Job:
        job: Job = cls._create(
            id=id, name=name or f"Job{id}", kind=kind, command=command, location=location, log=log
        )
        return job

    @classmethod
    def _parent(
        cls, *, id: int, name: str | None, kind: JobKind, command: str, children: Iterable[Job]
    ) -> Job:
        job: Job = cls._create(
            id=id, name=name or f"Job{id}", kind=kind, command=command, children=tuple(children)
        )
        job.location = ",".join(dict.fromkeys(c.location for c in job._children))
        for child in job._children:
            job._child_states[child.state] = job._child_states.get(child.state, 0) + 1
        job._state = parent_state(job._child_states)
        job.started_at = min((c.started_at for c in job._children if c.started_at), default=None)
        if job._state.is_finished:
            job.finished_at = max((c.finished_at or 0.0) for c in job._children)
        for child in job._children:
            child.parent = job
            child._listeners.append(job._child_changed)
            if child._log is not None:  # a parent's readers wait on the parent: wake it
                child._log.add_listener(child._wake)
        return job

    # -- what users read -------------------------------------------------------------------

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def children(self) -> tuple[Job, ...]:
        return self._children

    @property
    def reason(self) -> BaseException | None:
        """The exception that made the job fail (for a parent: the first failed child's)."""
        if self._children and self._reason is None:
            return next((c.reason for c in self._children if c.reason is not None), None)
        return self._reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_flag

    @property
    def has_more_data(self) -> bool:
        """True while the job is not finished or any record of it is not yet received."""
        if not self._state.is_finished:
            return True
        if self._children:
            return any(c.has_more_data for c in self._children)
        return self._log is not None and self._log.unreceived > 0

    @property
    def dropped(self) -> int:
        if self._children:
            return sum(c.dropped for c in self._children)
        return self._log.dropped if self._log is not None else 0

    def _leaves(self) -> tuple[Job, ...]:
        return self._children or (self,)

    async def receive(self, *, keep: bool = False) -> list[Any]:
        """The output items produced so far (Receive-Job); ``keep=True`` leaves them to receive
        again. For a parent: its children's items, in child order."""
        out: list[Any] = []
        for leaf in self._leaves():
            log = leaf._log
            if log is not None:  # values only: a batch of lines goes over in one slice
                out.extend(log.peek_values(_OUTPUT) if keep else log.take_values(_OUTPUT))
        await anyio.lowlevel.checkpoint()
        return out

    async def receive_records(
        self, *, keep: bool = False, streams: Iterable[StreamName] | None = None
    ) -> list[Record]:
        """Records of ``streams`` (default all seven) not yet received, in the order produced."""
        chosen = stream_set(streams)
        out: list[Record] = []
        for leaf in self._leaves():
            log = leaf._log
            if log is not None:
                out.extend(log.peek(chosen) if keep else log.take(chosen))
        await anyio.lowlevel.checkpoint()
        return out

    def read_records(
        self,
        from_seq: int = 0,
        *,
        streams: Iterable[StreamName] | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Records from ``seq`` ``from_seq`` on, received or not, without consuming anything (a
        second follower, or a controller catching up after a reconnect)."""
        if self._log is None:
            raise JobStateError(
                f"{self._label()} is a parent job: read its children", job=self._label()
            )
        chosen = stream_set(streams)
        return self._log.read(checks.from_seq(from_seq), streams=chosen, limit=checks.limit(limit))

    def stream(self, *, streams: Iterable[StreamName] = ("output",)) -> ItemStream:
        """``async for item in job.stream()``: items as they are produced, until the job is
        finished and drained (Receive-Job -Wait). Consumes like ``receive()``, but an item is
        marked received only as it is handed over, so breaking out (or being cancelled) loses
        nothing that a later ``receive()`` would return."""
        return ItemStream(RecordStream(self, stream_set(streams)))

    def stream_records(self, *, streams: Iterable[StreamName] | None = ("output",)) -> RecordStream:
        """Like ``stream()`` but yields whole ``Record``s (``streams=None``: all seven)."""
        return RecordStream(self, stream_set(streams))

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job is finished; False if ``timeout`` seconds passed first."""
        with anyio.move_on_after(checks.timeout(timeout)):
            await self._finished_waiter().wait()
        return self._state.is_finished

    async def state_changes(self) -> AsyncIterator[StateChange]:
        """Every state change of the job, from its first, until it is finished."""
        i = 0
        while True:
            changed = self._changed()
            while i < len(self._history):
                i += 1
                yield self._history[i - 1]
            if self._state.is_finished:
                return
            await changed.wait()

    async def stop(self) -> None:
        """Stop the job (Stop-Job) and wait until it is finished. Stopping a finished job does
        nothing; a thread job only stops once its function notices ``stop_requested()``."""
        if self._children:
            self._stop_flag = True
            async with anyio.create_task_group() as tg:
                for child in self._children:
                    tg.start_soon(child.stop)
            return
        if self._state.is_finished:
            return
        if not self._stop_flag:
            self._stop_flag = True
            if self._log is not None:
                self._log.unblock()
            if self._state is JobState.NOT_STARTED and self._runner_active:
                pass  # its runner is starting it (connecting, spawning): it stops it once started
            elif self._state is not JobState.STOPPING:
                self._apply(Event.STOP)  # NOT_STARTED -> STOPPED at once; else -> STOPPING
        await self._finished_waiter().wait()

    def _finished_waiter(self) -> anyio.Event:
        """The event set once the job is finished (already set if it is), made on demand."""
        event = self._finished
        if event is None:
            event = self._finished = anyio.Event()
            if self._state.is_finished:
                event.set()
        return event

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self._result().__await__()

    async def _result(self) -> list[Any]:
        await self.wait()
        return self._outcome()

    def _outcome(self) -> list[Any]:
        """A finished job's ``await job``: its output (received), or the error it ended with."""
        if self.state is JobState.FAILED:
            reason = self.reason
            text = str(reason)
            message = text if text.startswith(self._label()) else f"{self._label()} failed: {text}"
            raise JobFailed(message, reason=reason) from reason
        if self.state is JobState.STOPPED:
            raise JobStopped(f"{self._label()} was stopped before it finished")
        out: list[Any] = []
        for leaf in self._leaves():
            if leaf._log is not None:
                out.extend(leaf._log.take_values(_OUTPUT))
        return out

    def statistics(self) -> JobStatistics:
        duration = None
        if self.started_at is not None:
            duration = (self.finished_at or time.time()) - self.started_at
        if self._log is not None:
            buffer = self._log.statistics()
        else:
            buffer = sum_buffers([c.statistics().buffer for c in self._children])
        return JobStatistics(
            id=self.id, state=self.state, buffer=buffer, duration=duration, timings=self.timings
        )

    def __repr__(self) -> str:
        more = f" children={len(self._children)}" if self._children else ""
        return f"<asyncjobs.Job {self.id} {self.name!r} {self.kind} {self.state.name}{more}>"

    def _label(self) -> str:
        return f"job {self.id} ({self.name!r})"

    # -- what runners report ---------------------------------------------------------------

    def _apply(self, event: Event, reason: BaseException | None = None) -> None:
        previous = self._state
        self._state = next_state(previous, event, job=self._label())
        now = time.time()
        if self._state is JobState.RUNNING and self.started_at is None:
            self.started_at = now
        if self._state.is_finished:
            self._reason = reason
            self.finished_at = now
            if self._log is not None:
                self._log.end()
        self._history.append(StateChange(previous, self._state, reason))
        self._wake()
        if self._finished is not None and self._state.is_finished:
            self._finished.set()
        for listener in self._listeners:
            listener(self)

    def _mark_running(self) -> None:
        self._apply(Event.START)
        if self.stop_requested:  # stop() came while the runner was starting it
            self._apply(Event.STOP)

    def _complete(self) -> None:
        self._apply(Event.COMPLETE)

    def _fail(self, reason: BaseException) -> None:
        self._apply(Event.FAIL, reason)

    def _mark_stopped(self) -> None:
        """The stop took effect (or the job was cancelled with its manager). Idempotent."""
        if self._state.is_finished:
            return
        if self._state is not JobState.STOPPING:
            self._apply(Event.STOP)  # NOT_STARTED -> STOPPED; RUNNING and others -> STOPPING
        if not self._state.is_finished:
            self._apply(Event.STOPPED)

    def _finish_after_error(self, exc: BaseException) -> None:
        """Failure is reachable from everywhere: whatever killed the runner, the job ends."""
        if self._state.is_finished:
            return
        if isinstance(exc, anyio.get_cancelled_exc_class()) or self.stop_requested:
            self._mark_stopped()
        else:
            self._fail(exc)

    def _changed(self) -> anyio.Event:
        """The event set at the next change of state or records; take it *before* checking."""
        if self._changed_event is None:
            self._changed_event = anyio.Event()
        return self._changed_event

    def _wake(self) -> None:
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None
        if self.parent is not None:
            self.parent._wake()

    def _child_changed(self, child: Job) -> None:
        change = child._history[-1]  # the change that called us
        counts = self._child_states
        counts[change.previous] -= 1
        if not counts[change.previous]:
            del counts[change.previous]
        counts[change.state] = counts.get(change.state, 0) + 1
        state = parent_state(counts, stop_requested=self.stop_requested)
        if state is self._state:
            return
        previous, self._state = self._state, state
        if self.started_at is None:
            self.started_at = child.started_at
        if state.is_finished:
            self.finished_at = max((c.finished_at or 0.0) for c in self._children)
        self._history.append(
            StateChange(previous, state, child.reason if state is JobState.FAILED else None)
        )
        self._wake()
        if self._finished is not None and state.is_finished:
            self._finished.set()
        for listener in self._listeners:
            listener(self)

    def _release(self) -> None:
        for leaf in self._leaves():
            if leaf._log is not None:
                leaf._log.release()


@final
class RecordStream:
    """The iterator behind ``stream_records()``: a plain object, not an async generator, so that
    breaking out of ``async for`` needs no ``aclosing`` on any backend.

    One ``LogReader`` per leaf takes the records in batches (whole batches of lines, no object
    per line) and acks each as it is handed over: no await lies between the ack and the
    hand-over, so a consumer that breaks out or is cancelled loses nothing and repeats nothing.
    """

    __slots__ = ("_job", "_logs", "_readers", "_streams")

    def __init__(self, job: Job, streams: frozenset[StreamName]) -> None:
        self._job = job
        self._streams = streams
        self._logs = [(leaf, leaf._log) for leaf in job._leaves() if leaf._log is not None]
        self._readers = [LogReader(log, streams) for _, log in self._logs]

    def __aiter__(self) -> RecordStream:
        return self

    async def __anext__(self) -> Record:
        for reader in self._readers:
            record = reader.next_record()
            if record is not None:
                return record
        return await self._next(values=False)  # type: ignore[no-any-return]

    async def _next(self, *, values: bool) -> Any:
        """The next record (or value), once the readers' batches are used up: refill them,
        else wait for the next record or the end."""
        logs, readers = self._logs, self._readers
        while True:
            for reader in readers:
                item = reader.next_value() if values else reader.next_record()
                if item is not (EMPTY if values else None):
                    return item
            await anyio.lowlevel.checkpoint()  # once per batch: let others run, honour cancels
            # A leaf's log wakes its readers (records, and end() when the job finishes); a
            # parent's readers wait on the parent, which every child's log wakes.
            changed = logs[0][1].changed() if not self._job._children else self._job._changed()
            filled = False
            for (_, log), reader in zip(logs, readers, strict=True):
                log.release_received()
                filled = reader.fill() or filled
            if filled:
                continue
            if all(leaf.state.is_finished and not log.pending(self._streams) for leaf, log in logs):
                raise StopAsyncIteration
            await changed.wait()


@final
class ItemStream:
    """The iterator behind ``stream()``: record values only (a line costs no ``Record``)."""

    __slots__ = ("_reader", "_records")

    def __init__(self, records: RecordStream) -> None:
        self._records = records
        self._reader = records._readers[0] if len(records._readers) == 1 else None

    def __aiter__(self) -> ItemStream:
        return self

    async def __anext__(self) -> Any:
        reader = self._reader
        if reader is not None:
            value = reader.next_value()
            if value is not EMPTY:
                return value
        return await self._records._next(values=True)


def ensure_job(value: object, what: str = "job") -> Job:
    if not isinstance(value, Job):
        raise JobArgumentError(
            f"{what} must be an asyncjobs.Job, got {type(value).__name__}: {value!r}"
        )
    return value


# -- what the job table may do to its jobs ----------------------------------------------------
# Named functions rather than more of Job's surface (spec/API.md fixes that): the manager and the
# job host keep jobs in tables, name them in errors and free their records, never reaching into
# Job's private state themselves.


def new_leaf_job(
    *, id: int, name: str | None, kind: JobKind, command: str, location: str, log: RecordLog
) -> Job:
    """A new job with a runner of its own (not a parent), for ``run_in_slot``: how a job table
    outside the core (the manager's, the job host's) makes its jobs, ``Job`` having no public
    constructor."""
    return Job._leaf(id=id, name=name, kind=kind, command=command, location=location, log=log)


def new_parent_job(
    *, id: int, name: str | None, kind: JobKind, command: str, children: list[Job]
) -> Job:
    """A parent over ``children`` (a fan-out's): its state is derived from theirs."""
    return Job._parent(id=id, name=name, kind=kind, command=command, children=children)


def label(job: Job) -> str:
    """How errors name ``job``: ``job 3 ('build')``."""
    return job._label()


def release(job: Job) -> None:
    """Free the records of ``job`` (its leaves' logs and spill files): it left its table."""
    job._release()


def watch(job: Job, listener: Callable[[Job], None]) -> None:
    """Call ``listener(job)`` at every change of ``job``'s state, after the listeners before."""
    job._listeners.append(listener)
