"""The messages between a controller and the job host, each field checked on receipt.

A connection is a ``FrameStream`` (``_wire``). The controller's first frame is a ``Hello``; the
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

import uuid
from collections.abc import Callable, Mapping, Sequence
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
from .._core.models import STREAMS, Buffer, Record
from .._core.state import JobState
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
from .wire import FrameStream as FrameStream
from .wire import RecordLike as RecordLike
from .wire import WireRecord as WireRecord
from .wire import decode_records as decode_records
from .wire import decode_value as decode_value
from .wire import encode_frame as encode_frame
from .wire import encode_records as encode_records
from .wire import encode_value as encode_value
from .wire import encoded_rows as encoded_rows
from .wire import raw_records as raw_records

_MAX_ID: Final = 2**63 - 1
KINDS: Final = ("ThreadJob", "BackgroundJob", "RemoteJob")


_NUL: Final = "must hold no NUL byte (the operating system can't pass one)"


def _command(v: Any) -> str | list[str]:
    """A shell string, or an argv list whose program is not empty; no NUL byte anywhere."""
    if type(v) is str and v.strip():
        if "\0" in v:
            raise Bad(_NUL, v)
        return v
    if type(v) is list and v and all(type(x) is str for x in v) and v[0]:
        for i, x in enumerate(v):
            if "\0" in x:
                raise Bad(_NUL, x, f"[{i}]")
        return v
    raise Bad("must be a non-empty str or a non-empty list of str (argv)", v)


def _env(v: Any) -> dict[str, str]:
    """Environment variables: names (non-empty, no ``=`` or NUL) to values (no NUL)."""
    if type(v) is not dict or not all(type(k) is type(x) is str for k, x in v.items()):
        raise Bad("must be an object of str to str", v)
    for key, x in v.items():
        if not key or "=" in key or "\0" in key:
            raise Bad("must map variable names (non-empty, no '=' or NUL) to str", v)
        if "\0" in x:
            raise Bad(_NUL, x, f"[{key!r}]")
    return v


def _buffer(v: Any) -> dict[str, Any]:
    """A ``Buffer``'s settings, checked by ``Buffer`` itself, with its defaults filled in."""
    if type(v) is not dict or not v.keys() <= {"max_items", "max_bytes", "mode"}:
        raise Bad("must be an object of max_items, max_bytes, mode", v)
    try:
        b = Buffer(**v)
    except JobArgumentError as exc:
        raise Bad(f"is not a valid Buffer ({exc})", v) from None
    return {"max_items": b.max_items, "max_bytes": b.max_bytes, "mode": b.mode}


def _uuid(v: Any) -> str:
    try:
        if str(uuid.UUID(v)) == v:
            return str(v)
    except (TypeError, ValueError, AttributeError):
        pass
    raise Bad("must be a UUID in canonical form", v)


def _state(v: Any) -> JobState:
    try:
        return JobState(v)
    except ValueError:
        raise Bad(f"must be one of {', '.join(repr(s.value) for s in JobState)}", v) from None


# -- requests ----------------------------------------------------------------------------------

_JOB: Final = integer(1)
_STREAMS: Final = optional(list_of(one_of(*STREAMS), min_len=1, max_len=len(STREAMS)))
_LIMIT: Final = optional(integer(1, 100_000))
_SECONDS: Final = optional(number(0))

