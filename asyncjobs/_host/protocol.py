"""The messages between a controller and the job host, each field checked on receipt.

A connection is a ``FrameStream`` (``wire``). The controller's first frame is a ``Hello``; the
host answers with a ``Welcome``, or refuses (wrong version, unknown session) with a failed
``Response`` of id 0 and closes. Then the controller sends ``Request`` frames and the host
answers each with the ``Response`` of the same id, in any order (a long-polling ``read`` does
not hold up a ``ping``). A frame's ``"t"`` says what it is: ``"hello"``, ``"welcome"``,
``"request"``, ``"response"``. The ``"t"`` and ``"version"`` of hello and welcome and the shape
of a failed response will never change, so a version mismatch is always reported as one.

``from_wire`` checks every field (type, range, allowed strings; unknown fields are refused) and
raises ``ProtocolError`` naming the message, the field, the rule and the value. Arguments,
results and record values go through ``encode_value``/``decode_value``, so ``bytes`` survive.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, Self

import attrs

from .._core.errors import (
    AsyncJobsError,
    CommandFailed,
    JobArgumentError,
    JobFailed,
    JobStateError,
    JobStopped,
    NoSuchJob,
    ProtocolError,
)
from .._core.models import STREAMS, Record
from .._core.state import JobState
from . import operation
from .operation import Op as Op
from .operation import anything_at_all, many, none
from .records import KINDS as KINDS
from .records import HostJobInfo as HostJobInfo
from .records import InvokeHost as InvokeHost
from .transport import FrameStream as FrameStream
from .wire import MAX_FRAME as MAX_FRAME
from .wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from .wire import (
    REQUIRED,
    Bad,
    Spec,
    anything,
    boolean,
    integer,
    list_of,
    name,
    number,
    obj,
    of_type,
    one_of,
    optional,
    read_fields,
    record_rows,
    show,
    text,
)
from .wire import FrameDecoder as FrameDecoder
from .wire import RecordLike as RecordLike
from .wire import Shape as _Shape
from .wire import WireRecord as WireRecord
from .wire import decode_records as decode_records
from .wire import decode_value as decode_value
from .wire import encode_frame as encode_frame
from .wire import encode_records as encode_records
from .wire import encode_value as encode_value
from .wire import encoded_rows as encoded_rows
from .wire import raw_records as raw_records

_MAX_ID: Final = 2**63 - 1
_JOB: Final = integer(1)
_SECONDS: Final = optional(number(0))


# -- shapes: frozen classes that cross the wire as objects checked against their SPEC ---------


# Each is a ``wire.Shape``: ``to_wire`` / ``from_wire``, every field checked on receipt.


def check_version(theirs: int, who: Literal["controller", "job host"]) -> None:
    """Refuse a peer (``who``) that speaks another protocol version, naming both."""
    if theirs == PROTOCOL_VERSION:
        return
    me = "job host" if who == "controller" else "controller"
    older = who if theirs < PROTOCOL_VERSION else me
    raise ProtocolError(
        f"protocol version mismatch: {who} speaks {theirs}, {me} speaks {PROTOCOL_VERSION}; "
        f"upgrade asyncjobs on the {older} so that both speak the same version"
    )


def _check_version_first(what: str, data: Any, who: Literal["controller", "job host"]) -> None:
    """Before anything else: a newer peer's other fields may differ."""
    if type(data) is dict:
        data = {k: v for k, v in data.items() if k == "version"}
    check_version(read_fields(what, data, {"version": (integer(0), REQUIRED)})["version"], who)


@attrs.frozen
class Hello(_Shape):
    """Controller → host, the first frame: who it is, and which session to open or create."""

    TAG: ClassVar[str | None] = "hello"
    SPEC: ClassVar[Spec] = {
        "version": (integer(0), REQUIRED),
        "client": (text, REQUIRED),  # who connects, for the host's log: "user@machine pid 7"
        "session": (optional(name), REQUIRED),  # None: a new session with a generated name
        "create": (boolean, REQUIRED),  # create the named session if it does not exist
        "idle_timeout": (_SECONDS, REQUIRED),
        "output_buffering": (optional(one_of("block", "drop")), REQUIRED),
    }
    version: int
    client: str
    session: str | None = None
    create: bool = False
    idle_timeout: float | None = None
    output_buffering: Literal["block", "drop"] | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        _check_version_first("Hello", data, "controller")
        return super().from_wire(data)


