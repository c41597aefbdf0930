"""The controller side of the job host: ``connect_local()``, ``get_local_sessions()`` and
``session.jobs``, the ``JobManager`` API over the wire.

Jobs started through ``session.jobs`` run on the job host and keep their records there, also
while no controller is connected; what this side holds are snapshots (``HostJobInfo``) and the
records it reads. Reads go by position (``read(job, from_seq)``) or through the host's
receive-once cursors (``receive``), so two controllers can follow one job without stealing
each other's output, and a controller that reconnects goes on from the last seq it holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, final

import anyio
import anyio.abc

from .._core import checks
from .._core.errors import (
    AsyncJobsError,
    CommandFailed,
    JobArgumentError,
    JobFailed,
    JobStateError,
    JobStopped,
)
from .._core.models import STREAMS, Record, StreamName
from .._core.state import JobState, state_named
from .._core.util import Opener
from .._version import __version__
from . import protocol as ops
from .connection import CONNECTION_LOST, PAGE_RECORDS, HostStream, R, Requester
from .connection import HostConnection as HostConnection
from .directory import connect_socket, host_dir
from .protocol import (
    PROTOCOL_VERSION,
    FrameStream,
    Hello,
    Op,
    Page,
    Response,
    SessionInfo,
    Welcome,
    check_version,
    decode_message,
    error_from_wire,
    parse_page,
    peek_page,
)
from .records import HostJobInfo as HostJobInfo

Buffering = Literal["block", "drop"]


JobRef = HostJobInfo | int


def _job_id(job: JobRef) -> int:
    """A job argument as the request carries it; a bad one raises ``JobArgumentError`` here,
    before anything is sent (the host would refuse it)."""
    return job.id if isinstance(job, HostJobInfo) else checks.job_id(job)


def _streams(streams: Iterable[StreamName] | None) -> list[str] | None:
    """``streams=`` checked as ``JobManager`` checks it; ``None``: all of them."""
    return checks.stream_names(streams)


def _input(value: object) -> bytes | None:
    """``input=`` as ``start_command`` takes it, made bytes to send (a list of lines too)."""
    data = checks.input(value)
    if data is not None and not isinstance(data, bytes):
        raise JobArgumentError(
            f"input for a job host must be bytes, str or a list of lines, got "
            f"{type(value).__name__}: {value!r}; a lazy iterable can't be sent: make it a list"
        )
    return data


@final
class HostJobs:
    """``session.jobs``: the job table of a job host (Start-Job, Get-Job, Receive-Job, ...)."""

    def __init__(self, connection: Requester) -> None:
        self._c = connection

    async def _call(self, op: Op[R], **args: Any) -> R:
        """Call ``op`` on the host (over the connection, opened first if need be)."""
        return await (await self._c.connection()).request(op, **args)

    async def start_command(
        self,
        command: str | Sequence[str],
        /,
        *,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        input: str | bytes | Sequence[str | bytes] | None = None,
    ) -> HostJobInfo:
        """Start a command on the job host; its records stay there until received.

        The arguments are checked here as ``JobManager.start_command`` checks them (a bad
        one raises ``JobArgumentError`` and nothing is sent); whether ``cwd`` exists is for
        the host to say. ``input`` is ``bytes``, a ``str`` or a list of lines."""
        argv, _ = checks.command(command)
        cmd: str | list[str] = command if isinstance(command, str) else list(argv)
        name, where, added = checks.name(name), checks.cwd(cwd), checks.env(env)
        info: HostJobInfo = await self._call(
            ops.START_COMMAND, command=cmd, name=name, cwd=where, env=added, input=_input(input)
        )
        return info

    async def get(
        self, *, name: str | None = None, state: JobState | str | None = None,
        kind: str | None = None,
    ) -> list[HostJobInfo]:  # fmt: skip
        """The host's jobs (every session's), filtered like ``JobManager.get``; ``kind``:
        only those of this kind (``RemoteJob``: the recorded invokes)."""
        checks.name(name)
        if isinstance(state, str):
            state = state_named(state)
        wanted = state.value if state is not None else None
        infos: list[HostJobInfo] = await self._call(ops.GET, name=name, state=wanted, kind=kind)
        return infos

    async def record_invoke(
        self, command: str, location: str, state: JobState, hosts: Sequence[ops.InvokeHost], *,
        exit_status: int | None, started_at: float, finished_at: float,
    ) -> HostJobInfo:  # fmt: skip
        """Record an invoke that ran elsewhere (``asyncjobs invoke``): its hosts and how each
        ended, as a finished ``RemoteJob`` of this session; ``invoke_hosts`` reads it back."""
        info: HostJobInfo = await self._call(
            ops.RECORD_INVOKE, command=command, location=location, state=state.value,
            exit_status=exit_status, started_at=started_at, finished_at=finished_at,
            hosts=[h.to_wire() for h in hosts],
        )  # fmt: skip
        return info

    async def warm_invoke(self, **fields: Any) -> dict[str, Any]:
        """Start a fan-out on the connections this (local) job host holds (``_remote.warm``);
        its run id and locations. It belongs to this connection: it stops when that ends."""
        found: dict[str, Any] = await self._call(ops.WARM_INVOKE, **fields)
        return found

    async def warm_events(
        self, run: int, wait: float | None = None, paused: Sequence[int] = ()
    ) -> dict[str, Any]:
        """A warm run's events since the last call (long-polling ``wait`` s for one), none of
        the ``paused`` children's (their buffers here are full)."""
        found: dict[str, Any] = await self._call(
            ops.WARM_EVENTS, run=run, wait=wait, paused=list(paused)
        )
        return found

    async def warm_stop(self, run: int) -> None:
        await self._call(ops.WARM_STOP, run=run)

    async def connections(self) -> list[dict[str, Any]]:
        """The SSH connections the job host holds for warm invokes (``--persist``)."""
        found: list[dict[str, Any]] = await self._call(ops.CONNECTIONS)
        return found

    async def invoke_hosts(self, job: int | None = None) -> ops.InvokeRecord | None:
        """The hosts of recorded invoke ``job`` (None: the last one), or None if none is."""
        found: ops.InvokeRecord | None = await self._call(ops.INVOKE_HOSTS, job=job)
        return found

    async def job(self, job: JobRef) -> HostJobInfo:
        """A fresh snapshot of one job."""
        return await self._call(ops.JOB, job=_job_id(job))

    async def wait(
        self, *jobs: JobRef, any: bool = False, timeout: float | None = None
    ) -> list[HostJobInfo]:
        """Wait-Job on the host: the given jobs (default: this session's) that are finished
        when it returns; at ``timeout`` what is finished so far (``None`` or ``math.inf``: no
        limit; negative or NaN: ``JobArgumentError``, as ``JobManager.wait``)."""
        ids = [_job_id(j) for j in jobs]
        seconds = checks.timeout(timeout)
        infos: list[HostJobInfo] = await self._call(
            ops.WAIT, jobs=ids, any=bool(any), timeout=seconds
        )
        return infos

    async def read(
        self,
        job: JobRef,
        from_seq: int = 0,
        *,
        streams: Iterable[StreamName] | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Records from ``from_seq`` on, received or not; moves nothing (keep)."""
        args = {"job": _job_id(job), "streams": _streams(streams)}
        return await self._pages(args, checks.from_seq(from_seq), checks.limit(limit))

    async def read_page(
        self, job: JobRef, from_seq: int = 0, *, limit: int | None = None, wait: float | None = None
    ) -> Page:
        """One page of ``read``: records from ``from_seq`` on (at most ``limit``, maybe fewer),
        the ``next_seq`` to read on from and the job now; moves nothing. ``wait``: seconds to
        wait for a first record (a long poll). A follower that mirrors a job pages with it."""
        c = await self._c.connection()
        request = await c.send(
            ops.READ, job=_job_id(job), from_seq=checks.from_seq(from_seq),
            limit=checks.limit(limit), wait=checks.timeout(wait),
        )  # fmt: skip
        return parse_page(await c.result(request))

    async def _pages(self, args: dict[str, Any], seq: int, limit: int | None) -> list[Record]:
        """Every record ``read`` gives from ``seq`` on (at most ``limit``), page by page, the
        next page asked for before this one is decoded, so that the host reads it meanwhile.

        A page may come back short (the host cuts pages to fit a frame): only an empty one,
        or reaching the job's ``next_seq`` at the first answer (what existed when we began:
        a busy job can't keep us), means there is no more."""
        c = await self._c.connection()

        def ask(seq: int, have: int) -> Awaitable[int]:
            page = PAGE_RECORDS if limit is None else min(PAGE_RECORDS, limit - have)
            return c.send(ops.READ, from_seq=seq, limit=page, **args)

        records: list[Record] = []
        end: int | None = None
        pending: int | None = await ask(seq, 0)
        try:
            while pending is not None:
                raw = await c.result(pending)
                pending = None
                count, seq, job_seq = peek_page(raw)
                end = job_seq if end is None else end
                have = len(records) + count
                if count and seq < end and (limit is None or have < limit):
                    pending = await ask(seq, have)
                records.extend(parse_page(raw).records)
        finally:
            if pending is not None:
                c.forget(pending)
        return records

    async def receive_records(
        self, job: JobRef, *, keep: bool = False, streams: Iterable[StreamName] | None = None
    ) -> list[Record]:
        """The records not yet received, in the order produced (receive-once, global to the
        host as in PowerShell; ``keep=True`` leaves them for the next receiver). They count
        as received when this returns them: cancelled or failed midway, it gives them back."""
        chosen = _streams(streams) or list(STREAMS)
        if keep:  # nothing is consumed: pages can be asked for ahead
            args = {"job": _job_id(job), "streams": chosen, "unreceived": True}
            return await self._pages(args, 0, None)
        c = await self._c.connection()
        records: list[Record] = []
        leases: list[tuple[int, int]] = []  # (lease, its count)
        end: int | None = None
        try:
            while True:
                batch = await c.take(job=_job_id(job), streams=chosen, limit=PAGE_RECORDS)
                got = batch.records
                if batch.lease is not None:
                    leases.append((batch.lease, len(got)))
                records.extend(got)
                end = batch.job.next_seq if end is None else end
                # Done at an empty page (pages may be cut short to fit a frame) or once past
                # what existed at the first answer: "produced so far", even while it produces.
                if not got or batch.next_seq >= end:
                    break
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for lease, _ in leases:  # nobody got them: they go back
                    with contextlib.suppress(*CONNECTION_LOST):
                        await c.ack(lease, release=True)
            raise
        for lease, count in leases:  # handed over now
            c.hold(lease).handed = count
            with contextlib.suppress(*CONNECTION_LOST):
                await c.ack(lease, release=True)
        return records

    async def receive(self, job: JobRef, *, keep: bool = False) -> list[Any]:
        """Receive-Job: the output items not yet received."""
        return [r.value for r in await self.receive_records(job, keep=keep, streams=("output",))]

    def stream_records(
        self, job: JobRef, *, streams: Iterable[StreamName] | None = ("output",)
    ) -> HostStream[Record]:
        """Receive-Job -Wait: records as the host stores them, until the job is finished and
        drained (receive-once, a page at a time, long-polling while the job runs).

        A record counts as received once it is handed to your loop: breaking out, being
        cancelled or failing gives the rest back to the host (with this connection's next
        request, or when it ends; ``aclose()`` gives it back at once). Acknowledgements go
        to the host every ``ACK_EVERY`` records or ``ACK_AFTER`` seconds, so a controller
        that is killed leaves at most its last unacknowledged records to be delivered again."""
        return HostStream(self._c, _job_id(job), _streams(streams) or list(STREAMS), False)

    def stream(
        self, job: JobRef, *, streams: Iterable[StreamName] | None = ("output",)
    ) -> HostStream[Any]:
        """Like ``stream_records`` but yields the values."""
        return HostStream(self._c, _job_id(job), _streams(streams) or list(STREAMS), True)

    async def stop(self, job: JobRef) -> HostJobInfo:
        """Stop-Job on the host; returns the job once it is finished."""
        return await self._call(ops.STOP, job=_job_id(job))

    async def remove(self, job: JobRef, *, force: bool = False) -> None:
        """Remove-Job on the host: the job and its records are gone."""
        await self._call(ops.REMOVE, job=_job_id(job), force=bool(force))


@final
class HostSession:
    """A session on a job host (the local one from ``connect_local``): ``jobs`` runs there;
    ``disconnect()`` (also leaving ``async with``) leaves it and its jobs running, and
    ``connect_local(name=...)`` from any process reattaches."""

    def __init__(self, connection: HostConnection, location: str) -> None:
        self._c = connection
        self.name = connection.welcome.session
        self.location = location
        self.jobs = HostJobs(connection)
        self._closed = False

    async def invoke(
        self, command: str | Sequence[str], *, timeout: float | None = None
    ) -> list[Any]:
        """Run a command on the host, wait, return its output; ``JobFailed`` if it failed."""
        job = await self.jobs.start_command(command)
        done = await self.jobs.wait(job, timeout=timeout)
        if not done:
            await self.jobs.stop(job)
        info = await self.jobs.job(job)
        output = await self.jobs.receive(job)
        await self.jobs.remove(job, force=True)
        if info.state is JobState.FAILED:
            reason = CommandFailed(info.reason or "failed", exit_status=info.exit_status)
            raise JobFailed(f"job {info.id} ({info.name!r}) failed: {info.reason}", reason=reason)
        if info.state is JobState.STOPPED:
            raise JobStopped(f"job {info.id} ({info.name!r}) was stopped after {timeout} s")
        return output

    async def sessions(self) -> list[SessionInfo]:
        """The sessions of this job host."""
        sessions: list[SessionInfo] = await self._c.request(ops.SESSIONS)
        return sessions

    async def disconnect(self) -> None:
        """Leave the session and its jobs running on the host (Disconnect-PSSession)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(5):
                    await self._c.settle(release=True)  # nothing held is lost or repeated
                    await self._c.request(ops.DISCONNECT)
            except AsyncJobsError:
                pass
            await self._c.aclose()

    close = disconnect

    async def remove(self) -> None:
        """Remove-PSSession: close this session on the host, its running jobs stopped (this
        waits until they are), then leave as ``disconnect()`` does. It is no longer listed by
        ``sessions()`` and its name is free for a new session; its jobs stay in the host's
        table, finished, their records kept until they are removed. An observer
        (``connect_local()`` without a name) has no session to remove: ``JobStateError``."""
        if self._closed:
            raise JobStateError(f"session {self.name!r} is disconnected: reattach to remove it")
        if not self.name:
            raise JobStateError(
                "an observer has no session to remove: connect with name= the session's name"
            )
        await self._c.request(ops.CLOSE_SESSION)
        await self.disconnect()

    async def __aenter__(self) -> HostSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        state = "disconnected" if self._closed else "open"
        return f"<asyncjobs.HostSession {self.name!r} {self.location} {state}>"


def connection_of(session: HostSession) -> HostConnection:
    """The connection ``session`` talks through (the remote glue's bridge hands it to
    ``session.jobs`` of an SSH ``Session``); not a public attribute of ``HostSession``."""
    return session._c


async def open_host_session(
    stream: anyio.abc.ByteStream,
    *,
    name: str | None,
    create: bool,
    location: str,
    idle_timeout: float | None = None,
    output_buffering: Buffering | None = None,
) -> HostSession:
    """Say hello on ``stream``; the session owns the stream and its response reader."""
    frames = FrameStream(stream)
    hello = Hello(
        PROTOCOL_VERSION, f"asyncjobs {__version__}", name, create, idle_timeout, output_buffering
    )
    await frames.send(hello.to_wire())
    reply = decode_message(await frames.receive())
    if isinstance(reply, Response) and reply.error is not None:  # the host refused the hello
        await frames.aclose()
        raise error_from_wire(reply.error)
    if not isinstance(reply, Welcome):
        await frames.aclose()
        raise AsyncJobsError(f"the job host answered the hello with {type(reply).__name__}")
    check_version(reply.version, "job host")
    return HostSession(HostConnection(frames, reply), location)


async def _open_local(
    name: str | None,
    directory: Path | None,
    idle_timeout: float | None,
    output_buffering: Buffering | None,
    create: bool,
) -> HostSession:
    # A host that is dying (killed) or still starting can reset a fresh connection:
    # try again a few times, each through connect_socket (which starts a host if needed).
    for attempt in range(5):
        stream = await connect_socket(directory or host_dir())
        try:
            return await open_host_session(
                stream,
                name=name,
                create=create,
                location="localhost",
                idle_timeout=idle_timeout,
                output_buffering=output_buffering,
            )
        except (anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError):
            await stream.aclose()
            if attempt == 4:
                raise
            await anyio.sleep(0.1 * (attempt + 1))
        except BaseException:
            await stream.aclose()
            raise
    raise AssertionError("unreachable")


def connect_local(
    name: str | None = None,
    *,
    idle_timeout: float | None = None,
    output_buffering: Buffering | None = None,
    create: bool = True,
    directory: Path | None = None,
) -> Opener[HostSession]:
    """A session on this machine's job host (started on first use, detached from the caller).

    Jobs started through ``session.jobs`` outlive this process; ``connect_local(name=...)``
    from any process of this user reattaches to a named session. A new name creates the
    session, unless ``create=False``: then an unknown name is an error listing the sessions.
    ``idle_timeout`` (seconds a disconnected session waits before its jobs are stopped) and
    ``output_buffering`` (``"block"`` or ``"drop"`` while disconnected) apply to a new session.
    """
    checks.session_options(name, idle_timeout, output_buffering, create, observer=True)
    return Opener(
        lambda: _open_local(name, directory, idle_timeout, output_buffering, create),
        HostSession.disconnect,
    )


async def get_local_sessions(directory: Path | None = None) -> list[SessionInfo]:
    """The sessions of this machine's job host (none if no host runs)."""
    try:
        stream = await connect_socket(directory or host_dir(), start=False)
    except AsyncJobsError:
        return []
    session = await open_host_session(stream, name=None, create=False, location="localhost")
    try:
        return await session.sessions()
    finally:
        await session.disconnect()
