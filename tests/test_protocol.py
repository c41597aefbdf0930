"""The job host protocol: frames, values, messages, and every way a peer can get them wrong."""

from __future__ import annotations

import json
import math
import random
import socket
import struct
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ByteStream, UNIXSocketStream

from asyncjobs import (
    AsyncJobsError,
    CommandFailed,
    JobArgumentError,
    JobFailed,
    JobState,
    JobStateError,
    JobStopped,
    NoSuchJob,
    ProtocolError,
    Record,
)
from asyncjobs._host.protocol import (
    GET,
    INVOKE_HOSTS,
    JOB,
    MAX_FRAME,
    OP_NAMED,
    OPS,
    PING,
    PROTOCOL_VERSION,
    READ,
    REMOVE,
    Batch,
    ErrorInfo,
    FrameDecoder,
    FrameStream,
    Hello,
    HostJobInfo,
    InvokeHost,
    InvokeRecord,
    Request,
    Response,
    SessionInfo,
    Welcome,
    WireRecord,
    check_version,
    decode_message,
    decode_records,
    decode_value,
    encode_frame,
    encode_records,
    encode_value,
    encoded_rows,
    error_from_wire,
    error_to_wire,
    parse_page,
    peek_page,
    validate_args,
)
from asyncjobs._host.wire import HEADER


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# -- frames ------------------------------------------------------------------------------------


def test_constants() -> None:
    assert PROTOCOL_VERSION == 2
    assert MAX_FRAME == 16 * 1024 * 1024
    assert HEADER.size == 4


def test_frame_is_big_endian_length_then_utf8_json() -> None:
    data = encode_frame({"a": "é"})
    assert data == b"\x00\x00\x00\x0a" + '{"a":"é"}'.encode()


FRAMES = [{"t": "x", "n": i, "s": "é" * i, "l": list(range(i))} for i in range(3)]
STREAM = b"".join(encode_frame(f) for f in FRAMES)


def test_decoder_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == FRAMES
        assert decoder.buffered == 0


def test_decoder_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    got = [f for i in range(len(STREAM)) for f in decoder.feed(STREAM[i : i + 1])]
    assert got == FRAMES


def test_oversized_length_is_refused_before_the_body() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(struct.pack(">I", 100) + b"{") == []  # at the limit: waits for more
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="frame of 101 bytes exceeds the limit of 100 bytes"):
        decoder.feed(struct.pack(">I", 101))  # the header alone is enough
    with pytest.raises(ProtocolError, match="can't be read further"):
        decoder.feed(b"{}")


def test_default_limit_refuses_a_4_gib_frame() -> None:
    with pytest.raises(ProtocolError, match=f"4294967295 bytes exceeds the limit of {MAX_FRAME}"):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_encode_refuses_an_oversized_frame() -> None:
    assert len(encode_frame({"s": "x" * 92}, max_frame=100)) == 104
    with pytest.raises(ProtocolError, match="frame of 101 bytes exceeds the limit of 100 bytes"):
        encode_frame({"s": "x" * 93}, max_frame=100)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": "\xc3"}', "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"{} {}", "not valid JSON"),
        (b"\x00\x00\x00\x00", "not valid JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b"3", "a JSON int, not an object"),
        (b"null", "a JSON NoneType, not an object"),
        (b'{"x": NaN}', "holds NaN, which is not JSON"),
        (b'{"x": -Infinity}', "holds -Infinity"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),  # too deep: RecursionError
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),  # beyond int's digit limit
    ],
)
def test_garbage_frames(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(frame(body))


def test_good_frames_before_a_bad_one_are_not_lost() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame({"a": 1}) + frame(b"[]") + encode_frame({"b": 2})) == [
        {"a": 1}
    ]
    with pytest.raises(ProtocolError, match="JSON list"):
        decoder.feed()
    with pytest.raises(ProtocolError, match="JSON list"):
        decoder.next_frame()  # and stays failed


def test_lone_surrogates_survive_a_frame() -> None:
    obj = {"path": "caf\udce9", "\udcff": ["ok"]}
    data = encode_frame(obj)
    data[4:].decode("ascii")  # escaped, so still valid UTF-8
    assert FrameDecoder().feed(data) == [obj]


def test_encode_frame_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(ProtocolError, match="can't encode a frame"):
        encode_frame({"x": {1, 2}})
    with pytest.raises(ProtocolError, match="can't encode a frame"):
        encode_frame({"x": math.nan})  # values go through encode_value first


# -- values ------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 or True; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def through_a_frame(value: Any) -> Any:
    [got] = FrameDecoder().feed(encode_frame({"v": encode_value(value)}))
    return decode_value(got["v"])


