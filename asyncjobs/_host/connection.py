r"""One connection to a job host: requests and their answers, the leases of receive-once takes.

``HostConnection`` pipelines requests over one frame stream with no task of its own (whichever
caller finds nobody reading reads the next frame), calls each ``Op`` of ``protocol.OPS`` with a
typed result, and keeps the leases of the ``take``\ s it made: what was handed on is
acknowledged (``ack``) before the next request, and what was not goes back to the host.
``HostStream`` is ``session.jobs.stream()``: a job's records, each acknowledged once handed on.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final, Generic, Protocol, TypeVar, final

import anyio
import attrs

from .._core.errors import AsyncJobsError, ConnectionFailed
from .._core.models import Record
from . import protocol as ops
from .protocol import (
    FrameStream,
    Op,
    Page,
    Request,
    Response,
    Welcome,
    decode_value,
    error_from_wire,
    parse_page,
)

PAGE_RECORDS: Final = 50_000  # records per request when draining
R = TypeVar("R")


@attrs.define(eq=False)
class _Lease:
    """A batch ``take`` handed us: how many of its records went to the caller, and how many
    of those the host knows of (``ack``)."""

    handed: int = 0
    acked: int = 0
    release: bool = False  # nobody hands any more of it out: give the rest back
    last: float = attrs.field(factory=time.monotonic)  # when we last acknowledged

    def due(self) -> bool:
        return self.handed - self.acked >= ACK_EVERY or time.monotonic() - self.last >= ACK_AFTER


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
        self._leases: dict[int, _Lease] = {}  # receive-once batches not acknowledged in full

    async def request(self, op: Op[R], **args: Any) -> R:
        """Call ``op`` on the host; its result made into objects (``Op.parse_result``)."""
        result = await self.result(await self.send(op, **args))
        return op.parse_result(decode_value(result))

    async def connection(self) -> HostConnection:
        return self

    # -- acknowledged receive-once ---------------------------------------------------------

    def hold(self, lease: int) -> _Lease:
        """Track a batch ``take`` handed us; its records count as received only once ``ack``
        tells the host they went to the caller."""
        return self._leases.setdefault(lease, _Lease())

    async def take(self, **args: Any) -> Page:
        """One ``take``: a page whose records are ours until acknowledged. A lease is named
        by the request that took it, so a take whose caller gave up (cancelled) before its
        answer came is given back whole with the next request, in order."""
        request = await self.send(ops.TAKE, **args)
        try:
            page = parse_page(await self.result(request))
        except BaseException:
            self.hold(request).release = True  # if it took anything, it goes back
            raise
        if page.lease is not None:
            self.hold(page.lease)
        return page

    async def ack(self, lease: int, *, release: bool = False) -> None:
        """Tell the host how many of ``lease``'s records were handed on; with ``release``
        the rest go back to the host for the next receiver and the lease ends here. The
        host answers acks in order with the requests around them: no need to wait."""
        held = self._leases.get(lease)
        if held is None:
            return
        held.release = held.release or release
        if held.release:
            del self._leases[lease]
        held.acked, held.last = held.handed, time.monotonic()
        if self._broken is None:
            request_id = await self._send_request(ops.ACK, lease=lease, count=held.handed,
                                                  release=held.release)  # fmt: skip
            self.forget(request_id)

    async def settle(self, *, release: bool = False) -> None:
        """Acknowledge what every lease handed on (and, with ``release``, give back the rest
        of all of them): before any other request, and before leaving the connection."""
        for lease, held in list(self._leases.items()):
            if release or held.release or held.handed > held.acked:
                await self.ack(lease, release=release)

    async def send(self, op: Op[Any], **args: Any) -> int:
        """Send a request; ``result(id)`` waits for its answer (a reader of many pages asks
        for the next one before it decodes the last). Returns the request's id. Records
        handed on but not acknowledged yet are acknowledged first."""
        if self._leases:
            await self.settle()
        return await self._send_request(op, **args)

    async def _send_request(self, op: Op[Any], **args: Any) -> int:
        self._check()
        request_id = self._next_id
        self._next_id += 1
        self._answers[request_id] = None
        try:
            # Whole or not at all: a frame cut short by a cancellation would end the
            # connection (``FrameStream``), and a request frame is small.
            with anyio.CancelScope(shield=True):
                await self._frames.send(Request(request_id, op.name, args).to_wire())
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


#: A stream acknowledges what it handed on after this many records or seconds, so that a
#: controller that is killed leaves at most that much to be delivered again.
ACK_EVERY: Final = 1000
ACK_AFTER: Final = 0.05
#: What a lost connection raises: an acknowledgement that can't be sent is given up (the
#: host gives the lease back when it sees the connection end).
CONNECTION_LOST: Final = (
    ConnectionFailed,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class Requester(Protocol):
    """What leads to a job host's connection: a ``HostConnection``, or the lazy bridge of an
    SSH session (opened on first use)."""

    async def connection(self) -> HostConnection:
        """The connection (calls go through it: ``request``, or ``send`` then ``result``)."""
        ...


T = TypeVar("T")


@final
class HostStream(Generic[T]):
    """``session.jobs.stream()``: an async iterator over a job's records on the host, each
    acknowledged once it is handed to the caller (``stream_records`` says the rules). An
    object, not a generator: leaving a loop early needs no finalizer to give the rest back
    (the next request does), and trio does not warn about one collected half-way."""

    def __init__(self, requester: Requester, job: int, streams: list[str], values: bool) -> None:
        self._requester = requester
        self._job = job
        self._streams = streams
        self._values = values
        self._c: HostConnection | None = None
        self._page: list[Record] = []
        self._next = 0
        self._lease: int | None = None
        self._held: _Lease | None = None
        self._finished = False

    def __aiter__(self) -> HostStream[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            held = self._held
            if self._next < len(self._page):
                assert self._c is not None
                if held is not None:
                    if held.due():  # what was handed before this record
                        await self._c.ack(self._lease)  # type: ignore[arg-type]
                    held.handed += 1  # the caller's from here on: nothing awaits below
                record = self._page[self._next]
                self._next += 1
                return record.value if self._values else record  # type: ignore[return-value]
            await self._end_page()
            if self._finished:
                raise StopAsyncIteration
            if self._c is None:
                self._c = await self._requester.connection()
            page = await self._c.take(
                job=self._job, streams=self._streams, limit=PAGE_RECORDS, wait=30.0
            )
            self._page, self._next = page.records, 0
            if page.lease is not None:
                self._lease, self._held = page.lease, self._c.hold(page.lease)
            if not self._page and page.job.state.is_finished:
                self._finished = True

    async def _end_page(self) -> None:
        """Acknowledge what was handed of the page; give the rest back."""
        lease, self._lease, self._held = self._lease, None, None
        self._page, self._next = [], 0
        if lease is not None and self._c is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*CONNECTION_LOST):
                with anyio.move_on_after(5):
                    await self._c.ack(lease, release=True)

    async def aclose(self) -> None:
        """Stop here: what was not handed on goes back to the host now."""
        self._finished = True
        await self._end_page()

    def __del__(self) -> None:
        # Left half-way (a ``break``): the connection gives the rest back with its next
        # request, or when it ends. Plain bookkeeping: nothing may be awaited here.
        if self._held is not None:
            self._held.release = True
