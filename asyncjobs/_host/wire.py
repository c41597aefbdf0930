"""The bytes of the job host protocol: frames, and values that JSON alone can't carry.

A frame is a 4-byte big-endian unsigned length, then that many bytes of UTF-8 JSON holding one
object. JSON is data only (never pickle: frames come from other machines) and needs nothing but
the standard library, so the job host runs anywhere ``python3`` does. A malformed or oversized
frame raises ``ProtocolError``; the decoder then refuses everything after it, because the only
safe thing to do with that connection is to close it.

Values (record values, request arguments, results) are ``str``, ``bytes``, ``int``, ``float``,
``bool``, ``None``, lists and dicts with ``str`` keys. ``encode_value`` makes them JSON, exactly
reversibly, with three tags, each a dict of one key:

- ``{"$b": "<base64>"}``: ``bytes`` (command output that is not UTF-8);
- ``{"$f": "nan" | "inf" | "-inf"}``: the floats JSON has no literal for;
- ``{"$d": {...}}``: a user's dict of exactly one key starting with ``$``, kept as it was.

Tuples travel as lists (JSON has one sequence type); ``bytearray``/``memoryview`` as ``bytes``.
Strings holding lone surrogates (``os.fsdecode`` of a non-UTF-8 file name) survive: such a frame
is sent as ASCII JSON with ``\\u`` escapes.

Also the field checks that every message and record is read through (``read_fields``), the base
of the shapes that cross the wire (``Shape``), and the one table of stream codes (the wire's and
the store's file format). No anyio here: ``transport.FrameStream`` carries frames over a stream.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, ClassVar, Final, NamedTuple, Protocol, Self, TypeVar, final, overload

import attrs

from .._core.errors import AsyncJobsError, ProtocolError
from .._core.models import STREAMS, Record, StreamName
from .._core.state import JobState

#: The protocol version this asyncjobs speaks; ``check_version`` compares the peer's.
PROTOCOL_VERSION: Final = 2  # 2: receive-once is acknowledged (take leases, ack)
#: The largest frame body a connection accepts or sends, unless told otherwise.
MAX_FRAME: Final = 16 * 1024 * 1024
#: The length prefix of a frame.
HEADER: Final = struct.Struct(">I")
#: How much to ask the byte stream for at once: many small frames arrive in one read.
CHUNK: Final = 1 << 18

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_ASCII_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def encode_frame(obj: dict[str, Any], *, max_frame: int = MAX_FRAME) -> bytes:
    """One frame holding ``obj`` (plain JSON data: run values through ``encode_value`` first)."""
    try:
        text = _ENCODER.encode(obj)
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them, JSON gives them back
            body = _ASCII_ENCODER.encode(obj).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"can't encode a frame: {exc}") from exc
    if len(body) > max_frame:
        raise ProtocolError(
            f"a frame of {len(body)} bytes exceeds the limit of {max_frame} bytes; "
            "ask for less at once (e.g. a smaller limit= when reading records)"
        )
    return HEADER.pack(len(body)) + body


def _utf8(buffer: bytearray, end: int) -> str:
    """The body of the frame ending at ``end``, decoded in place (no copy of the bytes)."""
    with memoryview(buffer) as view, view[HEADER.size : end] as body:
        return str(body, "utf-8")


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"frame holds {name}, which is not JSON; non-finite floats are tagged")


@final
class FrameDecoder:
    """Frames out of bytes that arrive in pieces of any size.

    ``feed(data)`` returns the frames completed so far. The first bad frame raises
    ``ProtocolError``; a frame that fails after good ones in the same ``feed`` is raised by the
    next call instead, so no good frame is lost, and every call after a failure fails again.
    """

    __slots__ = ("_buffer", "_failure", "max_frame")

    def __init__(self, *, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._failure: str | None = None

    def feed(self, data: bytes = b"") -> list[dict[str, Any]]:
        """Add ``data``; the frames it completes, in order."""
        self.append(data)
        frames: list[dict[str, Any]] = []
        try:
            while (frame := self.next_frame()) is not None:
                frames.append(frame)
        except ProtocolError:
            if not frames:
                raise
        return frames

    def append(self, data: bytes) -> None:
        """Add ``data`` without decoding anything yet (nothing, once the stream failed)."""
        if self._failure is None:
            self._buffer += data

    def next_frame(self) -> dict[str, Any] | None:
        """The next complete frame, or ``None`` until more bytes arrive."""
        if self._failure is not None:
            raise ProtocolError(self._failure)
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return None
        size: int = HEADER.unpack_from(buffer)[0]
        if size > self.max_frame:  # before a byte of the body is waited for
            self._fail(f"frame of {size} bytes exceeds the limit of {self.max_frame} bytes")
        end = HEADER.size + size
        if len(buffer) < end:
            return None
        try:
            text = _utf8(buffer, end)
        except UnicodeDecodeError as exc:
            self._fail(f"frame is not UTF-8 ({exc.reason} at byte {exc.start})")
        del buffer[:end]
        return self._parse(text)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buffer)

    @property
    def missing(self) -> int:
        """Bytes still to come for the frame in progress (0 until its length is known)."""
        if len(self._buffer) < HEADER.size:
            return 0
        size: int = HEADER.unpack_from(self._buffer)[0]
        return HEADER.size + size - len(self._buffer)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except ProtocolError as exc:
            self._fail(str(exc))
        except (ValueError, RecursionError) as exc:
            self._fail(f"frame is not valid JSON ({exc})")
        if type(obj) is not dict:
            self._fail(f"frame holds a JSON {type(obj).__name__}, not an object")
        frame: dict[str, Any] = obj
        return frame

    def _fail(self, message: str) -> Any:
        self._failure = f"{message}; this connection can't be read further"
        self._buffer.clear()
        raise ProtocolError(self._failure)


# -- values -----------------------------------------------------------------------------------

_FLOAT_TAGS: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Encoded(list[Any]):
    """Rows whose values are encoded already (``encode_records``): passed as they are."""


_SAME: Final = frozenset({str, int, bool, type(None), _Encoded})  # JSON as they are
_LEAVES: Final = frozenset({str, int, float, bool, type(None)})  # what json.loads gives


def encode_value(value: Any) -> Any:
    """``value`` as JSON data, reversibly (see the module doc); others raise ``ProtocolError``."""
    try:
        return _encode(value)
    except RecursionError:
        raise ProtocolError("value is nested too deeply (or contains itself)") from None


def _encode(v: Any) -> Any:
    if type(v) in _SAME or isinstance(v, str | int | None):  # exact types first: the fast path
        return v
    if isinstance(v, list | tuple):
        return [x if type(x) in _SAME else _encode(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$f": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    if isinstance(v, dict):
        out = {}
        for key, x in v.items():
            if not isinstance(key, str):
                raise ProtocolError(f"dict key {key!r} can't cross the wire: keys must be str")
            out[key] = x if type(x) in _SAME else _encode(x)
        return {"$d": out} if len(out) == 1 and next(iter(out)).startswith("$") else out
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(v).decode("ascii")}
    raise ProtocolError(
        f"a value of type {type(v).__name__} can't cross the wire: send str, bytes, int, float, "
        "bool, None, lists and dicts with str keys"
    )


def decode_value(data: Any) -> Any:
    """The value ``encode_value`` made ``data`` from; a bad tag raises ``ProtocolError``.

    ``data`` is what ``json.loads`` gave: its lists and dicts are reused, changed in place."""
    try:
        return _decode(data)
    except RecursionError:
        raise ProtocolError("value is nested too deeply") from None


def _decode(v: Any) -> Any:
    if type(v) is list:
        leaves = _LEAVES
        for i, x in enumerate(v):
            if type(x) not in leaves:
                v[i] = _decode(x)
    elif type(v) is dict:
        if len(v) == 1:
            ((key, x),) = v.items()
            if key.startswith("$"):
                return _untag(key, x)
        _decode_items(v)
    return v  # anything else json.loads makes is str, int, float, bool or None


def _decode_items(v: dict[str, Any]) -> dict[str, Any]:
    for key, x in v.items():
        if type(x) not in _LEAVES:
            v[key] = _decode(x)
    return v


def _untag(tag: str, x: Any) -> Any:
    if tag == "$b" and isinstance(x, str):
        try:
            return base64.b64decode(x, validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"value tagged $b is not base64 ({exc})") from None
    if tag == "$f" and isinstance(x, str) and x in _FLOAT_TAGS:
        return _FLOAT_TAGS[x]
    if tag == "$d" and type(x) is dict:
        return _decode_items(x)
    raise ProtocolError(
        f"value tagged {tag!r} holds {x!r:.60}: expected $b with base64 text, "
        "$f with 'nan', 'inf' or '-inf', or $d with an object"
    )


# -- fields: each check returns the value (normalized) or raises Bad ---------------------------

Check = Callable[[Any], Any]
Spec = Mapping[str, tuple[Check, Any]]  # field → (check, default or REQUIRED)
REQUIRED: Final[Any] = object()


class Bad(Exception):
    """A value breaks ``rule``; ``read_fields`` adds the message, the field and ``where``."""

    def __init__(self, rule: str, value: Any, where: str = "") -> None:
        super().__init__(rule)
        self.rule, self.value, self.where = rule, value, where


def show(value: Any) -> str:
    """``repr(value)``, cut short enough for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_fields(
    what: str, data: Any, spec: Spec, error: type[AsyncJobsError] = ProtocolError
) -> dict[str, Any]:
    """``data``'s fields checked against ``spec``, defaults filled in; unknown fields refused."""
    if not isinstance(data, dict):
        raise error(f"{what}: expected an object, got {show(data)}")
    if unknown := data.keys() - spec.keys():
        raise error(
            f"{what}: unknown field(s) {', '.join(map(repr, sorted(map(str, unknown))))}; "
            f"the fields are {', '.join(map(repr, spec)) or 'none'}"
        )
    out: dict[str, Any] = {}
    for field, (check, default) in spec.items():
        if field not in data:
            if default is REQUIRED:
                raise error(f"{what}: field {field!r} is missing")
            out[field] = default
            continue
        try:
            out[field] = check(data[field])
        except Bad as bad:
            where = f"{field!r}{bad.where}"
            raise error(f"{what}: field {where} {bad.rule}, got {show(bad.value)}") from None
    return out