TRICKY: list[Any] = [
    b"",
    b"\x00",
    b"\x00\xff\xfe invalid \xc3 utf-8",
    bytes(range(256)),
    "",
    "\x00",
    "é中🎉\u2028",
    "caf\udce9",
    10**100,
    -(2**200),
    2**63,
    0.0,
    -0.0,
    1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    {"$b": "AAAA"},
    {"$b": b"\x00"},
    {"$d": {"$b": "x"}},
    {"$f": "nan"},
    {"$x": 1},
    {"$": None},
    {"$b": "x", "other": 1},
    {"": "empty key"},
    {"$d": {}},
    [{"$b": [b"\xff"]}],
    [[[]]],
    {},
    [],
]


@pytest.mark.parametrize("value", TRICKY, ids=repr)
def test_tricky_values_round_trip_exactly(value: Any) -> None:
    assert same(through_a_frame(value), value)
    assert same(decode_value(encode_value(value)), value)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return rng.randbytes(rng.randrange(20))
    if kind == 1:
        return "".join(
            chr(rng.choice([rng.randrange(128), rng.randrange(0x110000)]))
            for _ in range(rng.randrange(8))
        )
    if kind == 2:
        return rng.randrange(-(2**70), 2**70)
    if kind == 3:
        return rng.choice([rng.uniform(-1e10, 1e10), math.nan, math.inf, -math.inf, -0.0])
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.choice(["$b", "$d", "$f", "$", "$$b"])
    if kind == 6:
        return {rng.choice(["$b", "$d", "$f", "$x"]): random_value(rng, depth + 4)}
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["$b", "$d", "$f", "a", "", "é", "$"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_random_values_round_trip_exactly() -> None:
    rng = random.Random(20240605)
    for _ in range(3000):
        value = random_value(rng)
        assert same(through_a_frame(value), value), value


def test_tuples_travel_as_lists_and_byte_likes_as_bytes() -> None:
    assert decode_value(encode_value((1, (b"x",)))) == [1, [b"x"]]
    assert decode_value(encode_value(bytearray(b"\xff"))) == b"\xff"
    assert decode_value(encode_value(memoryview(b"ab"))) == b"ab"


def test_unencodable_values() -> None:
    with pytest.raises(ProtocolError, match="type set can't cross the wire: send str, bytes"):
        encode_value({"x": {1}})
    with pytest.raises(ProtocolError, match="dict key 1 can't cross the wire: keys must be str"):
        encode_value({1: "x"})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ProtocolError, match="nested too deeply"):
        encode_value(loop)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"$b": "not base64!"}, "tagged \\$b is not base64"),
        ({"$b": 3}, "tagged '\\$b' holds 3"),
        ({"$f": "NaN"}, "tagged '\\$f' holds 'NaN'"),
        ({"$d": [1]}, "tagged '\\$d' holds \\[1\\]"),
        ([{"$x": 1}], "tagged '\\$x'"),
    ],
)
def test_bad_tags(data: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_value(data)


def test_decode_value_too_deep() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_value(deep)


# -- messages ----------------------------------------------------------------------------------

INFO = HostJobInfo(
    id=3,
    instance_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    name="build",
    kind="BackgroundJob",
    command="make -j8 all",
    location="build1",
    session="nightly",
    state=JobState.FAILED,
    reason="exit status 2",
    exit_status=2,
    has_more_data=True,
    started_at=1700000000.5,
    finished_at=1700000010.25,
    next_seq=12,
    dropped=0,
)

MESSAGES: list[Any] = [
    Hello(PROTOCOL_VERSION, "me@here pid 7"),
    Hello(PROTOCOL_VERSION, "c", "nightly", True, 60.0, "drop"),
    Welcome(PROTOCOL_VERSION, "build1", "nightly", ["nightly", "other"]),
    Welcome(PROTOCOL_VERSION, "build1", "Session1"),
    Request(id=1, op="ping", args={}),
    Request(
        id=2,
        op="start_command",
        args={
            "command": ["printf", "%s", "\xff"],
            "name": "p",
            "cwd": "/tmp",
            "env": {"A": "1"},
            "input": b"\x00\xff",
            "buffer": {"max_items": 10, "max_bytes": None, "mode": "block"},
        },
    ),
    Response.success(2, INFO.to_wire()),
    Response.success(3, {"$b": b"\xff", "list": [b"", "s"]}),
    Response.failure(4, NoSuchJob("no job 9 on build1; session.jobs.get() lists them")),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: Any) -> None:
    [data] = FrameDecoder().feed(encode_frame(message.to_wire()))
    assert decode_message(data) == message
    assert type(message).from_wire(message.to_wire()) == message


def test_requests_of_every_op_round_trip_with_defaults_filled() -> None:
    minimal: dict[str, dict[str, Any]] = {
        "start_command": {"command": "true"},
        "job": {"job": 1},
        "wait": {"jobs": [1, 2]},
        "read": {"job": 1},
        "take": {"job": 1},
        "ack": {"lease": 1, "count": 0},
        "stop": {"job": 1},
        "remove": {"job": 1},
        "record_invoke": {
            "command": "uptime", "location": "web[01-02]", "state": "Failed",
            "started_at": 1.0, "finished_at": 2.0,
            "hosts": [{"host": "web01", "state": "Completed", "exit_status": 0},
                      {"host": "ops@web02:2222", "state": "Failed"}],
        },
        "warm_invoke": {"targets": ["web01"], "command": "true", "options": {}},
        "warm_events": {"run": 1},
        "warm_stop": {"run": 1},
    }  # fmt: skip
    for i, op in enumerate(OPS, start=1):
        args = minimal.get(op.name, {})
        got = Request.from_wire(Request(id=i, op=op.name, args=args).to_wire())
        assert got.args == validate_args(op.name, args) == op.validate(args)
        assert got.args.keys() == op.fields.keys()  # every default filled in
        assert Request.from_wire(got.to_wire()) == got
    assert validate_args("read", {"job": 5}) == {
        "job": 5, "from_seq": 0, "streams": None, "limit": None, "wait": None, "unreceived": False
    }  # fmt: skip


def test_repr() -> None:
    assert repr(Request(id=1, op="ping")) == "Request(id=1, op='ping', args={})"
    assert (
        repr(ErrorInfo("NoSuchJob", "no job 9"))
        == "ErrorInfo(type='NoSuchJob', message='no job 9')"
    )


def test_job_info_state_crosses_as_its_value() -> None:
    wire = INFO.to_wire()
    assert wire["state"] == "Failed"
    assert json.loads(json.dumps(wire)) == wire
    assert HostJobInfo.from_wire(wire) == INFO


DROP: Any = object()


def changed(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = {**data, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


def hello(**changes: Any) -> dict[str, Any]:
    return changed(Hello(PROTOCOL_VERSION, "c").to_wire(), changes)


def welcome(**changes: Any) -> dict[str, Any]:
    return changed(Welcome(PROTOCOL_VERSION, "h", "s").to_wire(), changes)


def request(**changes: Any) -> dict[str, Any]:
    return changed(Request(id=1, op="ping").to_wire(), changes)


def failed(**changes: Any) -> dict[str, Any]:
    return changed(Response.failure(1, NoSuchJob("m")).to_wire(), changes)


def info(**changes: Any) -> dict[str, Any]:
    return changed(INFO.to_wire(), changes)


BAD_MESSAGES: list[tuple[Any, Any, str]] = [
    (Hello, [], r"Hello: expected an object, got \[\]"),
    (Hello, hello(version=DROP), "Hello: field 'version' is missing"),
    (Hello, hello(version="1"), "Hello: field 'version' must be an int >= 0, got '1'"),
    (Hello, hello(version=True), "field 'version' must be an int >= 0, got True"),
    (Hello, hello(client=DROP), "Hello: field 'client' is missing"),
    (Hello, hello(client=3), "Hello: field 'client' must be a str, got 3"),
    (Hello, hello(t="welcome"), "Hello: field 't' must be one of 'hello'"),
    (Hello, hello(extra=1), r"Hello: unknown field\(s\) 'extra'; the fields are 't', 'version'"),
    (Hello, hello(session=""), "field 'session' must be a name of 1 to 256 printable"),
    (Hello, hello(session="a\nb"), "field 'session' must be a name"),
    (Hello, hello(create=1), "field 'create' must be true or false, got 1"),
    (Hello, hello(idle_timeout=-1), "'idle_timeout' must be a finite number >= 0 or None"),
    (Hello, hello(idle_timeout=math.inf), "'idle_timeout' must be a finite number"),
    (Hello, hello(output_buffering="spill"), "'output_buffering' must be one of 'block', 'drop'"),
    (Welcome, welcome(sessions=["a", 2]), r"Welcome: field 'sessions'\[1\] must be a name"),
    (Welcome, welcome(sessions=DROP), "Welcome: field 'sessions' is missing"),
    (Request, request(op="format_disk"), "Request: field 'op' must be one of 'start_command'"),
    (Request, request(id=0), "Request: field 'id' must be an int from 1 to"),
    (Request, request(id=2**63), "Request: field 'id' must be an int from 1 to"),
    (Request, request(id=1.0), "Request: field 'id' must be an int from 1 to"),
    (Request, request(args=[]), "Request: field 'args' must be an object"),
    (
        Request,
        request(args={"x": 1}),
        r"Request 'ping': unknown field\(s\) 'x'; the fields are none",
    ),
    (Response, failed(ok=True), "'error' must be null if and only if 'ok' is true"),
    (Response, failed(error=None), "'error' must be null if and only if 'ok' is true"),
    (Response, failed(result=1), "Response: field 'result' must be null when 'ok' is false"),
    (Response, failed(error={"type": "os.system", "message": "m"}), "'type' must be a class name"),
    (Response, failed(error={"type": "X"}), "ErrorInfo: field 'message' is missing"),
    (Response, failed(result=DROP), "Response: field 'result' is missing"),
    (Response, failed(ok=True, error=None, result={"$q": 1}), r"tagged '\$q'"),
    (HostJobInfo, info(state="Exploded"), "HostJobInfo: field 'state' must be one of 'NotStarted'"),
    (HostJobInfo, info(state="FAILED"), "HostJobInfo: field 'state' must be one of"),
    (HostJobInfo, info(kind="Job"), "HostJobInfo: field 'kind' must be one of 'ThreadJob'"),
    (HostJobInfo, info(id=0), "HostJobInfo: field 'id' must be an int >= 1, got 0"),
    (HostJobInfo, info(instance_id=INFO.instance_id.upper()), "'instance_id' must be a UUID in"),
    (HostJobInfo, info(instance_id=7), "'instance_id' must be a UUID"),
    (HostJobInfo, info(next_seq=-1), "HostJobInfo: field 'next_seq' must be an int >= 0, got -1"),
    (HostJobInfo, info(started_at="now"), "'started_at' must be a finite number >= 0 or None"),
    (HostJobInfo, info(has_more_data=None), "'has_more_data' must be true or false, got None"),
    (HostJobInfo, info(reason=DROP), "HostJobInfo: field 'reason' is missing"),
    (
        SessionInfo,
        {"name": "s", "state": "Broken", "job_count": 0, "idle_timeout": None},
        "SessionInfo: field 'state' must be one of 'Opened', 'Disconnected'",
    ),
    (
        Batch,
        {"records": [[0, 7, "x", 1.0]], "next_seq": 1, "job": info()},
        r"Batch: field 'records'\[0\]\[1\] \(stream\) must be a code from 0 to 6, got 7",
    ),
    (Batch, {"records": [], "next_seq": 1, "job": info(state=None)}, "HostJobInfo: field 'state'"),
]


@pytest.mark.parametrize(("cls", "data", "message"), BAD_MESSAGES)
def test_bad_messages_name_the_field(cls: Any, data: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        cls.from_wire(data)


BAD_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("start_command", {}, "Request 'start_command': field 'command' is missing"),
    ("start_command", {"command": ""}, "'command' must be a non-empty str or a non-empty list"),
    ("start_command", {"command": []}, "field 'command' must be a non-empty str"),
    ("start_command", {"command": ["ls", 3]}, "field 'command' must be"),
    ("start_command", {"command": "ls", "env": {"A": 1}}, "'env' must be an object of str to str"),
    ("start_command", {"command": "ls", "cwd": 3}, "field 'cwd' must be a str or None, got 3"),
    ("start_command", {"command": "ls", "input": [1]}, "'input' must be a str or bytes or None"),
    (
        "start_command",
        {"command": "x", "buffer": {"mode": "x"}},
        r"not a valid Buffer \(Buffer.mode",
    ),
    ("start_command", {"command": "x", "buffer": {"size": 1}}, "'buffer' must be an object of max"),
    ("start_command", {"command": "ls", "shell": True}, r"unknown field\(s\) 'shell'"),
    ("get", {"state": "running"}, "Request 'get': field 'state' must be one of 'NotStarted'"),
    ("get", {"kind": "Job"}, "'kind' must be one of 'ThreadJob', 'BackgroundJob', 'RemoteJob'"),
    ("get", {"has_more_data": "yes"}, "field 'has_more_data' must be true or false or None"),
    ("job", {"job": "3"}, "Request 'job': field 'job' must be an int >= 1, got '3'"),
    ("job", {"job": 0}, "field 'job' must be an int >= 1, got 0"),
    ("wait", {"jobs": [1, 0]}, r"Request 'wait': field 'jobs'\[1\] must be an int >= 1, got 0"),
    ("wait", {"jobs": 1}, "field 'jobs' must be a list of 0 to 100000 items, got 1"),
    ("wait", {"jobs": [], "any": "no"}, "field 'any' must be true or false"),
    ("wait", {"jobs": [], "timeout": -0.5}, "'timeout' must be a finite number >= 0 or None"),
    ("read", {"job": 1, "from_seq": -1}, "Request 'read': field 'from_seq' must be an int >= 0"),
    ("read", {"job": 1, "from_seq": 1.0}, "field 'from_seq' must be an int >= 0, got 1.0"),
    ("read", {"job": 1, "limit": 0}, "'limit' must be an int from 1 to 100000 or None, got 0"),
    ("read", {"job": 1, "limit": 100_001}, "field 'limit' must be an int from 1 to 100000"),
    ("read", {"job": 1, "streams": ["output", "x"]}, r"'streams'\[1\] must be one of 'output'"),
    ("read", {"job": 1, "streams": []}, "field 'streams' must be a list of 1 to 7 items or None"),
    ("read", {"job": 1, "wait": "forever"}, "field 'wait' must be a finite number >= 0 or None"),
    ("take", {"job": 1, "from_seq": 3}, r"Request 'take': unknown field\(s\) 'from_seq'"),
    ("stop", {"job": 1, "force": True}, r"Request 'stop': unknown field\(s\) 'force'; the fields"),
    ("remove", {"job": 1, "force": 1}, "Request 'remove': field 'force' must be true or false"),
    ("remove", {}, "Request 'remove': field 'job' is missing"),
    ("close_session", {"session": "s"}, r"Request 'close_session': unknown field\(s\) 'session'"),
    ("get", {"session_name": ""}, "field 'session_name' must be a name"),
    ("read", {"job": 1, "unreceived": None}, "field 'unreceived' must be true or false, got None"),
    ("take", {"job": 1, "wait": -1}, "Request 'take': field 'wait' must be a finite number >= 0"),
    ("sessions", {"all": True}, r"Request 'sessions': unknown field\(s\) 'all'"),
    ("explode", {}, "Request: unknown op 'explode'; the ops are start_command, get"),
]


@pytest.mark.parametrize(("op", "args", "message"), BAD_ARGS)
def test_bad_args_name_the_field(op: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        validate_args(op, args)
    if op in OP_NAMED:  # and the same through a whole request
        with pytest.raises(ProtocolError, match=message):
            Request.from_wire(Request(id=1, op=op, args=args).to_wire())


def test_a_controller_checks_a_users_call_with_its_own_error() -> None:
    with pytest.raises(JobArgumentError, match="field 'cwd' must be a str or None"):
        validate_args("start_command", {"command": "ls", "cwd": 3}, error=JobArgumentError)


def test_numbers_are_normalized() -> None:
    args = validate_args("wait", {"jobs": [], "timeout": 3})
    assert type(args["timeout"]) is float
    assert Hello.from_wire(hello(idle_timeout=0)).idle_timeout == 0.0


# -- versions ----------------------------------------------------------------------------------


def test_version_mismatch_names_both_versions() -> None:
    with pytest.raises(
        ProtocolError,
        match="protocol version mismatch: controller speaks 3, job host speaks 2; "
        "upgrade asyncjobs on the job host",
    ):
        check_version(3, "controller")
    with pytest.raises(
        ProtocolError,
        match="job host speaks 0, controller speaks 2; upgrade asyncjobs on the job host",
    ):
        check_version(0, "job host")
    check_version(PROTOCOL_VERSION, "controller")


def test_a_newer_hello_is_a_version_mismatch_not_a_field_error() -> None:
    newer = {"t": "hello", "version": 3, "client": "c", "features": ["x"]}  # other fields
    with pytest.raises(ProtocolError, match="controller speaks 3, job host speaks 2"):
        Hello.from_wire(newer)
    with pytest.raises(ProtocolError, match="controller speaks 3, job host speaks 2"):
        decode_message(newer)
    older = {"t": "welcome", "version": 0}
    with pytest.raises(ProtocolError, match="job host speaks 0, controller speaks 2"):
        Welcome.from_wire(older)


def test_unknown_message_type() -> None:
    with pytest.raises(ProtocolError, match="frame field 't' must be one of 'hello', 'welcome'"):
        decode_message({"t": "shell", "cmd": "rm"})
    with pytest.raises(ProtocolError, match="got None"):
        decode_message({})


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        JobStateError("job 3 ('build') can't go from COMPLETED to RUNNING"),
        NoSuchJob("no job 9; session.jobs.get() lists them"),
        JobArgumentError("cwd /nope does not exist"),
        ProtocolError("garbage"),
        JobFailed("job 3 failed"),
        JobStopped("job 3 was stopped"),
        CommandFailed("exit status 2"),
        AsyncJobsError("something"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_our_errors_cross_the_wire(exc: AsyncJobsError) -> None:
    wire = Response.failure(7, exc).to_wire()
    response = Response.from_wire(json.loads(json.dumps(wire)))
    with pytest.raises(type(exc)) as caught:
        response.unwrap()
    assert type(caught.value) is type(exc)
    assert str(caught.value) == str(exc)


def test_other_errors_become_ours_and_no_peer_picks_a_class() -> None:
    assert error_to_wire(OSError(28, "No space left")) == ErrorInfo(
        "OSError", "[Errno 28] No space left"
    )
    for name in ("OSError", "SystemExit", "KeyboardInterrupt", "HostKeyError", "Anything"):
        err = error_from_wire(ErrorInfo(name, "msg"))
        assert type(err) is AsyncJobsError
        assert str(err) == f"{name}: msg"
    assert str(error_from_wire(ErrorInfo("ValueError", ""))) == "ValueError"


def test_success_unwraps_to_its_result() -> None:
    assert Response.success(1, [1]).unwrap() == [1]


# -- records and results -----------------------------------------------------------------------


def test_records_are_compact_rows() -> None:
    records = [
        Record("output", "line", 3, "build1", 0, 1.5),
        Record("error", b"\xff", 3, "build1", 1, 2.0),
        Record("progress", {"$b": "not bytes"}, 3, "build1", 5, 3.0),
    ]
    rows = encode_records(records)
    assert rows[0] == [0, 0, "line", 1.5]
    assert rows[2][1] == 6
    wire = Response.success(1, {"records": rows}).to_wire()
    result = Response.from_wire(json.loads(json.dumps(wire))).unwrap()
    decoded = decode_records(result["records"])
    assert decoded[1] == WireRecord(1, "error", b"\xff", 2.0)
    assert decoded[2].value == {"$b": "not bytes"}
    assert [(r.stream, r.value, r.seq, r.time) for r in decoded] == [
        (r.stream, r.value, r.seq, r.time) for r in records
    ]
    assert decode_records(result["records"], 3, "build1") == records  # as the API hands out
    assert decode_records([[0, 0, "x", 1]], 3, "h") == [Record("output", "x", 3, "h", 0, 1.0)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({}, r"records must be a list of \[seq, stream code, value, time\]"),
        ([[0, 0, "x"]], r"records\[0\] must be \[seq, stream code, value, time\], got \[0, 0"),
        ([[0, 0, "x", 1.0], [-1, 0, "x", 1.0]], r"records\[1\]\[0\] \(seq\) must be an int >= 0"),
        ([[0, "output", "x", 1.0]], r"records\[0\]\[1\] \(stream\) must be a code from 0 to 6"),
        ([[0, True, "x", 1.0]], r"\(stream\) must be a code"),
        ([[0, 0, "x", None]], r"records\[0\]\[3\] \(time\) must be a finite number >= 0, got None"),
    ],
)
def test_bad_records(rows: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_records(rows)
    with pytest.raises(ProtocolError, match=message):
        decode_records(rows, 3, "build1")


def test_batch_round_trip_and_records_for_the_api() -> None:
    records = [Record("output", "a", 3, "build1", 7, 1.0), Record("warning", b"w", 3, "x", 9, 2.0)]
    batch = Batch(records=records, next_seq=10, job=INFO)
    wire = Response.success(1, batch).to_wire()
    got = READ.parse_result(Response.from_wire(json.loads(json.dumps(wire))).unwrap())
    rows = [WireRecord(7, "output", "a", 1.0), WireRecord(9, "warning", b"w", 2.0)]
    assert got == Batch(records=rows, next_seq=10, job=INFO)
    assert got.to_records("build1") == [
        Record("output", "a", 3, "build1", 7, 1.0),
        Record("warning", b"w", 3, "build1", 9, 2.0),
    ]


def test_pages_decode_values_while_making_records() -> None:
    # The host sends rows it encoded itself; a pipelining reader peeks, then parses.
    rows = encoded_rows([[7, 0, "a", 1.0], [9, 2, encode_value(b"\xff"), 2.0]])
    result = {"records": rows, "next_seq": 10, "job": INFO.to_wire()}
    wire = json.loads(json.dumps(Response.success(4, result).to_wire()))
    raw = Response.from_wire_raw(wire).result
    assert raw["records"][1][2] == {"$b": "/w=="}  # not decoded yet
    assert peek_page(raw) == (2, 10, INFO.next_seq)
    page = parse_page(raw)
    assert page.next_seq == 10 and page.job == INFO
    assert page.records == [
        Record("output", "a", INFO.id, INFO.location, 7, 1.0),
        Record("warning", b"\xff", INFO.id, INFO.location, 9, 2.0),
    ]
    assert parse_page(decode_value(raw)) == page  # decoding twice changes nothing


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda r: r.pop("next_seq"), "Batch: field 'next_seq' is missing"),
        (lambda r: r.update(next_seq="1"), "Batch: field 'next_seq' must be an int >= 0"),
        (lambda r: r.update(records={}), "records must be a list"),
        (lambda r: r["job"].update(next_seq=None), "HostJobInfo: field 'next_seq'"),
        (lambda r: r.update(records=[[0, 0, {"$b": "!"}, 1.0]]), "tagged \\$b is not base64"),
    ],
)
def test_bad_pages(mangle: Any, message: str) -> None:
    raw = {"records": [[0, 0, "x", 1.0]], "next_seq": 1, "job": INFO.to_wire()}
    mangle(raw)
    with pytest.raises(ProtocolError, match=message):
        parse_page(raw)
    if "$b" not in message:  # a value is decoded by parse_page, not looked at by peek_page
        with pytest.raises(ProtocolError, match=message):
            peek_page(raw)


def test_every_op_has_a_handler_and_one_name() -> None:
    from asyncjobs._host.server import HANDLERS

    assert set(HANDLERS) == set(OPS) and len(HANDLERS) == len(OPS)
    assert list(OP_NAMED) == [op.name for op in OPS]  # no two ops share a name
    assert [op.name for op in OPS if op.paged] == ["get", "read", "take"]
    assert [op.name for op in OPS if op.inline] == ["ack", "disconnect"]
    assert repr(READ) == "<Op read>"


def test_every_op_has_a_result_shape() -> None:
    session = SessionInfo(name="nightly", state="Disconnected", job_count=2, idle_timeout=7200.0)
    examples: dict[str, Any] = {
        "start_command": INFO,
        "get": [INFO, INFO],
        "job": INFO,
        "wait": [],
        "read": Batch(records=[], next_seq=0, job=INFO),
        "take": Batch(records=[], next_seq=0, job=INFO),
        "stop": INFO,
        "sessions": [session],
        "record_invoke": INFO,
        "invoke_hosts": InvokeRecord(
            job=3, hosts=[InvokeHost("web01", "Failed", 3), InvokeHost("web02", "Completed", 0)]
        ),
    }
    for op in OPS:
        sent = examples.get(op.name)
        wire = json.loads(json.dumps(Response.success(1, sent).to_wire()))
        assert op.parse_result(Response.from_wire(wire).unwrap()) == sent
    with pytest.raises(ProtocolError, match="result: expected a list, got"):
        GET.parse_result(INFO.to_wire())
    with pytest.raises(ProtocolError, match="result: expected null, got 1"):
        REMOVE.parse_result(1)
    assert PING.parse_result("pong") == "pong"
    assert INVOKE_HOSTS.parse_result(None) is None  # no invoke recorded (yet)
    with pytest.raises(ProtocolError, match="InvokeRecord: field 'hosts'"):
        INVOKE_HOSTS.parse_result({"job": 3, "hosts": []})
    with pytest.raises(ProtocolError, match="HostJobInfo: expected an object, got None"):
        JOB.parse_result(None)


# -- FrameStream -------------------------------------------------------------------------------


class FakeByteStream(ByteStream):
    """Hands out ``chunks`` one per ``receive``, then end of stream; keeps what is sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent: list[bytes] = []
        self.asked: list[int] = []
        self.closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        self.asked.append(max_bytes)
        if not self.chunks:
            raise anyio.EndOfStream
        chunk = self.chunks.pop(0)
        assert len(chunk) <= max_bytes
        return chunk

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self.sent.append(item)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


async def receive_all(stream: FrameStream) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(await stream.receive())
        except anyio.EndOfStream:
            return frames


@pytest.mark.anyio
async def test_frame_stream_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        fake = FakeByteStream([c for c in (STREAM[:cut], STREAM[cut:]) if c])
        assert await receive_all(FrameStream(fake)) == FRAMES
    one_by_one = FakeByteStream([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert await receive_all(FrameStream(one_by_one)) == FRAMES


@pytest.mark.anyio
async def test_frame_stream_reads_in_large_chunks() -> None:
    big = encode_frame({"s": "x" * 1_000_000})
    fake = FakeByteStream([big[:10], big[10:]])
    assert (await FrameStream(fake).receive())["s"] == "x" * 1_000_000
    assert fake.asked[0] >= 1 << 18
    assert fake.asked[1] >= len(big) - 10  # the rest of the body in one read


@pytest.mark.anyio
async def test_frame_stream_truncated_frame_at_eof() -> None:
    data = encode_frame({"a": 1})
    for cut in range(1, len(data)):
        stream = FrameStream(FakeByteStream([data[:cut]]))
        message = f"truncated frame: the peer closed the stream {cut} bytes into a frame"
        with pytest.raises(ProtocolError, match=message):
            await stream.receive()


@pytest.mark.anyio
async def test_frame_stream_oversized_frame_refused_without_reading_the_body() -> None:
    fake = FakeByteStream([struct.pack(">I", 1001), b"{" * 1001])
    stream = FrameStream(fake, max_frame=1000)
    with pytest.raises(ProtocolError, match="frame of 1001 bytes exceeds the limit of 1000"):
        await stream.receive()
    assert len(fake.chunks) == 1  # the body was never asked for
    with pytest.raises(ProtocolError, match="frame of 1001 bytes"):
        await stream.receive()  # the connection stays refused
    with pytest.raises(ProtocolError, match="frame of 1008 bytes exceeds the limit of 1000"):
        await stream.send({"s": "x" * 1000})


@pytest.mark.anyio
async def test_frame_stream_send_and_close() -> None:
    fake = FakeByteStream([])
    async with FrameStream(fake) as stream:
        await stream.send({"a": [1]})
        assert stream.max_frame == MAX_FRAME
    assert fake.sent == [encode_frame({"a": [1]})]
    assert fake.closed


class StuckByteStream(FakeByteStream):
    async def send(self, item: bytes) -> None:
        await anyio.sleep_forever()


@pytest.mark.anyio
async def test_a_send_cut_short_breaks_the_connection_for_sending() -> None:
    stream = FrameStream(StuckByteStream([]))
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, {"a": 1})
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    with pytest.raises(anyio.BrokenResourceError, match="earlier send was cut short"):
        await stream.send({"a": 2})


async def socket_pair() -> tuple[UNIXSocketStream, UNIXSocketStream]:
    a, b = socket.socketpair()
    return await UNIXSocketStream.from_socket(a), await UNIXSocketStream.from_socket(b)


@pytest.mark.anyio
async def test_frame_stream_over_a_real_socket() -> None:
    left, right = await socket_pair()
    async with FrameStream(left) as sender, FrameStream(right) as receiver:
        messages = [Request(id=i, op="read", args={"job": i}).to_wire() for i in range(1, 201)]
        big = Response.success(0, "é" * 3_000_000).to_wire()

        async def send_some(part: list[dict[str, Any]]) -> None:
            for message in part:
                await sender.send(message)

        async with anyio.create_task_group() as tg:  # many senders, one frame at a time each
            for k in range(4):
                tg.start_soon(send_some, messages[k::4])
            tg.start_soon(sender.send, big)
            got = [await receiver.receive() for _ in range(len(messages) + 1)]
        assert sorted((m for m in got if m["t"] == "request"), key=lambda m: m["id"]) == messages
        assert big in got
        await sender.stream.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await receiver.receive()


@pytest.mark.anyio
async def test_socket_garbage_truncation_and_oversize() -> None:
    for data, message in [
        (frame(b"\x80garbage"), "not UTF-8"),
        (frame(b"[]"), "not an object"),
        (encode_frame({"a": 1})[:-1], "truncated frame"),
        (struct.pack(">I", MAX_FRAME + 1), "exceeds the limit"),  # and no body ever comes
    ]:
        left, right = await socket_pair()
        async with left, FrameStream(right) as receiver:
            await left.send(data)
            if message == "truncated frame":
                await left.send_eof()
            with anyio.fail_after(5), pytest.raises(ProtocolError, match=message):
                await receiver.receive()


@pytest.mark.anyio
async def test_receive_is_safe_to_cancel_mid_frame() -> None:
    left, right = await socket_pair()
    data = encode_frame({"a": "b" * 1000})
    async with left, FrameStream(right) as receiver:
        await left.send(data[:500])
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver.receive)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        await left.send(data[500:])
        assert await receiver.receive() == {"a": "b" * 1000}
