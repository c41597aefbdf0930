"""The controller side of the job host: ``connect_local()``, ``get_sessions(None)`` and
``session.jobs``, the ``JobManager`` API over the wire.

Jobs started through ``session.jobs`` run on the job host and keep their records there, also
while no controller is connected; what this side holds are snapshots (``HostJobInfo``) and the
records it reads. Reads go by position (``read(job, from_seq)``) or through the host's
receive-once cursors (``receive``), so two controllers can follow one job without stealing
each other's output, and a controller that reconnects goes on from the last seq it holds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, final

import anyio
import anyio.abc
import attrs

from . import __version__
from . import _checks as checks
from ._errors import (
    AsyncJobsError,
    CommandFailed,
    ConnectionFailed,
    JobArgumentError,
    JobFailed,
    JobStopped,
)
from ._hostdir import connect_socket, host_dir
from ._models import STREAMS, Record, StreamName
from ._protocol import (
    PROTOCOL_VERSION,
    Batch,
    FrameStream,
    Hello,
    JobInfo,
    Request,
    Response,
    SessionInfo,
    Welcome,
    check_version,
    decode_message,
    decode_value,
    error_from_wire,
    parse_page,
    parse_result,
    peek_page,
)
from ._state import JobState, state_named
from ._util import Opener

_PAGE: Final = 50_000  # records per request when draining
Buffering = Literal["block", "drop"]


@attrs.frozen
class HostJobInfo:
    """A snapshot of a job on a job host, as ``session.jobs`` returns it."""

    id: int
    name: str
    kind: str
    command: str
    location: str
    session: str | None
    state: JobState
    has_more_data: bool
    reason: str | None
    exit_status: int | None
    started_at: float | None
    finished_at: float | None
    next_seq: int
    dropped: int
    instance_id: str

    @classmethod
    def from_info(cls, info: JobInfo) -> HostJobInfo:
        return cls(
            id=info.id,
            name=info.name,
            kind=info.kind,
            command=info.command,
            location=info.location,
            session=info.session,
            state=info.state,
            has_more_data=info.has_more_data,
            reason=info.reason,
            exit_status=info.exit_status,
            started_at=info.started_at,
            finished_at=info.finished_at,
            next_seq=info.next_seq,
            dropped=info.dropped,
            instance_id=info.instance_id,
        )


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
class HostConnection:
    """Requests and responses over one frame stream, with no task of its own: whichever caller
    finds nobody reading reads the next frame and hands it to the request it answers, so a
    long-poll read and other calls can be in flight together and nothing outlives the caller."""

    def __init__(self, frames: FrameStream, welcome: Welcome) -> None:
        self._frames = frames
        self.welcome = welcome
        self._next_id = 1
        self._answers: dict[int, Response | None] = {}
        self._reading = False
        self._read_one = anyio.Event()
        self._broken: BaseException | None = None

    async def request(self, op: str, **args: Any) -> Any:
        """Call ``op`` on the host; its result made into objects (``parse_result``)."""
        result = await self.result(await self.send(op, **args))
        return parse_result(op, decode_value(result))

    async def connection(self) -> HostConnection:
        return self

    async def send(self, op: str, **args: Any) -> int:
        """Send a request; ``result(id)`` waits for its answer (a reader of many pages asks
        for the next one before it decodes the last). Returns the request's id."""
        self._check()
        request_id = self._next_id
        self._next_id += 1
        self._answers[request_id] = None
        try:
            await self._frames.send(Request(request_id, op, args).to_wire())
        except BaseException as exc:
            self._answers.pop(request_id, None)
            if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError | OSError):
                self._broken = exc
                self._check()
            raise
        return request_id

    async def result(self, request_id: int) -> Any:
        """The answer to request ``request_id``, as JSON gave it (values not decoded); a
        failed request raises its error."""
        try:
            response = await self._answer(request_id)
        finally:
            self._answers.pop(request_id, None)
        if not response.ok:
            assert response.error is not None
            raise error_from_wire(response.error)
        return response.result

    def forget(self, request_id: int) -> None:
        """Drop the answer of a request nobody will wait for (it is discarded on arrival)."""
        self._answers.pop(request_id, None)

    async def _answer(self, request_id: int) -> Response:
        while (response := self._answers.get(request_id)) is None:
            self._check()
            if self._reading:  # another caller reads: wait for it to hand over a frame
                await self._read_one.wait()
                continue
            self._reading = True
            try:
                frame = await self._frames.receive()
                got = Response.from_wire_raw(frame)
                if got.id in self._answers:
                    self._answers[got.id] = got
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                self._broken = exc
            except (AsyncJobsError, OSError) as exc:
                self._broken = exc
            finally:
                self._reading = False
                done, self._read_one = self._read_one, anyio.Event()
                done.set()
        return response

    def _check(self) -> None:
        if self._broken is not None:
            raise ConnectionFailed(
                f"the connection to the job host is lost ({self._broken!r}); reconnect"
            )

    async def aclose(self) -> None:
        await self._frames.aclose()


class Requester(Protocol):
    """Something that calls an op on a job host: a ``HostConnection``, or the lazy bridge of
    an SSH session."""

    async def request(self, op: str, **args: Any) -> Any: ...

    async def connection(self) -> HostConnection:
        """The connection itself, for pipelined requests (``send``, then ``result``)."""
        ...


