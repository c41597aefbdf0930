"""The job host: a detached process that owns a job table and keeps every job's records on disk.

It is the local-jobs machinery (``Job``, ``run_in_slot``, the command runner's spawn and stop)
plus a store: a command's pipes go straight into the store in packed batches (``_hostrun``),
and controllers read the records back from the store over the wire protocol — from any seq
(keep) or through the per-stream receive-once cursors — also after they disconnected, died,
or the host restarted. A record is served only once it is committed, so what a controller was
given is never lost.

Run as ``python -m asyncjobs._host.daemon`` (``--daemonize`` detaches; see ``_hostdir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import fnmatch
import heapq
import os
import resource
import signal
import socket
import sys
import time
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, repeat
from operator import add, itemgetter, methodcaller
from pathlib import Path
from typing import Any, Final, Literal, final

import anyio
import anyio.abc
import attrs

from .._core.errors import AsyncJobsError, JobArgumentError, JobStateError, NoSuchJob, ProtocolError
from .._core.job import Job
from .._core.log import RecordLog
from .._core.models import STREAMS, Buffer
from .._core.runner import Run, run_in_slot
from .._core.state import ACTIVE_VALUES, Event, JobState
from .._local.command import CommandSpec
from .._version import __version__
from .directory import (
    ENV_DIR,
    ENV_IDLE,
    LOCK,
    STORE,
    describe_process,
    ensure_private_dir,
    host_dir,
    peer_pid,
    peer_uid,
    report_ready,
    socket_path,
)
from .hosted import FLUSH_BYTES, FLUSH_RECORDS, pack_value, run_host_command, unpack_value
from .protocol import (
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
from .store import JobRow, Piece, Row, SessionRow, Store, StoreError
from .wire import STREAM_CODES

#: Unreceived records a job of a disconnected session may hold before ``output_buffering``
#: acts: ``block`` stops taking its output (its pipe fills, the program waits), ``drop``
#: discards the oldest.
DISCONNECTED_BOUND: Final = 10_000
DEFAULT_IDLE_TIMEOUT: Final = 2 * 3600.0  # PowerShell's default for disconnected sessions
DEFAULT_IDLE_EXIT: Final = 300.0
PROCESS_LIMIT: Final = 64  # commands running at once; more wait in NotStarted
STOP_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL when a job is stopped
_ACTIVE: Final = ACTIVE_VALUES


#: Requests of one connection being answered at once; past it, the connection is not read.
MAX_IN_FLIGHT: Final = 32
HELLO_TIMEOUT: Final = 30.0  # seconds a new connection may take to say hello
ACCEPT_PAUSE: Final = 0.1  # seconds between tries to accept while out of descriptors
#: Ops whose answer may be large: each takes its connection's one turn to fetch and send.
_PAGED: Final = frozenset({"read", "take", "get"})
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Ends of a connection that only mean the controller went away: not worth a line in the log.
_GONE: Final = (
    anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError,
    TimeoutError,
)  # fmt: skip

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
        self.host._flush(self)
        if self.lost is not None:
            raise self.lost

    async def room(self) -> None:
        """Wait while ``output_buffering="block"`` holds the job (reconnects and receives
        wake it; it looks again every half second anyway). Meanwhile the job is ``Blocked``,
        and its reason says why and what lets it go on."""
        try:
            while self.host._buffering(self) == "block":
                self.flush()
                if not self.pending and not self.host._held(self):
                    return
                self.host._set_blocked(self, True)
                with anyio.move_on_after(0.5):
                    await self.received.wait()
        finally:
            if self.blocked:
                self.host._set_blocked(self, False)

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


def _held_by(output_buffering: str) -> Literal["block", "drop"] | None:
    """A session's ``output_buffering`` as the host applies it while the session is
    disconnected: ``"spill"`` (the default) keeps everything, so None."""
    if output_buffering == "block":
        return "block"
    return "drop" if output_buffering == "drop" else None


def _over_ssh(pid: int) -> str:
    """``, over SSH from ADDR`` when ``pid`` is a bridge of a controller on another machine
    (its environment names the SSH connection), else ""."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return ""
    connection = env.get(b"SSH_CONNECTION", b"").split()
    return f", over SSH from {connection[0].decode(errors='replace')}" if connection else ""