@attrs.frozen
class Welcome(_Shape):
    """Host → controller: the session this connection is attached to, and all sessions."""

    TAG: ClassVar[str | None] = "welcome"
    SPEC: ClassVar[Spec] = {
        "version": (integer(0), REQUIRED),
        "host": (text, REQUIRED),  # the host's name, for messages
        "session": (name, REQUIRED),
        "sessions": (list_of(name), REQUIRED),
    }
    version: int
    host: str
    session: str
    sessions: list[str] = attrs.field(factory=list)

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        _check_version_first("Welcome", data, "job host")
        return super().from_wire(data)


@attrs.frozen
class Request(_Shape):
    """Controller → host: call ``op`` (the name of one of ``OPS``) with ``args`` (its
    fields); ids start at 1 (0 is the hello's), and the ``Response`` of the same id answers."""

    TAG: ClassVar[str | None] = "request"
    SPEC: ClassVar[Spec] = {
        "id": (integer(1, _MAX_ID), REQUIRED),
        "op": (lambda v: one_of(*OP_NAMED)(v), REQUIRED),  # OPS is declared below
        "args": (obj, REQUIRED),
    }
    id: int
    op: str
    args: dict[str, Any] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "id": self.id, "op": self.op, "args": encode_value(self.args)}

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        request = super().from_wire(data)
        args = validate_args(request.op, decode_value(request.args))
        return attrs.evolve(request, args=args)


def _class_name(v: Any) -> str:
    if type(v) is not str or not v.isidentifier() or len(v) > 100:
        raise Bad("must be a class name", v)
    return v


@attrs.frozen
class ErrorInfo(_Shape):
    """Why a request failed: the exception's class name and its message."""

    SPEC: ClassVar[Spec] = {"type": (_class_name, REQUIRED), "message": (text, REQUIRED)}
    type: str
    message: str


@attrs.frozen
class Response(_Shape):
    """Host → controller: the answer to the request of the same ``id``: ``ok`` and a
    ``result``, or not ``ok`` and an ``error``. Id 0 refuses a ``Hello``."""

    TAG: ClassVar[str | None] = "response"
    SPEC: ClassVar[Spec] = {
        "id": (integer(0, _MAX_ID), REQUIRED),
        "ok": (boolean, REQUIRED),
        "result": (anything, REQUIRED),
        "error": (optional(ErrorInfo.from_wire), REQUIRED),
    }
    id: int
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None

    @classmethod
    def success(cls, id: int, result: Any = None) -> Self:
        return cls(id=id, ok=True, result=result)

    @classmethod
    def failure(cls, id: int, exc: BaseException) -> Self:
        return cls(id=id, ok=False, error=error_to_wire(exc))

    def unwrap(self) -> Any:
        """The result, or the error raised as ours (see ``error_from_wire``)."""
        if self.error is not None:
            raise error_from_wire(self.error)
        return self.result

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["result"] = encode_value(wire["result"])
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        response = cls.from_wire_raw(data)
        return attrs.evolve(response, result=decode_value(response.result))

    @classmethod
    def from_wire_raw(cls, data: Any) -> Self:
        """``from_wire`` that leaves ``result`` as JSON gave it: ``parse_page`` decodes a
        page's values while it makes its records, in one pass instead of two."""
        response = super().from_wire(data)
        if response.ok != (response.error is None):
            raise ProtocolError("Response: field 'error' must be null if and only if 'ok' is true")
        if response.error is not None and response.result is not None:
            raise ProtocolError("Response: field 'result' must be null when 'ok' is false")
        return response


Message = Hello | Welcome | Request | Response
MESSAGES: Final[Mapping[str, type[Message]]] = {
    m.TAG: m for m in (Hello, Welcome, Request, Response) if m.TAG
}


def decode_message(data: dict[str, Any]) -> Message:
    """The message a frame holds, by its ``"t"``."""
    tag = data.get("t")
    if type(tag) is not str or tag not in MESSAGES:
        raise ProtocolError(
            f"frame field 't' must be one of {', '.join(map(repr, MESSAGES))}, got {show(tag)}"
        )
    return MESSAGES[tag].from_wire(data)


# -- errors ------------------------------------------------------------------------------------

