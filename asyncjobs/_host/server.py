"""The job host's server: accepts controllers on a Unix socket and answers their requests.

The job host is a detached process that owns a job table and keeps every job's records on disk:
the local-jobs machinery (``Job``, ``run_in_slot``, the command runner's spawn and stop) plus a
store. A command's pipes go straight into the store in packed batches (``hosted``), and
controllers read the records back from the store over the wire protocol — from any seq (keep)
or through the receive-once leases (``delivery``) — also after they disconnected, died, or the
host restarted. A record is served only once it is committed, so what a controller was given is
never lost.

This module is the server: the accept loop, the guard around each connection (nothing one
connection does can end the host or another), the hello (``sessions``), the reading loop and its
limits, and the dispatch of each request through ``HANDLERS``, the handler of every ``Op`` of
``protocol.OPS`` (checked complete at import). ``daemon`` runs it as a process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from .._core.errors import AsyncJobsError, ProtocolError
from . import protocol as ops
from .delivery import Deliveries
from .directory import STORE, peer_pid, peer_uid
from .hostjob import HostedJobs
from .hostlog import log
from .loopstream import LoopStream
from .paging import Turn, read_page
from .protocol import ErrorInfo, FrameStream, Op, Request, Response, SessionInfo, error_to_wire
from .records import HostJobInfo
from .sessions import Session, Sessions
from .store import Store

DEFAULT_IDLE_EXIT: Final = 300.0
#: Requests of one connection being answered at once; past it, the connection is not read.
MAX_IN_FLIGHT: Final = 32
HELLO_TIMEOUT: Final = 30.0  # seconds a new connection may take to say hello
ACCEPT_PAUSE: Final = 0.1  # seconds between tries to accept while out of descriptors
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Ends of a connection that only mean the controller went away: not worth a line in the log.
_GONE: Final = (
    anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError,
    TimeoutError,
)  # fmt: skip


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


@attrs.define(eq=False)
class _Client:
    """One controller's connection: its frames, its bounds, and the scope that ends it."""

    frames: FrameStream
    session: Session | None = None
    in_flight: anyio.Semaphore = attrs.field(factory=lambda: anyio.Semaphore(MAX_IN_FLIGHT))
    pages: anyio.Lock = attrs.field(factory=anyio.Lock)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)


@attrs.frozen
class Call:
    """What a handler knows of the request it answers, besides its fields."""

    session: Session
    turn: Turn  # the connection's one turn for large answers (``Op.paged``)
    id: int  # the request's id: a ``take`` names its lease by it
    owner: object = None  # the connection it came on (a warm invoke belongs to it)


#: A handler: ``(host, call, **fields)`` → the op's result (``Request.from_wire`` checked the
#: fields and filled in every default).
Handler = Callable[..., Awaitable[Any]]