def of_type(rule: str, *types: type) -> Check:
    """Exactly one of ``types`` (JSON gives exact types; ``True`` is not an int here)."""

    def check(v: Any) -> Any:
        if type(v) not in types:
            raise Bad(rule, v)
        return v

    return check


text: Final = of_type("must be a str", str)
boolean: Final = of_type("must be true or false", bool)
obj: Final = of_type("must be an object", dict)


def anything(v: Any) -> Any:
    return v


def integer(lo: int = 0, hi: int | None = None) -> Check:
    rule = f"must be an int >= {lo}" if hi is None else f"must be an int from {lo} to {hi}"

    def check(v: Any) -> int:
        if type(v) is not int or v < lo or (hi is not None and v > hi):
            raise Bad(rule, v)
        return v

    return check


def number(lo: float = 0.0) -> Check:
    """A finite int or float >= ``lo``, as a float. NaN and the infinities are refused (JSON
    has none, but ``$f`` tags carry them): a field that may mean "no limit" is optional, and
    ``null`` says so. An int too large for a float is refused too."""
    rule = f"must be a finite number >= {lo:g}"

    def check(v: Any) -> float:
        if type(v) not in (int, float):
            raise Bad(rule, v)
        try:
            x = float(v)
        except OverflowError:
            raise Bad(rule, v) from None
        if not (math.isfinite(x) and x >= lo):
            raise Bad(rule, v)
        return x

    return check


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str:
        if type(v) is not str or v not in choices:
            raise Bad(f"must be one of {', '.join(map(repr, choices))}", v)
        return v

    return check


