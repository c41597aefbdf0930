"""The job host: a detached process that owns a job table and keeps every job's records on disk.

It is the local-jobs machinery (``Job``, ``run_in_slot``, the command runner's spawn and stop)
plus a store: a command's pipes go straight into the store in packed batches (``_hostrun``),
and controllers read the records back from the store over the wire protocol — from any seq
(keep) or through the per-stream receive-once cursors — also after they disconnected, died,
or the host restarted. A record is served only once it is committed, so what a controller was
given is never lost.

Run as ``python -m asyncjobs._host`` (``--daemonize`` detaches; see ``_hostdir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import os
import signal
import socket
import sys
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, repeat
from operator import add, itemgetter, methodcaller
from pathlib import Path
from typing import Any, Final, Literal, final

import anyio
import anyio.abc
import attrs

from . import __version__
from ._command import CommandSpec
from ._errors import AsyncJobsError, JobStateError, NoSuchJob, ProtocolError
from ._hostdir import (
    ENV_IDLE,
    LOCK,
    STORE,
    ensure_private_dir,
    host_dir,
    peer_uid,
    socket_path,
)
from ._hostrun import FLUSH_BYTES, FLUSH_RECORDS, pack_value, run_host_command, unpack_value
from ._job import Job
from ._log import RecordLog
from ._models import STREAMS, Buffer
from ._protocol import (
    PROTOCOL_VERSION,
    ErrorInfo,
    FrameStream,
    Hello,
    JobInfo,
    Request,
    Response,
    SessionInfo,
    Welcome,
    encode_value,
    encoded_rows,
    error_to_wire,
)
from ._runner import run_in_slot
from ._state import ACTIVE_VALUES, JobState
from ._store import JobRow, Piece, Row, SessionRow, Store
from ._wire import STREAM_CODES

#: Unreceived records a job of a disconnected session may hold before ``output_buffering``
#: acts: ``block`` stops taking its output (its pipe fills, the program waits), ``drop``
#: discards the oldest.
DISCONNECTED_BOUND: Final = 10_000
DEFAULT_IDLE_TIMEOUT: Final = 2 * 3600.0  # PowerShell's default for disconnected sessions
DEFAULT_IDLE_EXIT: Final = 300.0
PROCESS_LIMIT: Final = 64  # commands running at once; more wait in NotStarted
STOP_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL when a job is stopped
_ACTIVE: Final = ACTIVE_VALUES


#: Bytes of record values in one answer: well inside the protocol's frame limit, even for
#: bytes values (base64) and JSON's quoting.
PAGE_BYTES: Final = 6 * 1024 * 1024
WireRow = tuple[int, int, Any, float]  # a record as the wire has it: seq, stream code, value, time
_TEXT: Final = ord("s")  # pack_value's kind byte of a str
_decode_text: Final = methodcaller("decode", "utf-8", "surrogatepass")


def _page(records: list[Row]) -> list[WireRow]:
    """The longest prefix of ``records`` whose values fit in ``PAGE_BYTES`` (at least one),
    as the wire's record rows: ``(seq, stream code, value, time)``, values unpacked and
    encoded (``encode_records``'s rows). A page of text (command output: the usual case) is
    made by C loops over its columns, with no Python code per record."""
    if not records:
        return []
    seqs, streams, blobs, stamps = zip(*records, strict=True)
    sizes = list(accumulate(map(add, map(len, blobs), repeat(32))))
    cut = max(1, bisect_right(sizes, PAGE_BYTES))
    if cut < len(records):
        seqs, streams, blobs, stamps = seqs[:cut], streams[:cut], blobs[:cut], stamps[:cut]
    values: Iterable[Any]
    if set(map(itemgetter(0), blobs)) == {_TEXT}:
        values = map(_decode_text, map(itemgetter(slice(1, None)), blobs))
    else:
        values = [encode_value(unpack_value(blob)) for blob in blobs]
    return list(zip(seqs, map(STREAM_CODES.__getitem__, streams), values, stamps, strict=True))


def _as_data(value: Any) -> Any:
    """A value the store can keep: an exception (the error record of a spawn that failed)
    becomes its message, as a controller would read it."""
    return str(value) if isinstance(value, BaseException) else value


@attrs.define(eq=False)
class _HostJob:
    """A job this host runs: the local job, the lines its pipes gave that are not stored yet
    (its ``Sink``), and what its readers wait on."""

    row_id: int
    session: str
    local: Job
    host: JobHost
    stored: bool = False  # its row is in the store: its records may follow
    pending: list[Piece] = attrs.field(factory=list)
    pending_records: int = 0
    pending_bytes: int = 0
    appended: anyio.Event = attrs.field(factory=anyio.Event)  # set (and replaced) per flush
    received: anyio.Event = attrs.field(factory=anyio.Event)  # set (and replaced) per take
    done: anyio.Event = attrs.field(factory=anyio.Event)  # final state is in the store

    # -- the Sink of run_host_command ----------------------------------------------------

    def add(self, pieces: list[Piece]) -> None:
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
        self.host._flush(self)

    async def room(self) -> None:
        """Wait while ``output_buffering="block"`` holds the job (reconnects and receives
        wake it; it looks again every half second anyway)."""
        while self.host._buffering(self) == "block":
            self.flush()
            if not self.pending and not self.host._held(self):
                return
            with anyio.move_on_after(0.5):
                await self.received.wait()

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


@attrs.define(eq=False)
class _Session:
    name: str
    observer: bool = False  # a connection that only looks (sessions, get): no session
    attached: bool = False
    buffering: Literal["block", "drop"] | None = None  # its output_buffering, once known
    changed: anyio.Event = attrs.field(factory=anyio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class JobHost:
    """The server: accepts controllers on a Unix socket, runs their jobs, keeps their records."""

    def __init__(self, directory: Path, *, idle_exit: float = DEFAULT_IDLE_EXIT) -> None:
        self.directory = directory
        self.idle_exit = idle_exit
        self.store = Store.open(directory / STORE)
        self._jobs: dict[int, _HostJob] = {}
        self._sessions: dict[str, _Session] = {}
        self._connections = 0
        self._last_activity = time.monotonic()
        self._slots: anyio.CapacityLimiter | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._job_finished = anyio.Event()  # set (and replaced) whenever a job's done is set

    # -- lifetime ------------------------------------------------------------------------

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        recovered = self.store.recover(
            "the job host died while this job ran (it was killed or the machine restarted)"
        )
        if recovered:
            print(f"asyncjobs job host: marked {len(recovered)} jobs failed", file=sys.stderr)
        for row in self.store.sessions():
            if row.state == "Opened":  # its connection died with the old host
                self.store.put_session(
                    attrs.evolve(row, state="Disconnected", disconnected_at=time.time())
                )
        self._slots = anyio.CapacityLimiter(PROCESS_LIMIT)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._housekeeping, tg.cancel_scope)
            async with listener:
                await listener.serve(self._connection, task_group=tg)

    async def _housekeeping(self, scope: anyio.CancelScope) -> None:
        """Stop the jobs of sessions idle past their timeout; exit when idle long enough."""
        while True:
            await anyio.sleep(min(1.0, self.idle_exit / 4))
            now = time.time()
            for row in self.store.sessions():
                expired = (
                    row.state == "Disconnected"
                    and row.disconnected_at is not None
                    and now - row.disconnected_at > row.idle_timeout
                )
                if expired:
                    await self._expire(row)
            busy = self._connections or any(not j.done.is_set() for j in self._jobs.values())
            if busy:
                self._last_activity = time.monotonic()
            elif time.monotonic() - self._last_activity > self.idle_exit:
                scope.cancel()
                return

    async def shutdown(self, grace: float = 15.0) -> None:
        """A clean stop (SIGTERM): stop every running job and let its persister write its
        final state, so that the next host does not report them as killed with the host."""
        with anyio.move_on_after(grace):
            async with anyio.create_task_group() as tg:
                for job in list(self._jobs.values()):
                    if not job.done.is_set():
                        tg.start_soon(self._stop_and_settle, job)

    @staticmethod
    async def _stop_and_settle(job: _HostJob) -> None:
        await job.local.stop()
        await job.done.wait()

    async def _expire(self, row: SessionRow) -> None:
        """PowerShell: a disconnected session past its idle timeout is closed, its jobs stopped."""
        async with anyio.create_task_group() as tg:
            for job in list(self._jobs.values()):
                if job.session == row.name:
                    tg.start_soon(job.local.stop)
        self.store.put_session(attrs.evolve(row, state="Closed"))

    # -- one controller ------------------------------------------------------------------

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        uid = peer_uid(raw)
        if uid is not None and uid != os.getuid():
            await stream.aclose()  # another user: the directory's 0700 should have stopped them
            return
        self._connections += 1
        frames = FrameStream(await _LoopStream.take(stream))
        session: _Session | None = None
        try:
            session = await self._greet(frames)
            if session is None:
                return
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        message = await frames.receive()
                    except anyio.EndOfStream:
                        break
                    try:
                        request = Request.from_wire(message)
                    except ProtocolError as exc:  # this connection only: answer, then close
                        with anyio.move_on_after(1):
                            await frames.send(
                                Response(0, False, None, error_to_wire(exc)).to_wire()
                            )
                        break
                    if request.op == "disconnect":
                        await frames.send(Response(request.id, True, None, None).to_wire())
                        break
                    tg.start_soon(self._answer, frames, session, request)
                tg.cancel_scope.cancel()
        except ProtocolError as exc:
            with contextlib.suppress(Exception):
                await frames.send(Response(0, False, None, error_to_wire(exc)).to_wire())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the controller went away: its session is disconnected below
        finally:
            self._connections -= 1
            self._last_activity = time.monotonic()
            if session is not None:
                self._detach(session)
            with contextlib.suppress(Exception):
                await frames.aclose()

    async def _greet(self, frames: FrameStream) -> _Session | None:
        """Read the hello: attach to (or create) the session it names, or refuse it."""
        hello = Hello.from_wire(await frames.receive())
        if hello.session is None and not hello.create:
            session = _Session("", observer=True)  # get_sessions(): no session of its own
            await frames.send(self._welcome("").to_wire())
            return session
        name = hello.session or self._new_session_name()
        row = self.store.session(name)
        if row is None or row.state == "Closed":
            if hello.session is not None and not hello.create:
                names = [r.name for r in self.store.sessions() if r.state != "Closed"]
                await self._refuse(
                    frames,
                    f"no session named {name!r} on this job host; sessions: "
                    f"{', '.join(names) or 'none'}",
                )
                return None
            row = SessionRow(
                name=name,
                state="Opened",
                idle_timeout=hello.idle_timeout or DEFAULT_IDLE_TIMEOUT,
                output_buffering=hello.output_buffering or "block",
                created_at=time.time(),
                disconnected_at=None,
            )
        session = self._sessions.setdefault(name, _Session(name))
        session.buffering = "drop" if row.output_buffering == "drop" else "block"
        if session.attached:
            await self._refuse(
                frames, f"session {name!r} is in use by another connection; disconnect it first"
            )
            return None
        session.attached = True
        session.wake()
        self.store.put_session(attrs.evolve(row, state="Opened", disconnected_at=None))
        await frames.send(self._welcome(name).to_wire())
        return session

    def _welcome(self, name: str) -> Welcome:
        sessions = [r.name for r in self.store.sessions() if r.state != "Closed"]
        return Welcome(PROTOCOL_VERSION, f"asyncjobs {__version__}", name or "-", sessions)

    async def _refuse(self, frames: FrameStream, message: str) -> None:
        """Refuse a hello: the id-0 response; the connection is closed after it."""
        refusal = Response(0, False, None, ErrorInfo("AsyncJobsError", message))
        await frames.send(refusal.to_wire())

    def _new_session_name(self) -> str:
        taken = {r.name for r in self.store.sessions()}
        n = len(taken) + 1
        while f"Session{n}" in taken:
            n += 1
        return f"Session{n}"

    def _detach(self, session: _Session) -> None:
        if session.observer:
            return
        session.attached = False
        session.wake()
        row = self.store.session(session.name)
        if row is not None and row.state == "Opened":
            self.store.put_session(
                attrs.evolve(row, state="Disconnected", disconnected_at=time.time())
            )

    async def _answer(self, frames: FrameStream, session: _Session, request: Request) -> None:
        try:  # Request.from_wire validated the args and filled in every default
            result = await getattr(self, f"_op_{request.op}")(session, **request.args)
            response = Response.success(request.id, result)
        except AsyncJobsError as exc:
            response = Response(request.id, False, None, error_to_wire(exc))
        except Exception as exc:  # a bug here must not take the host down: report it
            info = ErrorInfo("AsyncJobsError", f"job host error: {exc!r}")
            response = Response(request.id, False, None, info)
        await frames.send(response.to_wire())

    async def _op_ping(self, session: _Session) -> str:
        return "pong"

    async def _op_start_command(
        self,
        session: _Session,
        command: str | list[str],
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        buffer: dict[str, Any] | None = None,
    ) -> JobInfo:
        assert self._slots is not None and self._tg is not None
        spec = CommandSpec.build(command, cwd=cwd, env=env, input=input, stop_grace=STOP_GRACE)
        # The job is named and started first, then added to the store in one write, as it is
        # then (Running, or NotStarted while it waits for a process slot). Until then its
        # lines wait in memory and its end is not written (``stored`` is False).
        job_id = self.store.reserve_job_id()
        label = f"job {job_id}" + (f" ({name!r})" if name else "")
        log = RecordLog(job_id=job_id, location="localhost", buffer=Buffer(), name=label)
        local = Job._leaf(
            id=job_id, name=name, kind="BackgroundJob", command=spec.display,
            location="localhost", log=log,
        )  # fmt: skip
        job = _HostJob(job_id, session.name, local, self)
        local._listeners.append(lambda _: self._on_change(job))

        async def body(started: Callable[[], None]) -> None:
            await run_host_command(local, spec, job, started)

        await self._tg.start(run_in_slot, local, self._slots, body)
        try:
            row = self.store.new_job(
                session=session.name,
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
        self._jobs[row.id] = job
        if local.state.is_finished:  # it failed to start: its error and reason are stored now
            self._finish(job)
            row = self._row(row.id)
        else:
            self._flush(job)
        return self._info(row)

    def _flush(self, job: _HostJob, *, everything: bool = False) -> None:
        """Append the job's pending lines: all of them, or while its session is disconnected
        with ``output_buffering="block"``, as many as fit under ``DISCONNECTED_BOUND``."""
        if not job.pending or not job.stored:
            return
        mode = self._buffering(job)
        limit = None
        if mode == "block" and not everything:
            limit = DISCONNECTED_BOUND - self.store.unreceived(job.row_id)
            if limit <= 0:
                return
        self.store.append_pieces(job.row_id, job.take_pending(limit))
        if mode == "drop":
            self.store.drop_oldest(job.row_id, keep=DISCONNECTED_BOUND)
        job.wake_readers()

    def _on_change(self, job: _HostJob) -> None:
        if job.local.state.is_finished and job.stored and not job.done.is_set():
            self._finish(job)

    def _finish(self, job: _HostJob) -> None:
        """The job is finished: store what it still holds, then its final state (last, so
        that whoever sees it finished finds all its records)."""
        local = job.local
        try:
            self._flush(job, everything=True)
            assert local._log is not None
            records = local._log.take(STREAMS)  # the error of a spawn that failed
            if records:
                rows = [(r.stream, pack_value(_as_data(r.value)), r.time) for r in records]
                self.store.append(job.row_id, rows)
            reason = str(local.reason) if local.reason is not None else None
            self.store.set_job(
                job.row_id,
                state=local.state.value,
                reason=reason,
                exit_status=local.exit_status,
                started_at=local.started_at,
                finished_at=local.finished_at,
            )
        finally:
            job.done.set()
            self._job_finished.set()
            self._job_finished = anyio.Event()
            job.wake_readers()

    def _buffering(self, job: _HostJob) -> str | None:
        """The session's output_buffering while it is disconnected, else None."""
        session = self._sessions.get(job.session)
        if session is not None and session.attached:
            return None
        if session is not None and session.buffering is not None:
            return session.buffering
        row = self.store.session(job.session)
        return row.output_buffering if row is not None else None

    def _held(self, job: _HostJob) -> bool:
        return (
            self._buffering(job) == "block"
            and self.store.unreceived(job.row_id) >= DISCONNECTED_BOUND
        )

    def _row(self, job_id: int) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise NoSuchJob(f"no job with id {job_id} on this job host; jobs.get() lists them")
        return row

    def _info(self, row: JobRow) -> JobInfo:
        finished = row.state not in _ACTIVE
        more = not finished or row.unreceived > 0
        return JobInfo(
            id=row.id,
            instance_id=row.instance_id,
            name=row.name,
            kind=row.kind,
            command=row.command,
            location=row.location,
            session=row.session,
            state=JobState(row.state),
            reason=row.reason,
            exit_status=row.exit_status,
            has_more_data=more,
            started_at=row.started_at,
            finished_at=row.finished_at,
            next_seq=row.next_seq,
            dropped=row.dropped,
        )

    async def _op_job(self, session: _Session, job: int) -> JobInfo:
        return self._info(self._row(job))

    async def _op_get(
        self,
        session: _Session,
        id: int | None = None,
        name: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        location: str | None = None,
        session_name: str | None = None,
        has_more_data: bool | None = None,
    ) -> list[JobInfo]:
        out = []
        for row in self.store.jobs(session_name):
            if id is not None and row.id != id:
                continue
            if name is not None and not fnmatch.fnmatchcase(row.name, name):
                continue
            if state is not None and row.state != state:
                continue
            if kind is not None and row.kind != kind:
                continue
            if location is not None and not fnmatch.fnmatchcase(row.location, location):
                continue
            info = self._info(row)
            if has_more_data is None or info.has_more_data is has_more_data:
                out.append(info)
        return out

    async def _op_wait(
        self,
        session: _Session,
        jobs: list[int],
        any: bool = False,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        if jobs:
            # Jobs this host runs (or ran) need no row read now; the others must exist.
            others = [job_id for job_id in jobs if job_id not in self._jobs]
            found = self.store.jobs_by_id(others)
            for job_id, maybe in zip(others, found, strict=True):
                if maybe is None:
                    self._row(job_id)  # raises NoSuchJob
            ids = list(jobs)
        else:
            found = list(self.store.jobs(session.name))
            ids = [r.id for r in found if r is not None]
        # A job this host runs is finished once its done is set (its final state is stored
        # then); any other job's stored state does not change, unless it is removed meanwhile.
        settled = {r.id for r in found if r is not None and r.state not in _ACTIVE}

        def is_finished(job_id: int) -> bool:
            host_job = self._jobs.get(job_id)
            if host_job is not None:
                return host_job.done.is_set()
            return job_id in settled or self._row(job_id).state not in _ACTIVE

        def finished() -> list[int]:
            return [job_id for job_id in ids if is_finished(job_id)]

        with anyio.move_on_after(timeout):
            while True:
                done = finished()
                if len(done) == len(ids) or (any and done):
                    break
                waiting = [
                    self._jobs[job_id].done
                    for job_id in ids
                    if job_id in self._jobs and not self._jobs[job_id].done.is_set()
                ]
                if not waiting:
                    break
                if any:
                    await self._job_finished.wait()
                else:
                    await waiting[0].wait()
        done = finished()
        infos = []
        for job_id, maybe in zip(done, self.store.jobs_by_id(done), strict=True):
            infos.append(self._info(maybe if maybe is not None else self._row(job_id)))
        return infos

    async def _op_read(
        self,
        session: _Session,
        job: int,
        from_seq: int = 0,
        streams: list[str] | None = None,
        limit: int | None = None,
        wait: float | None = None,
        unreceived: bool = False,
    ) -> dict[str, Any]:
        def fetch() -> list[WireRow]:
            return _page(
                self.store.read_rows(
                    job, from_seq, streams=streams, limit=limit, unreceived_only=unreceived
                )
            )

        return await self._reading(job, wait, fetch)

    async def _op_take(
        self,
        session: _Session,
        job: int,
        streams: list[str] | None = None,
        limit: int | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        chosen = streams or list(STREAMS)

        def fetch() -> list[WireRow]:
            # Look first, cut the page to what fits in a frame, then take exactly that: a
            # record is marked received only if it is really on its way.
            rows = self.store.read_rows(job, 0, streams=chosen, limit=limit, unreceived_only=True)
            page = _page(rows)
            if page:
                self.store.take_rows(job, chosen, limit=len(page))
            return page

        batch = await self._reading(job, wait, fetch)
        host_job = self._jobs.get(job)
        if host_job is not None:
            host_job.wake_producer()
        return batch

    async def _reading(
        self,
        job_id: int,
        wait: float | None,
        fetch: Callable[[], list[WireRow]],
    ) -> dict[str, Any]:
        """Fetch records; if none and ``wait`` > 0 while the job runs, long-poll for more."""
        self._row(job_id)
        records = fetch()
        host_job = self._jobs.get(job_id)
        if not records and wait and host_job is not None and not host_job.done.is_set():
            with anyio.move_on_after(wait):
                await host_job.appended.wait()
            records = fetch()
        row = self._row(job_id)
        next_seq = records[-1][0] + 1 if records else row.next_seq
        # A Batch on the wire, its rows encoded already (a Batch object would encode them).
        info = self._info(row).to_wire()
        return {"records": encoded_rows(records), "next_seq": next_seq, "job": info}

    async def _op_stop(self, session: _Session, job: int) -> JobInfo:
        row = self._row(job)
        host_job = self._jobs.get(job)
        if host_job is not None:
            await host_job.local.stop()
            await host_job.done.wait()
        return self._info(self._row(row.id))

    async def _op_remove(self, session: _Session, job: int, force: bool = False) -> None:
        row = self._row(job)
        if row.state in _ACTIVE:
            if not force:
                raise JobStateError(
                    f"job {row.id} ({row.name!r}) is {row.state}; stop it first or pass force=True"
                )
            await self._op_stop(session, job)
        self._jobs.pop(job, None)
        self.store.delete_job(job)

    async def _op_sessions(self, session: _Session) -> list[SessionInfo]:
        counts: dict[str, int] = {}
        for row in self.store.jobs():
            counts[row.session] = counts.get(row.session, 0) + 1
        return [
            SessionInfo(
                name=r.name,
                state=r.state,  # type: ignore[arg-type]
                job_count=counts.get(r.name, 0),
                idle_timeout=r.idle_timeout,
            )
            for r in self.store.sessions()
            if r.state != "Closed"
        ]

    async def _op_close_session(self, session: _Session) -> None:
        row = self.store.session(session.name)
        if row is not None:
            await self._expire(row)


@final
class _LoopStream(anyio.abc.ByteStream):
    """A controller's connection on asyncio's own socket transport (the job host always runs
    asyncio). anyio's socket stream adds an event loop turn to every receive and send and
    registers the socket with the selector for each wait; a request and its answer cost about
    a third less this way."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def take(cls, stream: anyio.abc.SocketStream) -> _LoopStream:
        """The connection of ``stream`` (which is closed) on a transport of its own."""
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock = socket.socket(raw.family, raw.type, fileno=os.dup(raw.fileno()))
        await stream.aclose()
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._reader.read(max_bytes)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._writer.is_closing():
            raise anyio.ClosedResourceError
        try:
            self._writer.write(item)
            await self._writer.drain()
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        self._writer.write_eof()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


# -- the process --------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """Hold the host lock for the life of the process; False if another host holds it."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def _use_pidfd_watcher() -> None:
    """On Python 3.9-3.11, asyncio waits for each child in a thread of its own (started per
    spawn); a pidfd in the event loop costs no thread. 3.12+ does that by itself. The job host
    owns its process and event loop, so it may choose; where pidfds are missing, nothing
    changes."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return  # an older kernel
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def _run(directory: Path, idle_exit: float) -> None:
    _use_pidfd_watcher()
    path = socket_path(directory)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a host that died; we hold the lock
    listener = await anyio.create_unix_listener(path, mode=0o600)
    host = JobHost(directory, idle_exit=idle_exit)
    try:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                # TERM/INT: a clean shutdown: the job table stops its jobs and reaps them.
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        await host.shutdown()
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_signals)
            await host.serve(listener)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        host.store.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = ensure_private_dir(host_dir())
    idle_exit = float(os.environ.get(ENV_IDLE, DEFAULT_IDLE_EXIT))
    if "--daemonize" in args:
        if os.fork() > 0:
            return 0  # the first child: exit, so that the host is nobody's child
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # stderr stays on the log file the spawner opened
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with _exclusive(directory) as mine:
        if not mine:
            return 0  # another job host serves this directory
        anyio.run(_run, directory, idle_exit, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