def _log(message: str) -> None:
    """A line in host.log (the host's stderr); a full disk must not make it fail."""
    with contextlib.suppress(OSError, ValueError):
        print(f"asyncjobs job host: {message}", file=sys.stderr, flush=True)


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) says only that the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_peer_gone(e) for e in exc.exceptions)
    return isinstance(exc, _GONE)


def _request_id(message: Any) -> int | None:
    """The id of a frame that looks like a request (to answer its failure), else None."""
    if type(message) is dict and message.get("t") == "request":
        request_id = message.get("id")
        if type(request_id) is int and 0 < request_id < 2**63:
            return request_id
    return None


@final
class _Turn:
    """One request's hold on its connection's lock for large answers: taken at most once,
    given back at the end of the request (or while it long-polls)."""

    __slots__ = ("_held", "_lock")

    def __init__(self, lock: anyio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def acquire(self) -> None:
        if not self._held:
            await self._lock.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


@attrs.define(eq=False)
class _Lease:
    """Records ``take`` handed to a controller that it has not acknowledged yet: received
    for everyone else, given back (``_give_back``) unless the controller says it handed
    them on (``ack``)."""

    job: int
    seqs: array[int]  # of the records handed out, in order (8 bytes each, not the rows)
    done: int = 0  # how many of them (from the first) are acknowledged

    @property
    def rest(self) -> array[int]:
        return self.seqs[self.done :]


@attrs.define(eq=False)
class _Client:
    """One controller's connection: its frames, its bounds, and the scope that ends it."""

    frames: FrameStream
    session: _Session | None = None
    in_flight: anyio.Semaphore = attrs.field(factory=lambda: anyio.Semaphore(MAX_IN_FLIGHT))
    pages: anyio.Lock = attrs.field(factory=anyio.Lock)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)