def optional(inner: Check) -> Check:
    def check(v: Any) -> Any:
        try:
            return None if v is None else inner(v)
        except Bad as bad:
            rule = bad.rule if bad.where else f"{bad.rule} or None"
            raise Bad(rule, bad.value, bad.where) from None

    return check


def list_of(item: Check, *, min_len: int = 0, max_len: int = 100_000) -> Check:
    def check(v: Any) -> list[Any]:
        if type(v) is not list or not min_len <= len(v) <= max_len:
            raise Bad(f"must be a list of {min_len} to {max_len} items", v)
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except Bad as bad:
                raise Bad(bad.rule, bad.value, f"[{i}]{bad.where}") from None
        return out

    return check


def name(v: Any) -> str:
    """A session's name: 1 to 256 printable characters."""
    if type(v) is not str or not 0 < len(v) <= 256 or not v.isprintable():
        raise Bad("must be a name of 1 to 256 printable characters", v)
    return v


# -- shapes: frozen classes that cross the wire as objects checked against their SPEC ---------


@attrs.frozen
class Shape:
    """A frozen class that crosses the wire as an object, every field checked by ``SPEC`` on
    receipt; a message has a ``TAG`` (its ``"t"``), a part of one (a job record) has none."""

    TAG: ClassVar[str | None] = None
    SPEC: ClassVar[Spec]

    def to_wire(self) -> dict[str, Any]:
        fields = {f.name: plain(getattr(self, f.name)) for f in attrs.fields(type(self))}
        return {"t": self.TAG, **fields} if self.TAG else fields

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        spec = {"t": (one_of(cls.TAG), REQUIRED), **cls.SPEC} if cls.TAG else cls.SPEC
        fields = read_fields(cls.__name__, data, spec)
        fields.pop("t", None)
        return cls(**fields)