#: Every op and its arguments: name → (check, default or ``REQUIRED``).
ARGS: Final[Mapping[str, Spec]] = {
    "start_command": {
        "command": (_command, REQUIRED),
        "name": (optional(text), None),
        "cwd": (optional(text), None),
        "env": (optional(_env), None),
        "input": (optional(of_type("must be a str or bytes", str, bytes)), None),
        "buffer": (optional(_buffer), None),
    },
    "get": {
        "id": (optional(_JOB), None),
        "name": (optional(text), None),  # a shell-style pattern
        "state": (optional(one_of(*(s.value for s in JobState))), None),
        "kind": (optional(one_of(*KINDS)), None),
        "location": (optional(text), None),
        "session_name": (optional(name), None),  # not "session": handlers take that
        "has_more_data": (optional(boolean), None),
    },
    "job": {"job": (_JOB, REQUIRED)},
    "wait": {
        "jobs": (list_of(_JOB), REQUIRED),  # empty: every job of the session, as Wait-Job
        "any": (boolean, False),
        "timeout": (_SECONDS, None),
    },
    "read": {
        "job": (_JOB, REQUIRED),
        "from_seq": (integer(0), 0),
        "streams": (_STREAMS, None),
        "limit": (_LIMIT, None),
        "wait": (_SECONDS, None),  # long-poll: seconds to wait for a first record
        "unreceived": (boolean, False),  # only records not taken yet (Receive-Job -Keep)
    },  # keep semantics: nothing is consumed; any number of readers
    "take": {  # receive-once (Receive-Job): the records handed over are gone, for everyone
        "job": (_JOB, REQUIRED),
        "streams": (_STREAMS, None),
        "limit": (_LIMIT, None),
        "wait": (_SECONDS, None),
    },
    # Receive-once is acknowledged: ``take`` hands out a lease; ``ack`` says how many of its
    # records (from its first) were handed to the caller, and with ``release`` gives the rest
    # back. A lease not released when its connection ends is given back whole but for what
    # was acknowledged. Answered in order with the requests around it.
    "ack": {
        "lease": (integer(1, _MAX_ID), REQUIRED),
        "count": (integer(0), REQUIRED),
        "release": (boolean, False),
    },
    "stop": {"job": (_JOB, REQUIRED)},
    "remove": {"job": (_JOB, REQUIRED), "force": (boolean, False)},  # force: stop it first
    "sessions": {},
    "disconnect": {},
    "close_session": {},  # this connection's session: its jobs are stopped
    "ping": {},
}
OPS: Final = tuple(ARGS)


def validate_args(
    op: str, args: Any, *, error: type[AsyncJobsError] = ProtocolError
) -> dict[str, Any]:
    """``args`` of ``op`` checked, with every default filled in; a controller may pass
    ``error=JobArgumentError`` to check a user's call before sending it."""
    if op not in ARGS:
        raise error(f"Request: unknown op {op!r}; the ops are {', '.join(OPS)}")
    return read_fields(f"Request {op!r}", args, ARGS[op], error)


# -- shapes: frozen classes that cross the wire as objects checked against their SPEC ---------


@attrs.frozen
class _Shape:
    TAG: ClassVar[str | None] = None  # the "t" of a message; None for a part of one
    SPEC: ClassVar[Spec]

    def to_wire(self) -> dict[str, Any]:
        fields = {f.name: _plain(getattr(self, f.name)) for f in attrs.fields(type(self))}
        return {"t": self.TAG, **fields} if self.TAG else fields

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        spec = {"t": (one_of(cls.TAG), REQUIRED), **cls.SPEC} if cls.TAG else cls.SPEC
        fields = read_fields(cls.__name__, data, spec)
        fields.pop("t", None)
        return cls(**fields)