@attrs.define(eq=False)
class _Session:
    name: str
    observer: bool = False  # a connection that only looks (sessions, get): no session
    attached: bool = False
    buffering: Literal["block", "drop"] | None = None  # its output_buffering; None: keep all
    changed: anyio.Event = attrs.field(factory=anyio.Event)
    #: What its connection took and has not acknowledged, by the id of the take request.
    leases: dict[int, _Lease] = attrs.field(factory=dict)
    holder: str | None = None  # who attached it: "pid 7 (python3 x.py) since 10:41:07"
    taking: set[int] = attrs.field(factory=set)  # take requests being answered
    abandoned: set[int] = attrs.field(factory=set)  # of those, released before they took

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
        #: Records handed out by ``take`` and given back unacknowledged, per job, in seq
        #: order: the next ``take`` of their streams hands them out first.
        self._returned: dict[int, list[Row]] = {}
        self._complained = 0.0  # when running out of descriptors was last logged
        #: Final states of jobs that a full disk would not take yet, by job id.
        self._unsaved: dict[int, dict[str, Any]] = {}

    # -- lifetime ------------------------------------------------------------------------

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        recovered = self.store.recover(
            "the job host died while this job ran (it was killed or the machine restarted)"
        )
        if recovered:
            print(f"asyncjobs job host: marked {len(recovered)} jobs failed", file=sys.stderr)
        for row in self.store.sessions():
            if row.state == "Opened":  # its connection died with the old host
                self._put_session(
                    attrs.evolve(row, state="Disconnected", disconnected_at=time.time())
                )
        self._slots = anyio.CapacityLimiter(PROCESS_LIMIT)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._housekeeping, tg.cancel_scope)
            async with listener:
                await self._accept(listener, tg)

    async def _accept(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        """Accept controllers for ever. Out of descriptors (``EMFILE``) or memory, a new
        connection waits in the socket's backlog for a moment; the host never exits for it."""
        while True:
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (OSError, anyio.BrokenResourceError) as exc:  # anyio wraps accept's OSError
                self._complain(f"can't accept a connection now ({exc.__cause__ or exc})")
                await anyio.sleep(ACCEPT_PAUSE)
                continue
            tg.start_soon(self._connection, stream)

    async def _housekeeping(self, scope: anyio.CancelScope) -> None:
        """Stop the jobs of sessions idle past their timeout; exit when idle long enough."""
        while True:
            await anyio.sleep(min(1.0, self.idle_exit / 4))
            if self._unsaved:
                self._save_unsaved()
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
        self._put_session(attrs.evolve(row, state="Closed"))

    # -- one controller ------------------------------------------------------------------

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        """One controller, from accept to close. Nothing it does can end the host or another
        connection: whatever ends it is logged (unless the peer just went away) and only this
        connection is closed."""
        self._connections += 1
        try:
            await self._serve_client(stream)
        except Exception as exc:  # an ExceptionGroup too: one connection's fault stays here
            if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
                self._complain(f"a connection was refused ({exc})")
            elif not _peer_gone(exc):
                _log(f"a connection failed: {exc!r}")
        finally:
            self._connections -= 1
            self._last_activity = time.monotonic()

    def _complain(self, what: str) -> None:
        """Log running out of descriptors or memory: once in a while, not per connection."""
        now = time.monotonic()
        if now - self._complained > 10:
            self._complained = now
            _log(f"{what}; out of descriptors or memory: new connections wait a moment")

    async def _serve_client(self, stream: anyio.abc.SocketStream) -> None:
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            uid = peer_uid(raw)
            if uid is not None and uid != os.getuid():
                return  # another user: the directory's 0700 should have stopped them
            pid = peer_pid(raw)
            frames = FrameStream(await _LoopStream.take(stream))
        finally:
            await stream.aclose()  # ``take`` has its own descriptor, or we are done
        client = _Client(frames)
        try:
            with anyio.fail_after(HELLO_TIMEOUT):
                client.session = await self._greet(frames, pid)
            if client.session is None:
                return
            async with anyio.create_task_group() as tg:
                client.scope = tg.cancel_scope
                await self._requests(client, tg)
                tg.cancel_scope.cancel()
        except ProtocolError as exc:  # before the hello was taken, or a frame beyond repair
            with anyio.move_on_after(1), contextlib.suppress(Exception):
                await frames.send(Response(0, False, None, error_to_wire(exc)).to_wire())
        finally:
            with anyio.CancelScope(shield=True):
                if client.session is not None:
                    self._detach(client.session)
                with contextlib.suppress(Exception):
                    await frames.aclose()

    async def _requests(self, client: _Client, tg: anyio.abc.TaskGroup) -> None:
        """Read requests and answer each in a task of its own, at most ``MAX_IN_FLIGHT`` at
        once: past that this connection is not read (the kernel, then the client, wait)."""
        frames, session = client.frames, client.session
        assert session is not None
        while True:
            await client.in_flight.acquire()
            try:
                message = await frames.receive()
            except anyio.EndOfStream:
                return
            except ProtocolError as exc:  # a frame beyond repair: say why, then close
                with anyio.move_on_after(1), contextlib.suppress(Exception):
                    await frames.send(Response(0, False, None, error_to_wire(exc)).to_wire())
                return
            try:
                request = Request.from_wire(message)
            except ProtocolError as exc:  # answered by its id if it has one; others go on
                client.in_flight.release()
                request_id = _request_id(message)
                if request_id is None:  # not a request at all: answer, then close
                    with anyio.move_on_after(1):
                        await frames.send(Response(0, False, None, error_to_wire(exc)).to_wire())
                    return
                await frames.send(Response(request_id, False, None, error_to_wire(exc)).to_wire())
                continue  # that request failed; the connection goes on
            if request.op == "disconnect":
                await frames.send(Response(request.id, True, None, None).to_wire())
                return
            if request.op == "ack":  # in order with the requests around it, never cancelled
                client.in_flight.release()
                await frames.send(self._ack_response(session, request).to_wire())
                continue
            tg.start_soon(self._answer, client, request)

    async def _greet(self, frames: FrameStream, pid: int | None = None) -> _Session | None:
        """Read the hello: attach to (or create) the session it names, or refuse it (one in
        use is refused naming the program that holds it, as far as the kernel says)."""
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
                # Unless asked to block or drop, a job keeps all its output: the store is
                # the spill (disk, not memory), and a detached job must never stall.
                output_buffering=hello.output_buffering or "spill",
                created_at=time.time(),
                disconnected_at=None,
            )
        session = self._sessions.setdefault(name, _Session(name))
        session.buffering = _held_by(row.output_buffering)
        if session.attached:
            holder = f": {session.holder}" if session.holder else ""
            await self._refuse(
                frames,
                f"session {name!r} is in use by another connection{holder}; it is free again "
                "when that program disconnects or exits",
            )
            return None
        session.attached = True
        session.holder = None
        if pid is not None:
            since = time.strftime("%H:%M:%S")
            session.holder = f"{describe_process(pid)} since {since}{_over_ssh(pid)}"
        session.wake()
        try:
            self._put_session(attrs.evolve(row, state="Opened", disconnected_at=None))
            await frames.send(self._welcome(name).to_wire())
        except BaseException:  # the controller left before it heard the welcome
            self._detach(session)
            raise
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

    def _put_session(self, row: SessionRow) -> None:
        """Store a session's row; on a full disk the host goes on with it in memory (its
        jobs and reads do not depend on it) and says so in its log."""
        try:
            self.store.put_session(row)
        except StoreError as exc:
            _log(f"session {row.name!r}: its state {row.state} is not stored ({exc})")

    def _detach(self, session: _Session) -> None:
        """The connection of ``session`` ended: what it held unacknowledged is given back,
        and the session (unless an observer) is disconnected."""
        leases, session.leases = session.leases, {}
        for lease in leases.values():
            self._give_back(lease.job, lease.rest)
        if session.observer:
            return
        session.attached = False
        session.wake()
        row = self.store.session(session.name)
        if row is not None and row.state == "Opened":
            self._put_session(attrs.evolve(row, state="Disconnected", disconnected_at=time.time()))

    async def _answer(self, client: _Client, request: Request) -> None:
        """Answer one request. Ops that answer with many records (``_PAGED``) take the
        connection's one turn to fetch and send, so that a client can't make the host hold
        more than one large answer of its in memory; a long-poll waits without it."""
        session = client.session
        assert session is not None
        turn = _Turn(client.pages)
        try:
            handler = getattr(self, f"_op_{request.op}")
            extra: dict[str, Any] = {"turn": turn} if request.op in _PAGED else {}
            if request.op == "take":
                extra["lease"] = request.id  # a lease is named by the request that took it
            try:  # Request.from_wire validated the args and filled in every default
                result = await handler(session, **request.args, **extra)
                response = Response.success(request.id, result)
            except AsyncJobsError as exc:
                response = Response(request.id, False, None, error_to_wire(exc))
            except Exception as exc:  # a bug here must not take the host down: report it
                _log(f"request {request.op!r} failed: {exc!r}")
                info = ErrorInfo("AsyncJobsError", f"job host error: {exc!r}")
                response = Response(request.id, False, None, info)
            await client.frames.send(response.to_wire())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            client.scope.cancel()  # the controller is gone: so is this connection
        finally:
            turn.release()
            client.in_flight.release()

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

        async def body(run: Run) -> None:
            await run_host_command(local, spec, job, run.started)

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
                _log(str(job.lost))
            job.pending.clear()
            job.pending_records = job.pending_bytes = 0
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
                _log(f"job {job.row_id}: its final state waits to be stored ({exc})")
                self._unsaved[job.row_id] = fields
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
        if session is not None:
            return session.buffering
        row = self.store.session(job.session)
        return _held_by(row.output_buffering) if row is not None else None

    def _set_blocked(self, job: _HostJob, blocked: bool) -> None:
        """Show a job held by ``output_buffering="block"`` as ``Blocked``, with why, in the
        job table and the store; and as ``Running`` again once it may go on."""
        local = job.local
        if blocked == job.blocked or local.state not in (JobState.RUNNING, JobState.BLOCKED):
            return
        job.blocked = blocked
        local._apply(Event.BLOCK if blocked else Event.UNBLOCK)
        reason = None
        if blocked:
            reason = (
                f"held by output_buffering='block': {DISCONNECTED_BOUND:,} records are not "
                f"received while session {job.session!r} is disconnected; receive them "
                f"(asyncjobs receive {job.row_id}) or reconnect to let it go on"
            )
        with contextlib.suppress(StoreError):  # a full disk: the job's own write says so
            self.store.set_job(job.row_id, state=local.state.value, reason=reason)

    def _held(self, job: _HostJob) -> bool:
        return (
            self._buffering(job) == "block"
            and self.store.unreceived(job.row_id) >= DISCONNECTED_BOUND
        )

    def _row(self, job_id: int) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise NoSuchJob(f"no job with id {job_id} on this job host; jobs.get() lists them")
        return self._as_known(row)

    def _as_known(self, row: JobRow) -> JobRow:
        """``row`` with the final state the store could not take yet (a full disk)."""
        fields = self._unsaved.get(row.id)
        return row if fields is None else attrs.evolve(row, **fields)

    def _save_unsaved(self) -> None:
        """Write the final states a full disk refused, once it takes them."""
        for job_id, fields in list(self._unsaved.items()):
            try:
                if self.store.job(job_id) is not None:
                    self.store.set_job(job_id, **fields)
            except StoreError:
                return
            del self._unsaved[job_id]

    def _info(self, row: JobRow) -> JobInfo:
        finished = row.state not in _ACTIVE
        more = not finished or row.unreceived > 0 or bool(self._returned.get(row.id))
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
        *,
        turn: _Turn,
    ) -> list[JobInfo]:
        await turn.acquire()
        out = []
        for row in map(self._as_known, self.store.jobs(session_name)):
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
            row = self._as_known(maybe) if maybe is not None else self._row(job_id)
            infos.append(self._info(row))
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
        *,
        turn: _Turn,
    ) -> dict[str, Any]:
        def fetch() -> tuple[list[WireRow], int | None]:
            rows = self.store.read_rows(
                job, from_seq, streams=streams, limit=limit, unreceived_only=unreceived
            )
            return _page(rows), None

        return await self._reading(job, wait, fetch, turn)

    async def _op_take(
        self,
        session: _Session,
        job: int,
        streams: list[str] | None = None,
        limit: int | None = None,
        wait: float | None = None,
        *,
        turn: _Turn,
        lease: int,
    ) -> dict[str, Any]:
        chosen = streams or list(STREAMS)

        def fetch() -> tuple[list[WireRow], int | None]:
            if lease in session.abandoned:  # its caller gave up already: take nothing
                return [], None
            return self._take(session, job, chosen, limit, lease)

        session.taking.add(lease)
        try:
            batch = await self._reading(job, wait, fetch, turn)
        finally:
            session.taking.discard(lease)
            session.abandoned.discard(lease)
        host_job = self._jobs.get(job)
        if host_job is not None:
            host_job.wake_producer()
        return batch

    def _take(
        self, session: _Session, job_id: int, chosen: list[str], limit: int | None, lease: int
    ) -> tuple[list[WireRow], int | None]:
        """Receive-once: the next unreceived records of ``chosen`` (given-back ones first,
        all in seq order), cut to what fits in a frame, handed out as a lease of
        ``session``'s: received for everyone else from now on, and given back if the
        controller does not acknowledge them (``ack``) before its connection ends."""
        back = [r for r in self._returned.get(job_id, ()) if r[1] in chosen]
        if limit is not None:
            del back[limit:]
        fresh = self.store.read_rows(job_id, 0, streams=chosen, limit=limit, unreceived_only=True)
        rows = list(heapq.merge(back, fresh)) if back else fresh
        if limit is not None:
            del rows[limit:]
        page = _page(rows)
        if not page:
            return page, None
        taken = rows[: len(page)]
        if back:
            given = {r[0] for r in back}
            again = {r[0] for r in taken if r[0] in given}
            self._returned[job_id] = [r for r in self._returned[job_id] if r[0] not in again]
            if not self._returned[job_id]:
                del self._returned[job_id]
            n_fresh = len(taken) - len(again)
        else:
            n_fresh = len(taken)
        if n_fresh:  # exactly the first n_fresh unreceived records: those in ``taken``
            self.store.take_rows(job_id, chosen, limit=n_fresh)
        session.leases[lease] = _Lease(job_id, array("q", map(itemgetter(0), taken)))
        return page, lease

    def _give_back(self, job_id: int, seqs: array[int]) -> None:
        """Unacknowledged records become unreceived again, for the next ``take``."""
        if not seqs or self.store.job(job_id) is None:  # none, or the job is removed
            return
        wanted = set(seqs)
        span = self.store.read_rows(job_id, seqs[0], limit=seqs[-1] - seqs[0] + 1)
        rows = [r for r in span if r[0] in wanted]
        self._returned[job_id] = list(heapq.merge(self._returned.get(job_id, []), rows))
        host_job = self._jobs.get(job_id)
        if host_job is not None:
            host_job.wake_readers()

    def _ack_response(self, session: _Session, request: Request) -> Response:
        """``ack``: the first ``count`` records of lease ``lease`` were handed to the caller
        (received for good); with ``release``, the rest are given back and the lease ends."""
        lease_id, count, release = (request.args[k] for k in ("lease", "count", "release"))
        lease = session.leases.get(lease_id)
        if lease is None and release and lease_id in session.taking:  # before it took
            session.abandoned.add(lease_id)
            return Response.success(request.id, None)
        if lease is None:
            error = JobArgumentError(
                f"ack: no unacknowledged batch {lease_id} on this connection (acknowledged "
                "already, or given back when an earlier connection ended)"
            )
            return Response(request.id, False, None, error_to_wire(error))
        lease.done = max(lease.done, min(count, len(lease.seqs)))
        if release or lease.done == len(lease.seqs):
            del session.leases[lease_id]
            self._give_back(lease.job, lease.rest)
        return Response.success(request.id, None)

    async def _reading(
        self,
        job_id: int,
        wait: float | None,
        fetch: Callable[[], tuple[list[WireRow], int | None]],
        turn: _Turn,
    ) -> dict[str, Any]:
        """Fetch records in the connection's turn; if none and ``wait`` > 0 while the job
        runs, long-poll for more (out of turn). The turn is kept until the answer is sent."""
        await turn.acquire()
        self._row(job_id)
        records, lease = fetch()
        host_job = self._jobs.get(job_id)
        if not records and wait and host_job is not None and not host_job.done.is_set():
            turn.release()
            with anyio.move_on_after(wait):
                await host_job.appended.wait()
            await turn.acquire()
            records, lease = fetch()
        row = self._row(job_id)
        next_seq = records[-1][0] + 1 if records else row.next_seq
        # A Batch on the wire, its rows encoded already (a Batch object would encode them).
        info = self._info(row).to_wire()
        batch = {"records": encoded_rows(records), "next_seq": next_seq, "job": info}
        if lease is not None:
            batch["lease"] = lease
        return batch

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
        self._returned.pop(job, None)
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
        """The connection of ``stream`` on a descriptor and transport of its own (the caller
        closes ``stream``). Out of descriptors, ``OSError`` (the connection is refused)."""
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock = socket.socket(raw.family, raw.type, fileno=os.dup(raw.fileno()))
        try:
            sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
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
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a host that died; we hold the lock
        listener = await anyio.create_unix_listener(path, mode=0o600)
        try:
            host = JobHost(directory, idle_exit=idle_exit)
        except BaseException:
            await listener.aclose()
            raise
    except (OSError, AsyncJobsError) as exc:  # the spawner says it; host.log may be full
        report_ready(f"{exc}")
        _log(f"can't start: {exc}")
        raise SystemExit(1) from None
    report_ready()
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


def _raise_descriptor_limit() -> None:
    """Raise the soft limit of open files to the hard one, as clush does: every controller
    and every job's pipes hold descriptors, and 1024 is soon reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
    _raise_descriptor_limit()
    try:
        with _exclusive(directory) as mine:
            if not mine:
                report_ready()  # another job host serves this directory
                return 0
            anyio.run(_run, directory, idle_exit, backend="asyncio")
    except OSError as exc:  # its lock: the spawner hears why (host.log may be on a full disk)
        report_ready(f"can't take the lock {directory / LOCK}: {exc}")
        _log(f"can't start: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