def plain(value: Any) -> Any:
    """A field (or a result) as data: shapes, lists of shapes and states included."""
    if isinstance(value, Shape):
        return value.to_wire()
    if isinstance(value, JobState):
        return value.value
    if type(value) is list and value and isinstance(value[0], Shape):
        return [plain(x) for x in value]
    return value


# -- records: compact rows ---------------------------------------------------------------------


class RecordLike(Protocol):
    """What ``encode_records`` reads: a ``Record``, a ``WireRecord`` or a row of the store."""

    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> StreamName: ...
    @property
    def value(self) -> Any: ...
    @property
    def time(self) -> float: ...


_R = TypeVar("_R")


class WireRecord(NamedTuple):
    """One record of a job, as it crosses the wire: ``[seq, stream code, value, time]``.

    A named tuple, not an attrs class: a reattach makes a million of them."""

    seq: int
    stream: StreamName
    value: Any
    time: float


#: The streams by code, on the wire (``[seq, code, value, time]``) and in the store's chunks:
#: file and wire format (change it only with ``store.SCHEMA_VERSION`` and ``PROTOCOL_VERSION``),
#: not the order of ``STREAMS``, which it happens to follow.
STREAM_NAMES: Final[tuple[StreamName, ...]] = (
    "output", "error", "warning", "verbose", "debug", "information", "progress"
)  # fmt: skip
assert sorted(STREAM_NAMES) == sorted(STREAMS)
#: Each stream's code (``STREAM_NAMES`` the other way round).
STREAM_CODES: Final[Mapping[str, int]] = {s: code for code, s in enumerate(STREAM_NAMES)}


def encode_records(records: Iterable[RecordLike]) -> list[list[Any]]:
    """Records as compact rows, values encoded (so the enclosing message won't walk them)."""
    codes, same, encode = STREAM_CODES, _SAME, _encode
    return _Encoded(
        [r.seq, codes[r.stream], v if type(v := r.value) in same else encode(v), r.time]
        for r in records
    )