class JobHost:
    """The server: accepts controllers on a Unix socket, runs their jobs, keeps their records."""

    def __init__(self, directory: Path, *, idle_exit: float = DEFAULT_IDLE_EXIT) -> None:
        self.directory = directory
        self.idle_exit = idle_exit
        self.store = Store.open(directory / STORE)
        self.sessions = Sessions(self.store)
        self.jobs = HostedJobs(self.store, self.sessions.buffering_of, self._has_returned)
        self.deliveries = Deliveries(self.store, self.jobs)
        self._connections = 0
        self._last_activity = time.monotonic()
        self._tg: anyio.abc.TaskGroup | None = None
        self._complained = 0.0  # when running out of descriptors was last logged
        self._warm: Any = None  # warm invokes and held connections: ``_warm_host()``

    def _has_returned(self, job_id: int) -> bool:
        return self.deliveries.has_returned(job_id)

    # -- lifetime ------------------------------------------------------------------------

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        recovered = self.store.recover(
            "the job host died while this job ran (it was killed or the machine restarted)"
        )
        if recovered:
            log(f"marked {len(recovered)} jobs failed")
        self.sessions.recover()
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
            if self.jobs.unsaved:
                self.jobs.save_unsaved()
            for row in self.sessions.expired(time.time()):
                await self._close_session(row.name)
            if self._connections or self.jobs.busy() or (self._warm and self._warm.busy()):
                self._last_activity = time.monotonic()
            elif time.monotonic() - self._last_activity > self.idle_exit:
                scope.cancel()
                return

    async def shutdown(self, grace: float = 15.0) -> None:
        """A clean stop (SIGTERM): stop every running job and let its persister write its
        final state, so that the next host does not report them as killed with the host."""
        with anyio.move_on_after(grace):
            await self.jobs.stop_all()

    async def _close_session(self, name: str) -> None:
        """PowerShell: a disconnected session past its idle timeout is closed, its jobs
        stopped (so is one that asks for it: ``close_session``)."""
        await self.jobs.stop_all(name)
        row = self.store.session(name)
        if row is not None:
            self.sessions.closed(row)

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
                log(f"a connection failed: {exc!r}")
        finally:
            self._connections -= 1
            self._last_activity = time.monotonic()

    def _complain(self, what: str) -> None:
        """Log running out of descriptors or memory: once in a while, not per connection."""
        now = time.monotonic()
        if now - self._complained > 10:
            self._complained = now
            log(f"{what}; out of descriptors or memory: new connections wait a moment")

    async def _serve_client(self, stream: anyio.abc.SocketStream) -> None:
        try:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            uid = peer_uid(raw)
            if uid is not None and uid != os.getuid():
                return  # another user: the directory's 0700 should have stopped them
            pid = peer_pid(raw)
            frames = FrameStream(await LoopStream.take(stream))
        finally:
            await stream.aclose()  # ``take`` has its own descriptor, or we are done
        client = _Client(frames)
        try:
            with anyio.fail_after(HELLO_TIMEOUT):
                client.session = await self.sessions.greet(frames, pid)
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
                if self._warm is not None:
                    await self._warm.drop(client)  # its warm invokes stop with it
                if client.session is not None:
                    self.deliveries.give_back_all(client.session.leases)
                    self.sessions.detach(client.session)
                with contextlib.suppress(Exception):
                    await frames.aclose()

    async def _requests(self, client: _Client, tg: anyio.abc.TaskGroup) -> None:
        """Read requests and answer each in a task of its own, at most ``MAX_IN_FLIGHT`` at
        once: past that this connection is not read (the kernel, then the client, wait). An
        ``Op.inline`` one is answered here, in order with the requests around it."""
        frames = client.frames
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
            op = ops.OP_NAMED[request.op]
            if not op.inline:
                tg.start_soon(self._answer, client, op, request)
                continue
            client.in_flight.release()
            turn = Turn(client.pages)
            try:
                await frames.send((await self._respond(client, op, request, turn)).to_wire())
            finally:
                turn.release()
            if op.last:
                return

    async def _answer(self, client: _Client, op: Op[Any], request: Request) -> None:
        """Answer one request in a task of its own. Ops that answer with many records
        (``Op.paged``) take the connection's one turn to fetch and send, so that a client
        can't make the host hold more than one large answer of its in memory; a long-poll
        waits without it."""
        turn = Turn(client.pages)
        try:
            response = await self._respond(client, op, request, turn)
            await client.frames.send(response.to_wire())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            client.scope.cancel()  # the controller is gone: so is this connection
        finally:
            turn.release()
            client.in_flight.release()

    async def _respond(
        self, client: _Client, op: Op[Any], request: Request, turn: Turn
    ) -> Response:
        """Call ``op``'s handler (``HANDLERS``): its result, or the error it raised."""
        assert client.session is not None
        call = Call(client.session, turn, request.id, client)
        try:  # Request.from_wire validated the args and filled in every default
            return Response.success(request.id, await HANDLERS[op](self, call, **request.args))
        except AsyncJobsError as exc:
            return Response(request.id, False, None, error_to_wire(exc))
        except Exception as exc:  # a bug here must not take the host down: report it
            log(f"request {request.op!r} failed: {exc!r}")
            info = ErrorInfo("AsyncJobsError", f"job host error: {exc!r}")
            return Response(request.id, False, None, info)

    # -- the handlers of the ops (``HANDLERS``) ------------------------------------------

    async def ping(self, call: Call) -> str:
        return "pong"

    async def start_command(self, call: Call, **fields: Any) -> HostJobInfo:
        assert self._tg is not None
        return await self.jobs.start(self._tg, call.session.name, **fields)

    async def job(self, call: Call, job: int) -> HostJobInfo:
        return self.jobs.info(self.jobs.row(job))

    async def get(self, call: Call, **filters: Any) -> list[HostJobInfo]:
        await call.turn.acquire()
        return self.jobs.matching(**filters)

    async def wait(
        self, call: Call, jobs: list[int], any: bool, timeout: float | None
    ) -> list[HostJobInfo]:
        return await self.jobs.wait(call.session.name, jobs, any, timeout)

    async def read(self, call: Call, job: int, **fields: Any) -> dict[str, Any]:
        return await read_page(self.jobs, job, turn=call.turn, **fields)

    async def take(
        self, call: Call, job: int, streams: list[str] | None, limit: int | None,
        wait: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        leases = call.session.leases
        return await self.deliveries.take(leases, job, streams, limit, wait, call.turn, call.id)

    async def ack(self, call: Call, lease: int, count: int, release: bool) -> None:
        self.deliveries.ack(call.session.leases, lease, count, release)

    async def stop(self, call: Call, job: int) -> HostJobInfo:
        return await self.jobs.stop(job)

    async def remove(self, call: Call, job: int, force: bool) -> None:
        await self.jobs.remove(job, force)
        self.deliveries.forget(job)

    async def list_sessions(self, call: Call) -> list[SessionInfo]:
        return self.sessions.listed()

    async def disconnect(self, call: Call) -> None:
        """Nothing to do: the connection ends once this is answered (``Op.last``)."""

    async def record_invoke(
        self, call: Call, hosts: list[dict[str, Any]], **fields: Any
    ) -> HostJobInfo:
        return self.store.record_invoke(
            session=call.session.name, instance_id=str(uuid.uuid4()),
            hosts=[ops.InvokeHost(**h) for h in hosts], **fields,
        )  # fmt: skip

    async def invoke_hosts(self, call: Call, job: int | None) -> ops.InvokeRecord | None:
        found = self.store.invoke_hosts(job)
        return None if found is None else ops.InvokeRecord(job=found[0], hosts=found[1])

    # -- warm invokes (``asyncjobs._remote.warm``: asyncssh, loaded on first use) ---------------

    async def _warm_host(self) -> Any:
        """The warm fan-outs and held connections, started on the first warm op. They need
        asyncssh, which this host does not import otherwise (and the bundle remote hosts run
        lacks): loaded by name, from the package this host was started from."""
        if self._warm is None:
            import importlib

            try:
                module = importlib.import_module("asyncjobs._remote.warm")
            except ImportError as exc:
                raise AsyncJobsError(
                    f"this job host can't hold SSH connections ({exc}); it runs from the "
                    "remote bundle: use --no-persist"
                ) from None
            warm = module.WarmHost()
            assert self._tg is not None
            await self._tg.start(warm.run)
            self._warm = warm
        return self._warm

    async def warm_invoke(self, call: Call, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await (await self._warm_host()).invoke(call.owner, **fields)
        return result

    async def warm_events(
        self, call: Call, run: int, wait: float | None, paused: list[int]
    ) -> dict[str, Any]:
        warm = await self._warm_host()
        result: dict[str, Any] = await warm.events(call.owner, run, wait, paused)
        return result

    async def warm_stop(self, call: Call, run: int) -> None:
        await (await self._warm_host()).stop(call.owner, run)

    async def connections(self, call: Call) -> list[dict[str, Any]]:
        return [] if self._warm is None else list(self._warm.connections())

    async def close_session(self, call: Call) -> None:
        if self.store.session(call.session.name) is not None:
            await self._close_session(call.session.name)


#: The handler of every op, by its ``Op`` (``protocol.OPS``).
HANDLERS: Final[Mapping[Op[Any], Handler]] = {
    ops.START_COMMAND: JobHost.start_command,
    ops.GET: JobHost.get,
    ops.JOB: JobHost.job,
    ops.WAIT: JobHost.wait,
    ops.READ: JobHost.read,
    ops.TAKE: JobHost.take,
    ops.ACK: JobHost.ack,
    ops.STOP: JobHost.stop,
    ops.REMOVE: JobHost.remove,
    ops.SESSIONS: JobHost.list_sessions,
    ops.DISCONNECT: JobHost.disconnect,
    ops.CLOSE_SESSION: JobHost.close_session,
    ops.PING: JobHost.ping,
    ops.RECORD_INVOKE: JobHost.record_invoke,
    ops.INVOKE_HOSTS: JobHost.invoke_hosts,
    ops.WARM_INVOKE: JobHost.warm_invoke,
    ops.WARM_EVENTS: JobHost.warm_events,
    ops.WARM_STOP: JobHost.warm_stop,
    ops.CONNECTIONS: JobHost.connections,
}


def _check_handlers() -> None:
    """Every op has a handler, and every handler an op: the table is complete."""
    missing = [op.name for op in ops.OPS if op not in HANDLERS]
    extra = [op.name for op in HANDLERS if op not in ops.OPS]
    if missing or extra:
        raise AssertionError(f"HANDLERS: ops without a handler {missing}, unknown ops {extra}")


_check_handlers()