#: The errors a peer may name that are made again here; any other name becomes an
#: ``AsyncJobsError`` whose message starts with that name. A peer never picks a class to build.
ERRORS: Final[Mapping[str, type[AsyncJobsError]]] = {
    cls.__name__: cls
    for cls in (
        AsyncJobsError, JobStateError, NoSuchJob, JobArgumentError, ProtocolError,
        JobFailed, JobStopped, CommandFailed,
    )
}  # fmt: skip


def error_to_wire(exc: BaseException) -> ErrorInfo:
    """What a failed request sends back: the exception's class name and message."""
    return ErrorInfo(type(exc).__name__, str(exc))


def error_from_wire(info: ErrorInfo) -> AsyncJobsError:
    """The error a peer reported, as ours; its message is kept whole."""
    cls = ERRORS.get(info.type)
    if cls is not None:
        return cls(info.message)
    return AsyncJobsError(f"{info.type}: {info.message}" if info.message else info.type)


# -- jobs, records, sessions: the results of requests ------------------------------------------

# A job is a ``records.HostJobInfo`` (the one job record: store, wire and ``session.jobs``).


@attrs.frozen(kw_only=True)
class Batch(_Shape):
    """The result of ``read`` and ``take``: records, where to read on, and the job now.

    ``next_seq`` is the ``from_seq`` of the next ``read``: one past the last record looked at
    (other streams' included). ``records`` are ``WireRecord`` after ``from_wire``; the host may
    pass any ``RecordLike`` (its store's rows). A batch travels as the result of a ``Response``:
    ``to_wire`` encodes the values, the response's decoding restores them.
    """

    SPEC: ClassVar[Spec] = {
        "records": (record_rows, REQUIRED),
        "next_seq": (integer(0), REQUIRED),
        "job": (HostJobInfo.from_wire, REQUIRED),
        "lease": (optional(integer(1, _MAX_ID)), None),  # ``take``'s: acknowledge it
    }
    records: Sequence[RecordLike]
    next_seq: int
    job: HostJobInfo
    lease: int | None = None

    def to_records(self, location: str) -> list[Record]:
        """The records as the public API hands them out."""
        job_id = self.job.id
        return [Record(r.stream, r.value, job_id, location, r.seq, r.time) for r in self.records]

    def to_wire(self) -> dict[str, Any]:
        return super().to_wire() | {"records": encode_records(self.records)}


@attrs.frozen(kw_only=True)
class Page:
    """A ``Batch`` as a controller that reads many of them takes it: ``Record``\\ s made
    straight from the rows (``parse_page``)."""

    records: list[Record]
    next_seq: int
    job: HostJobInfo
    lease: int | None = None


_PAGE_SPEC: Final[Spec] = {
    "records": (anything, REQUIRED),  # checked by raw_records, once the job is known
    "next_seq": (integer(0), REQUIRED),
    "job": (lambda v: HostJobInfo.from_wire(decode_value(v)), REQUIRED),
    "lease": (optional(integer(1, _MAX_ID)), None),
}


def parse_page(raw: Any) -> Page:
    """The raw (not yet decoded) result of ``read`` or ``take``, every field checked."""
    fields = read_fields("Batch", raw, _PAGE_SPEC)
    job: HostJobInfo = fields["job"]
    records = raw_records(fields["records"], job.id, job.location)
    return Page(records=records, next_seq=fields["next_seq"], job=job, lease=fields["lease"])


def peek_page(raw: Any) -> tuple[int, int, int]:
    """Of a raw ``read`` result, without decoding it: how many records it holds, its
    ``next_seq``, and the job's ``next_seq`` (what a reader needs to ask for the next page
    before it decodes this one). A malformed result raises ``parse_page``'s error."""
    try:
        rows, seq, job_seq = raw["records"], raw["next_seq"], raw["job"]["next_seq"]
        if type(rows) is list and type(seq) is int and type(job_seq) is int:
            return len(rows), seq, job_seq
    except (TypeError, KeyError):
        pass
    parse_page(raw)  # names what is wrong
    raise ProtocolError(f"Batch: malformed, got {show(raw)}")


class SessionState(enum.StrEnum):
    """Where a session of the job host stands; the wire and the store carry the values."""

    OPENED = "Opened"  # a controller is attached
    DISCONNECTED = "Disconnected"  # none is: its jobs run on, its idle timeout counts down
    CLOSED = "Closed"  # closed (or idle past its timeout): its jobs were stopped


_LISTED: Final = (SessionState.OPENED.value, SessionState.DISCONNECTED.value)