def _plain(value: Any) -> Any:
    """A field (or a result) as data: shapes, lists of shapes and states included."""
    if isinstance(value, _Shape):
        return value.to_wire()
    if isinstance(value, JobState):
        return value.value
    if type(value) is list and value and isinstance(value[0], _Shape):
        return [_plain(x) for x in value]
    return value


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
    """Controller → host: call ``op`` with ``args`` (see ``ARGS``); ids start at 1 (0 is the
    hello's), and the ``Response`` of the same id answers."""

    TAG: ClassVar[str | None] = "request"
    SPEC: ClassVar[Spec] = {
        "id": (integer(1, _MAX_ID), REQUIRED),
        "op": (one_of(*OPS), REQUIRED),
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

_TIME: Final = optional(number(0))


@attrs.frozen(kw_only=True)
class JobInfo(_Shape):
    """A job of the job host, as a controller sees it."""

    SPEC: ClassVar[Spec] = {
        "id": (_JOB, REQUIRED),
        "instance_id": (_uuid, REQUIRED),
        "name": (text, REQUIRED),
        "kind": (one_of(*KINDS), REQUIRED),
        "command": (text, REQUIRED),
        "location": (text, REQUIRED),
        "session": (optional(name), REQUIRED),
        "state": (_state, REQUIRED),
        "reason": (optional(text), REQUIRED),
        "exit_status": (optional(integer(-(2**31), 2**31)), REQUIRED),
        "has_more_data": (boolean, REQUIRED),
        "started_at": (_TIME, REQUIRED),
        "finished_at": (_TIME, REQUIRED),
        "next_seq": (integer(0), REQUIRED),
        "dropped": (integer(0), REQUIRED),
    }
    id: int
    instance_id: str
    name: str
    kind: str
    command: str
    location: str
    session: str | None
    state: JobState
    reason: str | None  # the failure, as text
    exit_status: int | None
    has_more_data: bool
    started_at: float | None
    finished_at: float | None
    next_seq: int  # the seq the job's next record will get
    dropped: int


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
        "job": (JobInfo.from_wire, REQUIRED),
        "lease": (optional(integer(1, _MAX_ID)), None),  # ``take``'s: acknowledge it
    }
    records: Sequence[RecordLike]
    next_seq: int
    job: JobInfo
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
    job: JobInfo
    lease: int | None = None


_PAGE_SPEC: Final[Spec] = {
    "records": (anything, REQUIRED),  # checked by raw_records, once the job is known
    "next_seq": (integer(0), REQUIRED),
    "job": (lambda v: JobInfo.from_wire(decode_value(v)), REQUIRED),
    "lease": (optional(integer(1, _MAX_ID)), None),
}


def parse_page(raw: Any) -> Page:
    """The raw (not yet decoded) result of ``read`` or ``take``, every field checked."""
    fields = read_fields("Batch", raw, _PAGE_SPEC)
    job: JobInfo = fields["job"]
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


@attrs.frozen(kw_only=True)
class SessionInfo(_Shape):
    """A session of the job host, as ``sessions`` (and ``asyncjobs.get_sessions``) lists it."""

    SPEC: ClassVar[Spec] = {
        "name": (name, REQUIRED),
        "state": (one_of("Opened", "Disconnected"), REQUIRED),  # Opened: a controller is on it
        "job_count": (integer(0), REQUIRED),
        "idle_timeout": (_SECONDS, REQUIRED),
    }
    name: str
    state: Literal["Opened", "Disconnected"]
    job_count: int
    idle_timeout: float | None


def _many(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(v: Any) -> list[Any]:
        if type(v) is not list:
            raise ProtocolError(f"result: expected a list, got {show(v)}")
        return [item(x) for x in v]

    return parse


def _none(v: Any) -> None:
    if v is not None:
        raise ProtocolError(f"result: expected null, got {show(v)}")


#: Each op's result on the wire, made into objects (every field checked) by ``parse_result``.
RESULTS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "start_command": JobInfo.from_wire,  # the job, running
    "get": _many(JobInfo.from_wire),
    "job": JobInfo.from_wire,
    "wait": _many(JobInfo.from_wire),  # the jobs finished when it returned
    "read": Batch.from_wire,
    "take": Batch.from_wire,
    "ack": _none,
    "stop": JobInfo.from_wire,  # the job, finished
    "remove": _none,
    "sessions": _many(SessionInfo.from_wire),
    "disconnect": _none,
    "close_session": _none,
    "ping": lambda v: v,  # anything
}


def parse_result(op: str, result: Any) -> Any:
    """``result`` of ``op``: a ``JobInfo``, a list of them, a ``Batch``, ... (see ``RESULTS``)."""
    return RESULTS[op](result)