@final
class HostJobs:
    """``session.jobs``: the job table of a job host (Start-Job, Get-Job, Receive-Job, ...)."""

    def __init__(self, connection: Requester) -> None:
        self._c = connection

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
        info: JobInfo = await self._c.request(
            "start_command", command=cmd, name=name, cwd=where, env=added, input=_input(input)
        )
        return HostJobInfo.from_info(info)

    async def get(
        self, *, name: str | None = None, state: JobState | str | None = None
    ) -> list[HostJobInfo]:
        """The host's jobs (every session's), filtered like ``JobManager.get``."""
        checks.name(name)
        if isinstance(state, str):
            state = state_named(state)
        wanted = state.value if state is not None else None
        infos: list[JobInfo] = await self._c.request("get", name=name, state=wanted)
        return [HostJobInfo.from_info(i) for i in infos]

    async def job(self, job: JobRef) -> HostJobInfo:
        """A fresh snapshot of one job."""
        return HostJobInfo.from_info(await self._c.request("job", job=_job_id(job)))

    async def wait(
        self, *jobs: JobRef, any: bool = False, timeout: float | None = None
    ) -> list[HostJobInfo]:
        """Wait-Job on the host: the given jobs (default: this session's) that are finished
        when it returns; at ``timeout`` what is finished so far (``None`` or ``math.inf``: no
        limit; negative or NaN: ``JobArgumentError``, as ``JobManager.wait``)."""
        ids = [_job_id(j) for j in jobs]
        seconds = checks.timeout(timeout)
        infos: list[JobInfo] = await self._c.request(
            "wait", jobs=ids, any=bool(any), timeout=seconds
        )
        return [HostJobInfo.from_info(i) for i in infos]

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

    async def _pages(self, args: dict[str, Any], seq: int, limit: int | None) -> list[Record]:
        """Every record ``read`` gives from ``seq`` on (at most ``limit``), page by page, the
        next page asked for before this one is decoded, so that the host reads it meanwhile.

        A page may come back short (the host cuts pages to fit a frame): only an empty one,
        or reaching the job's ``next_seq`` at the first answer (what existed when we began:
        a busy job can't keep us), means there is no more."""
        c = await self._c.connection()

        def ask(seq: int, have: int) -> Awaitable[int]:
            page = _PAGE if limit is None else min(_PAGE, limit - have)
            return c.send("read", from_seq=seq, limit=page, **args)

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
        host as in PowerShell; ``keep=True`` leaves them for the next receiver)."""
        chosen = _streams(streams) or list(STREAMS)
        if keep:  # nothing is consumed: pages can be asked for ahead
            args = {"job": _job_id(job), "streams": chosen, "unreceived": True}
            return await self._pages(args, 0, None)
        records: list[Record] = []
        seq = 0
        end: int | None = None
        while True:
            batch: Batch = await self._c.request(
                "take", job=_job_id(job), streams=chosen, limit=_PAGE
            )
            got = batch.to_records(batch.job.location)
            records.extend(got)
            end = batch.job.next_seq if end is None else end
            seq = batch.next_seq
            # Done at an empty page (pages may be cut short to fit a frame) or once past what
            # existed at the first answer: "produced so far", even while the job produces.
            if not got or seq >= end:
                return records

    async def receive(self, job: JobRef, *, keep: bool = False) -> list[Any]:
        """Receive-Job: the output items not yet received."""
        return [r.value for r in await self.receive_records(job, keep=keep, streams=("output",))]

    async def stream_records(
        self, job: JobRef, *, streams: Iterable[StreamName] | None = ("output",)
    ) -> AsyncIterator[Record]:
        """Receive-Job -Wait: records as the host stores them, until the job is finished and
        drained (receive-once, a page at a time, long-polling while the job runs)."""
        chosen = _streams(streams) or list(STREAMS)
        job_id = _job_id(job)
        while True:
            batch: Batch = await self._c.request(
                "take", job=job_id, streams=chosen, limit=_PAGE, wait=30.0
            )
            got = batch.to_records(batch.job.location)
            for record in got:
                yield record
            if not got and batch.job.state.is_finished:
                return

    async def stream(
        self, job: JobRef, *, streams: Iterable[StreamName] | None = ("output",)
    ) -> AsyncIterator[Any]:
        """Like ``stream_records`` but yields the values."""
        async for record in self.stream_records(job, streams=streams):
            yield record.value

    async def stop(self, job: JobRef) -> HostJobInfo:
        """Stop-Job on the host; returns the job once it is finished."""
        return HostJobInfo.from_info(await self._c.request("stop", job=_job_id(job)))

    async def remove(self, job: JobRef, *, force: bool = False) -> None:
        """Remove-Job on the host: the job and its records are gone."""
        await self._c.request("remove", job=_job_id(job), force=bool(force))


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
        sessions: list[SessionInfo] = await self._c.request("sessions")
        return sessions

    async def disconnect(self) -> None:
        """Leave the session and its jobs running on the host (Disconnect-PSSession)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(5):
                    await self._c.request("disconnect")
            except AsyncJobsError:
                pass
            await self._c.aclose()

    close = disconnect

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


async def get_sessions(
    host: str | None = None, port: int = 22, username: str | None = None, **ssh_options: Any
) -> list[SessionInfo]:
    """Get-PSSession: the sessions on a host's job host (over SSH, with ``ssh_options`` as
    for ``connect``); ``None``: this machine's job host."""
    if host is None:
        return await get_local_sessions()
    import attrs as _attrs

    from ._remotehost import remote_sessions
    from ._targets import Target

    target = Target.parse(host)
    if port != 22 and target.port is None:
        target = _attrs.evolve(target, port=port)
    if username is not None:
        target = _attrs.evolve(target, username=username)
    return await remote_sessions(target, ssh_options)