@attrs.frozen(kw_only=True)
class SessionInfo(_Shape):
    """A session of the job host, as ``sessions`` (and ``asyncjobs.get_sessions``) lists it;
    ``state`` is a ``SessionState``'s value (a closed session is not listed)."""

    SPEC: ClassVar[Spec] = {
        "name": (name, REQUIRED),
        "state": (one_of(*_LISTED), REQUIRED),  # Opened: a controller is on it
        "job_count": (integer(0), REQUIRED),
        "idle_timeout": (_SECONDS, REQUIRED),
    }
    name: str
    state: Literal["Opened", "Disconnected"]
    job_count: int
    idle_timeout: float | None


# -- the operations: one table, each op's fields, result and flags declared together ----------

_STREAMS: Final = optional(list_of(one_of(*STREAMS), min_len=1, max_len=len(STREAMS)))
_LIMIT: Final = optional(integer(1, 100_000))
_JOB_ONLY: Final[Spec] = {"job": (_JOB, REQUIRED)}

START_COMMAND: Final = Op(
    "start_command",
    {
        "command": (operation.command, REQUIRED),
        "name": (optional(text), None),
        "cwd": (optional(text), None),
        "env": (optional(operation.env), None),
        "input": (optional(of_type("must be a str or bytes", str, bytes)), None),
        "buffer": (optional(operation.buffer), None),
    },
    HostJobInfo.from_wire,  # the job, running
)
GET: Final = Op(
    "get",
    {
        "id": (optional(_JOB), None),
        "name": (optional(text), None),  # a shell-style pattern
        "state": (optional(one_of(*(s.value for s in JobState))), None),
        "kind": (optional(one_of(*KINDS)), None),
        "location": (optional(text), None),
        "session_name": (optional(name), None),  # not "session": handlers take that
        "has_more_data": (optional(boolean), None),
    },
    many(HostJobInfo.from_wire),
    paged=True,
)
JOB: Final = Op("job", _JOB_ONLY, HostJobInfo.from_wire)
WAIT: Final = Op(
    "wait",
    {
        "jobs": (list_of(_JOB), REQUIRED),  # empty: every job of the session, as Wait-Job
        "any": (boolean, False),
        "timeout": (_SECONDS, None),
    },
    many(HostJobInfo.from_wire),  # the jobs finished when it returned
)
#: Keep semantics: nothing is consumed; any number of readers.
READ: Final = Op(
    "read",
    {
        "job": (_JOB, REQUIRED),
        "from_seq": (integer(0), 0),
        "streams": (_STREAMS, None),
        "limit": (_LIMIT, None),
        "wait": (_SECONDS, None),  # long-poll: seconds to wait for a first record
        "unreceived": (boolean, False),  # only records not taken yet (Receive-Job -Keep)
    },
    Batch.from_wire,
    paged=True,
)
#: Receive-once (Receive-Job): the records handed over are gone, for everyone.
TAKE: Final = Op(
    "take",
    {
        "job": (_JOB, REQUIRED),
        "streams": (_STREAMS, None),
        "limit": (_LIMIT, None),
        "wait": (_SECONDS, None),
    },
    Batch.from_wire,
    paged=True,
)
#: Receive-once is acknowledged: ``take`` hands out a lease; ``ack`` says how many of its
#: records (from its first) were handed to the caller, and with ``release`` gives the rest
#: back. A lease not released when its connection ends is given back whole but for what was
#: acknowledged. Answered in order with the requests around it.
ACK: Final = Op(
    "ack",
    {
        "lease": (integer(1, _MAX_ID), REQUIRED),
        "count": (integer(0), REQUIRED),
        "release": (boolean, False),
    },
    none,
    inline=True,
)
STOP: Final = Op("stop", _JOB_ONLY, HostJobInfo.from_wire)  # the job, finished
REMOVE: Final = Op(
    "remove",
    {"job": (_JOB, REQUIRED), "force": (boolean, False)},
    none,  # force: stop first
)
SESSIONS: Final = Op("sessions", {}, many(SessionInfo.from_wire))
DISCONNECT: Final = Op("disconnect", {}, none, inline=True, last=True)
CLOSE_SESSION: Final = Op("close_session", {}, none)  # this connection's: its jobs stop
PING: Final = Op("ping", {}, anything_at_all)