def encoded_rows(rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Rows made as ``encode_records`` makes them (values encoded), marked so that the
    enclosing message passes them through as they are."""
    return _Encoded(rows)


@overload
def decode_records(data: Any) -> list[WireRecord]: ...
@overload
def decode_records(data: Any, job_id: int, location: str) -> list[Record]: ...
def decode_records(
    data: Any, job_id: int | None = None, location: str | None = None
) -> list[WireRecord] | list[Record]:
    """Rows from ``encode_records`` (values already decoded with their message), every field
    checked: ``WireRecord``, or ``Record`` of ``job_id`` at ``location`` if they are given."""
    try:
        if job_id is None or location is None:
            return record_rows(data)
        return _rows(data, lambda s, st, v, t: Record(st, v, job_id, location, s, t))
    except Bad as bad:
        raise ProtocolError(f"records{bad.where} {bad.rule}, got {show(bad.value)}") from None


def record_rows(v: Any) -> list[WireRecord]:
    """The check of a field holding record rows (values decoded with their message)."""
    return _rows(v, WireRecord)


def raw_records(data: Any, job_id: int, location: str) -> list[Record]:
    """``Record``\\ s of ``job_id`` at ``location`` from rows as ``json.loads`` gave them (values
    not decoded yet: they are decoded here, in the same pass), every field checked."""
    fast = _columns(data)
    if fast is not None:
        seqs, codes, values, times = fast
        streams = map(STREAM_NAMES.__getitem__, codes)
        return list(map(Record, streams, values, repeat(job_id), repeat(location), seqs, times))
    try:
        return _rows(data, lambda s, st, v, t: Record(st, v, job_id, location, s, t), decode=True)
    except Bad as bad:
        raise ProtocolError(f"records{bad.where} {bad.rule}, got {show(bad.value)}") from None


def _columns(v: Any) -> tuple[Sequence[int], Sequence[int], Sequence[Any], Sequence[float]] | None:
    """Rows checked and decoded a column at a time by C loops (``set(map(type, ...))``,
    ``min``, ``max``): the seqs, stream codes, decoded values and times; ``None`` if any row
    is not plainly right (``_rows`` then checks them one by one and names what is wrong)."""
    if type(v) is not list or set(map(type, v)) - {list} or set(map(len, v)) - {4}:
        return None
    if not v:
        return [], [], [], []
    seqs, codes, values, times = zip(*v, strict=True)
    if (
        set(map(type, seqs)) != {int}
        or min(seqs) < 0
        or set(map(type, codes)) != {int}
        or not 0 <= min(codes) <= max(codes) < len(STREAM_NAMES)
        or set(map(type, times)) != {float}
        or not 0 <= min(times) <= max(times) < math.inf
    ):
        return None
    if set(map(type, values)) - _LEAVES:
        values = tuple(x if type(x) in _LEAVES else _decode(x) for x in values)
    return seqs, codes, values, times


def _rows(
    v: Any, make: Callable[[int, StreamName, Any, float], _R], *, decode: bool = False
) -> list[_R]:
    if type(v) is not list:
        raise Bad("must be a list of [seq, stream code, value, time]", v)
    streams, count, out, leaves = STREAM_NAMES, len(STREAM_NAMES), [], _LEAVES
    for row in v:  # the fast path; _row says what is wrong
        if type(row) is list and len(row) == 4:
            seq, code, value, time = row
            if (
                type(seq) is int
                and seq >= 0
                and type(code) is int
                and 0 <= code < count
                and type(time) is float
                and 0 <= time < math.inf
            ):
                if decode and type(value) not in leaves:
                    value = _decode(value)
                out.append(make(seq, streams[code], value, time))
                continue
        seq, stream, value, time = _row(row, f"[{len(out)}]")
        out.append(make(seq, stream, _decode(value) if decode else value, time))
    return out


def _row(row: Any, at: str) -> WireRecord:
    if type(row) is not list or len(row) != 4:
        raise Bad("must be [seq, stream code, value, time]", row, at)
    seq, code, value, time = row
    if type(seq) is not int or seq < 0:
        raise Bad("(seq) must be an int >= 0", seq, f"{at}[0]")
    if type(code) is not int or not 0 <= code < len(STREAM_NAMES):
        raise Bad(f"(stream) must be a code from 0 to {len(STREAM_NAMES) - 1}", code, f"{at}[1]")
    if type(time) not in (int, float) or not 0 <= time < math.inf:
        raise Bad("(time) must be a finite number >= 0", time, f"{at}[3]")
    return WireRecord(seq, STREAM_NAMES[code], value, float(time))