@attrs.frozen(kw_only=True)
class InvokeRecord(_Shape):
    """A recorded ``asyncjobs invoke``: its ``RemoteJob``'s id and its hosts, in order."""

    SPEC: ClassVar[Spec] = {
        "job": (_JOB, REQUIRED),
        "hosts": (list_of(InvokeHost.from_wire, min_len=1), REQUIRED),
    }
    job: int
    hosts: list[InvokeHost]

    def to_wire(self) -> dict[str, Any]:
        return {"job": self.job, "hosts": [h.to_wire() for h in self.hosts]}


def _invoke_hosts(v: Any) -> list[dict[str, Any]]:
    return [h.to_wire() for h in list_of(InvokeHost.from_wire, min_len=1)(v)]


#: ``asyncjobs invoke`` records its hosts and how each ended (a finished ``RemoteJob`` of
#: this session, named ``Job<id>``): what ``-H @failed`` / ``@last`` name later.
RECORD_INVOKE: Final = Op(
    "record_invoke",
    {
        "command": (text, REQUIRED),
        "location": (text, REQUIRED),
        "state": (one_of(*(s.value for s in JobState if s.is_finished)), REQUIRED),
        "exit_status": (optional(integer(-(2**31), 2**31)), None),
        "started_at": (number(0), REQUIRED),
        "finished_at": (number(0), REQUIRED),
        "hosts": (_invoke_hosts, REQUIRED),  # InvokeHost objects, each checked, kept as data
    },
    HostJobInfo.from_wire,
)
#: A recorded invoke's hosts: ``job``'s, or (None) the last one's; None if there is none.
INVOKE_HOSTS: Final = Op(
    "invoke_hosts", {"job": (optional(_JOB), None)}, lambda v: optional(InvokeRecord.from_wire)(v)
)

# Warm connections (``_remote.warm``, on the local job host only): a fan-out run here, on the
# connections this host holds; its children's events read back in batches; stopped with its
# connection. Results are data, read by the warm client (``_remote.warmclient``).
WARM_INVOKE: Final = Op(
    "warm_invoke",
    {
        "targets": (list_of(text, min_len=1), REQUIRED),
        "command": (text, REQUIRED),
        "options": (obj, REQUIRED),  # asyncssh client options: data only (paths, numbers)
        "throttle": (integer(1, 100_000), 32),
        "timeout": (_SECONDS, None),
        "idle_timeout": (_SECONDS, None),
        "retries": (integer(0, 1000), 0),
        "max_startups": (optional(integer(1, 100_000)), None),
        "input": (optional(of_type("must be bytes", bytes)), None),
        "fail_fast": (boolean, False),
        "persist": (number(0), 60.0),  # seconds a connection is held after its last use
        "host_buffer": (integer(1), 2 << 20),  # bytes a host's output may hold there
    },
    anything_at_all,  # {"run": id, "locations": [...]}
)
WARM_EVENTS: Final = Op(
    "warm_events",
    {
        "run": (_JOB, REQUIRED),
        "wait": (_SECONDS, None),
        # children whose records the controller can't take now (their buffers are full)
        "paused": (list_of(integer(0, 1_000_000)), []),
    },
    anything_at_all,
)
WARM_STOP: Final = Op("warm_stop", {"run": (_JOB, REQUIRED)}, none)
CONNECTIONS: Final = Op("connections", {}, anything_at_all)  # the held connections

#: Every operation, in the order error messages list them.
OPS: Final[tuple[Op[Any], ...]] = (
    START_COMMAND, GET, JOB, WAIT, READ, TAKE, ACK, STOP, REMOVE, SESSIONS, DISCONNECT,
    CLOSE_SESSION, PING, RECORD_INVOKE, INVOKE_HOSTS, WARM_INVOKE, WARM_EVENTS, WARM_STOP,
    CONNECTIONS,
)  # fmt: skip
OP_NAMED: Final[Mapping[str, Op[Any]]] = {op.name: op for op in OPS}


def validate_args(
    op: str, args: Any, *, error: type[AsyncJobsError] = ProtocolError
) -> dict[str, Any]:
    """``args`` of the op named ``op`` (as the wire names it) checked, with every default
    filled in; an unknown name raises ``error`` listing the ops."""
    found = OP_NAMED.get(op)
    if found is None:
        raise error(f"Request: unknown op {op!r}; the ops are {', '.join(OP_NAMED)}")
    return found.validate(args, error=error)
