"""Fuzz the job host's socket (issue 10): a hypothesis rule-based state machine drives many raw
connections to ONE real job host (started once for the whole run) with valid and invalid
frames, random bytes, truncated frames, closes and resets at any point, reading a little or
never. After every step the host is the same live process; after every example a well-behaved
client is served within ``FAST`` seconds (while the fuzzing connections are still open, and
after they are closed), and the jobs started before the fuzzing have every stored record.

The frames are built from ``protocol.OPS`` (every op, every argument); a new op or argument
there fails ``test_every_op_and_argument_has_a_strategy`` until it gets one here.

The host state outlives each example, so a failure is not shrunk (a dead host fails every
later example): what is reported is the first failing example, its steps, and the seed
(``ASYNCJOBS_FUZZ_SEED=N`` reruns the same examples).
"""

from __future__ import annotations

import base64
import os
import random
import socket
import struct
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from asyncjobs import JobState
from asyncjobs._core.models import STREAMS, StreamName
from asyncjobs._host.client import HostSession, connect_local, open_host_session
from asyncjobs._host.directory import connect_socket
from asyncjobs._host.protocol import KINDS, OPS, PROTOCOL_VERSION, encode_frame
from tests.conftest import host_pid, pid_alive

ARGS: Final = {op.name: op.fields for op in OPS}  # the fields of every op, by its name
FAST: Final = 2.0  # seconds a well-behaved client may take to be served
IO_TIMEOUT: Final = 0.2  # seconds a fuzzing socket may block in one send or receive
REF_SESSION: Final = "fuzz-ref"  # the session of the jobs that must survive; never fuzzed
SESSIONS: Final = ("fz1", "fz2", "fz3")  # the sessions fuzzing hellos name
#: The jobs started before the fuzzing (the first two of a fresh host): never stopped or
#: removed by a fuzzing request, so whatever happens to them is the host's doing.
TICKER_ID: Final = 1
DONE_ID: Final = 2
PROTECTED: Final = frozenset({TICKER_ID, DONE_ID})
TICKER: Final = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"
DONE: Final = "for i in $(seq 1 3000); do echo out $i; echo err $i >&2; done"

SETTINGS: Final = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the host's state carries over
    database=None,
    derandomize=False,
    print_blob=True,
    report_multiple_bugs=False,
)


def log_tail(directory: Path, size: int = 4000) -> str:
    try:
        text = (directory / "host.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no host.log)"
    return text[-size:] or "(host.log is empty)"


# -- the world the fuzzing must not hurt -------------------------------------------------------


Row = tuple[int, StreamName, Any]  # seq, stream, value


@attrs.define
class World:
    directory: Path
    pid: int
    ticker_seen: list[str]
    done_rows: list[Row]
    #: The steps after which the host first failed a check. Every later example fails too
    #: (the host is shared), and hypothesis reports its replay of the failing example against
    #: the hurt host: this says what hurt it.
    first_failure: str | None = None

    def alive(self) -> bool:
        """The same host process, and its socket still there (a dying host removes it)."""
        return (
            pid_alive(self.pid)
            and host_pid(self.directory) == self.pid
            and (self.directory / "host.sock").exists()
        )

    def note_failure(self, steps: list[str]) -> None:
        if self.first_failure is None:
            self.first_failure = "\n  ".join(steps) or "(no step)"

    def note_death(self, steps: list[str]) -> None:
        if not self.alive():
            self.note_failure(steps)

    def fail(self, what: str, steps: list[str]) -> str:
        self.note_failure(steps)
        return (
            f"{what}; the host first failed after these steps of one example:\n  "
            f"{self.first_failure}\n--- host.log ---\n{log_tail(self.directory)}"
        )

    def assert_alive(self, steps: list[str]) -> None:
        if not self.alive():
            raise AssertionError(self.fail(f"the job host (pid {self.pid}) died", steps))

    def served(self, steps: list[str], *, records: bool) -> float:
        """A well-behaved client (an observer, never starting a host) is served within
        ``FAST`` s; with ``records``, the jobs from before the fuzzing are checked too (that
        part is not timed: it reads thousands of records). Returns the served time."""
        self.assert_alive(steps)
        try:
            took = anyio.run(self._served, records)
        except Exception as exc:
            raise AssertionError(
                self.fail(f"a well-behaved client was not served, or found ({exc!r})", steps)
            ) from exc
        if took >= FAST:
            raise AssertionError(
                self.fail(f"a well-behaved client took {took:.2f} s (at most {FAST} s)", steps)
            )
        self.assert_alive(steps)
        return took

    async def _served(self, records: bool) -> float:
        began = time.monotonic()
        with anyio.move_on_after(10):  # past FAST anyway: fail with the time it took
            stream = await connect_socket(self.directory, start=False)
            session = await open_host_session(stream, name=None, create=False, location="localhost")
            try:
                infos = await session.jobs.get()
                await session.jobs.job(TICKER_ID)
                took = time.monotonic() - began
                if records:
                    await self._intact(session, {i.id: i.state for i in infos})
            finally:
                await session.disconnect()
            return took
        return time.monotonic() - began

    async def _intact(self, session: HostSession, states: dict[int, JobState]) -> None:
        # Every fuzzing connection is closed: the host noticed, and no session is left in use
        # by a connection that is gone (it could never be reattached).
        deadline = time.monotonic() + FAST
        while opened := [i.name for i in await session.sessions() if i.state == "Opened"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"sessions left Opened by closed connections: {opened}")
            await anyio.sleep(0.05)
        assert states.get(TICKER_ID) is JobState.RUNNING, states.get(TICKER_ID)
        assert states.get(DONE_ID) is JobState.COMPLETED, states.get(DONE_ID)
        rows = [(r.seq, r.stream, r.value) for r in await session.jobs.read(DONE_ID)]
        assert rows == self.done_rows, "the finished job's stored records changed"
        ticks = [r.value for r in await session.jobs.read(TICKER_ID)]
        assert ticks[: len(self.ticker_seen)] == self.ticker_seen
        assert ticks == [f"tick {i}" for i in range(len(ticks))]


async def start_world(directory: Path) -> World:
    async with connect_local(name=REF_SESSION) as s:
        ticker = await s.jobs.start_command(TICKER, name="ticker")
        done = await s.jobs.start_command(DONE, name="done")
        assert (ticker.id, done.id) == (TICKER_ID, DONE_ID)
        [info] = await s.jobs.wait(done, timeout=60)
        assert info.state is JobState.COMPLETED and info.next_seq == 6000, info
        rows = [(r.seq, r.stream, r.value) for r in await s.jobs.read(done)]
        with anyio.fail_after(10):
            while (await s.jobs.job(ticker)).next_seq < 3:
                await anyio.sleep(0.05)
        seen = [r.value for r in await s.jobs.read(ticker)]
    pid = host_pid(directory)
    assert pid is not None and pid_alive(pid)
    return World(directory, pid, seen, rows)


# -- frames ------------------------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
#: Any JSON value, tags (``$b``, ``$f``, ``$d``, unknown ones) included.
JSON: Final = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["$b", "$f", "$d", "$x", "a", "job"]), inner, max_size=2)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
#: Junk for a field of stop/remove: never a protected job's id.
SAFE_JSON: Final = JSON.filter(lambda v: not (type(v) is int and v in PROTECTED))

JOB: Final = st.integers(1, 40) | st.sampled_from([0, -1, 2**63, 2**64])
SAFE_JOB: Final = JOB.filter(lambda i: i not in PROTECTED)
SECONDS: Final = st.none() | st.floats(0, 0.3) | st.sampled_from([-1.0, 1e300, {"$f": "nan"}])
STREAM_LIST: Final = st.none() | st.lists(st.sampled_from([*STREAMS, "nope"]), max_size=8)
LIMIT: Final = st.none() | st.integers(-1, 100_001)
BYTES_TAG: Final = st.binary(max_size=64).map(lambda b: {"$b": base64.b64encode(b).decode()})

#: A plausible value of every argument of every op: mostly valid, some just out of range.
VALID: Final[dict[tuple[str, str], st.SearchStrategy[Any]]] = {
    ("start_command", "command"): st.sampled_from(
        [
            "true",
            "echo fuzz",
            ["echo", "fuzz"],
            "sleep 0.2",
            "seq 1 500",
            "exit 3",
            ["/nonexistent/fuzz"],
            "",
            [],
            [""],
            "echo a\x00b",
            ["echo", "a\x00b"],
        ]
    ),
    ("start_command", "name"): st.none() | st.text(max_size=10),
    ("start_command", "cwd"): st.none() | st.sampled_from(["/", "/tmp", "/nonexistent", ""]),
    ("start_command", "env"): st.none()
    | st.dictionaries(st.sampled_from(["FUZZ", "A_B", "", "A=B"]), st.text(max_size=5), max_size=2),
    ("start_command", "input"): st.none() | st.text(max_size=20) | BYTES_TAG,
    ("start_command", "buffer"): st.none()
    | st.dictionaries(
        st.sampled_from(["max_items", "max_bytes", "mode", "nope"]),
        st.none() | st.integers(-1, 10**6) | st.sampled_from(["spill", "block", "drop", "?"]),
        max_size=3,
    ),
    ("get", "id"): st.none() | JOB,
    ("get", "name"): st.none() | st.sampled_from(["*", "ticker", "Job*", "[", ""]),
    ("get", "state"): st.none() | st.sampled_from([*(s.value for s in JobState), "Nope"]),
    ("get", "kind"): st.none() | st.sampled_from([*KINDS, "Nope"]),
    ("get", "location"): st.none() | st.sampled_from(["*", "localhost", ""]),
    ("get", "session_name"): st.none() | st.sampled_from([*SESSIONS, REF_SESSION, ""]),
    ("get", "has_more_data"): st.none() | st.booleans(),
    ("job", "job"): JOB,
    ("wait", "jobs"): st.lists(JOB, max_size=3),
    ("wait", "any"): st.booleans(),
    ("wait", "timeout"): SECONDS,
    ("read", "job"): JOB,
    ("read", "from_seq"): st.integers(-1, 10_000),
    ("read", "streams"): STREAM_LIST,
    ("read", "limit"): LIMIT,
    ("read", "wait"): SECONDS,
    ("read", "unreceived"): st.booleans(),
    ("take", "job"): JOB,
    ("take", "streams"): STREAM_LIST,
    ("take", "limit"): LIMIT,
    ("take", "wait"): SECONDS,
    ("ack", "lease"): st.integers(1, 20) | st.sampled_from([0, -1, 2**63]),
    ("ack", "count"): st.integers(-1, 100_001),
    ("ack", "release"): st.booleans(),
    ("stop", "job"): SAFE_JOB,
    ("remove", "job"): SAFE_JOB,
    ("remove", "force"): st.booleans(),
    ("record_invoke", "command"): st.sampled_from(["uptime", "", "exit 3"]),
    ("record_invoke", "location"): st.sampled_from(["web01", "web[01-02]", ""]),
    ("record_invoke", "state"): st.sampled_from(["Completed", "Failed", "Stopped", "Running"]),
    ("record_invoke", "exit_status"): st.none() | st.integers(-1, 256),
    ("record_invoke", "started_at"): st.floats(-1, 2e9, allow_nan=False),
    ("record_invoke", "finished_at"): st.floats(-1, 2e9, allow_nan=False),
    ("record_invoke", "hosts"): st.lists(
        st.fixed_dictionaries(
            {
                "host": st.sampled_from(["web01", "u@web02:22", ""]),
                "state": st.sampled_from([*(s.value for s in JobState), "Nope"]),
                "exit_status": st.none() | st.integers(-1, 256),
            }
        ),
        max_size=3,
    ),
    ("invoke_hosts", "job"): st.none() | JOB,
    # Warm invokes connect for real: only to loopback ports nothing listens on (port 1).
    ("warm_invoke", "targets"): st.lists(
        st.sampled_from(["127.0.0.1:1", "u@127.0.0.2:1", "[::1]:1"]), min_size=1, max_size=3
    ),
    ("warm_invoke", "command"): st.sampled_from(["true", "", "exit 3"]),
    ("warm_invoke", "options"): st.sampled_from(
        [{}, {"connect_timeout": 0.5}, {"nope": 1}, {"known_hosts": None}]
    ),
    ("warm_invoke", "throttle"): st.integers(0, 4),
    ("warm_invoke", "timeout"): SECONDS,
    ("warm_invoke", "idle_timeout"): SECONDS,
    ("warm_invoke", "retries"): st.integers(-1, 2),
    ("warm_invoke", "max_startups"): st.none() | st.integers(0, 3),
    ("warm_invoke", "input"): st.none() | BYTES_TAG,
    ("warm_invoke", "fail_fast"): st.booleans(),
    ("warm_invoke", "persist"): st.floats(-1, 2, allow_nan=False),
    ("warm_invoke", "host_buffer"): st.integers(0, 1 << 20),
    ("warm_events", "run"): JOB,
    ("warm_events", "wait"): SECONDS,
    ("warm_events", "paused"): st.lists(st.integers(-1, 40), max_size=4),
    ("warm_stop", "run"): JOB,
}
_UNSAFE_OPS: Final = frozenset({"stop", "remove"})


def test_every_op_and_argument_has_a_strategy() -> None:
    needed = {(op, field) for op, spec in ARGS.items() for field in spec}
    assert needed <= set(VALID), f"no strategy in VALID for {sorted(needed - set(VALID))}"


@st.composite
def request_frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """A request frame: any op (or a bad one), its arguments valid, missing, junk or extra."""
    op = draw(st.sampled_from(list(ARGS)) | st.sampled_from(["nope", "", "_op_ping", "__init__"]))
    junk = SAFE_JSON if op in _UNSAFE_OPS or op not in ARGS else JSON
    args: dict[str, Any] = {}
    for field in ARGS.get(op, {}):
        how = draw(st.sampled_from(["valid"] * 6 + ["missing", "junk"]))
        if (op, field) == ("warm_invoke", "targets"):
            how = "valid"  # never a junk host name: a fuzzer's traffic stays on loopback
        if how == "valid":
            args[field] = draw(VALID.get((op, field), junk))  # see the test above
        elif how == "junk":
            args[field] = draw(junk)
    if draw(st.integers(0, 9)) == 0:
        args[draw(st.sampled_from(["nope", "session", "job", "$b"]))] = draw(junk)
    frame: dict[str, Any] = {"t": "request", "id": draw(st.integers(1, 2**63 - 1)), "op": op}
    frame["args"] = args
    if draw(st.integers(0, 9)) == 0:  # the envelope itself is wrong
        key = draw(st.sampled_from(["t", "id", "op", "args", "extra"]))
        if draw(st.booleans()) and key in frame:
            del frame[key]
        else:
            frame[key] = draw(junk)
    return f"request {frame!r}", encode_frame(frame)


@st.composite
def hello_frames(draw: st.DrawFn) -> tuple[str, bytes]:
    """A hello: mostly valid (one of the fuzzing sessions, or an observer), sometimes not."""
    frame: dict[str, Any] = {
        "t": "hello",
        "version": draw(st.sampled_from([PROTOCOL_VERSION] * 8 + [0, 99])),
        "client": "fuzz",
        "session": draw(st.sampled_from([*SESSIONS, None])),
        "create": draw(st.booleans()),
        "idle_timeout": draw(st.none() | st.floats(0, 5)),
        "output_buffering": draw(st.sampled_from([None, "block", "drop"])),
    }
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from([*frame, "extra"]))
        value = draw(JSON.filter(lambda v: v != REF_SESSION))
        if draw(st.booleans()) and key in frame:
            del frame[key]
        else:
            frame[key] = value
    return f"hello {frame!r}", encode_frame(frame)


BAD_FRAMES: Final = {
    "oversized length": struct.pack(">I", 0xFFFFFFFF),
    "just over the limit": struct.pack(">I", 16 * 1024 * 1024 + 1) + b"{}",
    "not JSON": struct.pack(">I", 5) + b"hello",
    "not UTF-8": struct.pack(">I", 2) + b"\xff\xfe",
    "JSON array": struct.pack(">I", 2) + b"[]",
    "NaN": struct.pack(">I", 3) + b"NaN",
    "deep nesting": struct.pack(">I", 200_000) + b"[" * 100_000 + b"]" * 100_000,
    "empty frame": struct.pack(">I", 0),
}


# -- the machine -------------------------------------------------------------------------------


@attrs.define(eq=False)
class Conn:
    n: int
    sock: socket.socket
    closed: bool = False

    def __repr__(self) -> str:
        return f"conn{self.n}"


class HostSocketMachine(RuleBasedStateMachine):
    world: World  # set by the test, before the machine runs

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.all: list[Conn] = []
        self.steps: list[str] = []

    def step(self, text: str) -> None:
        self.steps.append(text[:300])
        note(text[:300])

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            return
        with suppress(OSError):  # the host closed it, or stopped reading: either is its right
            conn.sock.sendall(data)

    @rule(target=conns)
    def connect(self) -> Conn:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(IO_TIMEOUT * 10)
        conn = Conn(len(self.all), sock)
        self.step(f"{conn} = connect()")
        try:
            sock.connect(str(self.world.directory / "host.sock"))
        except OSError as exc:
            self.step(f"  connect failed: {exc!r}")
            conn.closed = True
            sock.close()
        else:
            sock.settimeout(IO_TIMEOUT)
        self.all.append(conn)
        return conn

    @rule(conn=conns, frame=hello_frames())
    def say_hello(self, conn: Conn, frame: tuple[str, bytes]) -> None:
        self.step(f"{conn}: send {frame[0]}")
        self.send(conn, frame[1])

    @rule(conn=conns, frame=request_frames())
    def send_request(self, conn: Conn, frame: tuple[str, bytes]) -> None:
        self.step(f"{conn}: send {frame[0]}")
        self.send(conn, frame[1])

    @rule(conn=conns, count=st.integers(1, 30), limit=st.sampled_from([1000, 50_000, 100_000]))
    def pipeline_reads(self, conn: Conn, count: int, limit: int) -> None:
        self.step(f"{conn}: send {count} reads of job {DONE_ID} (limit {limit}), never read")
        frames = (
            encode_frame(
                {"t": "request", "id": i, "op": "read", "args": {"job": DONE_ID, "limit": limit}}
            )
            for i in range(1, count + 1)
        )
        self.send(conn, b"".join(frames))

    @rule(conn=conns, data=st.binary(min_size=1, max_size=512))
    def send_bytes(self, conn: Conn, data: bytes) -> None:
        self.step(f"{conn}: send bytes {data!r}")
        self.send(conn, data)

    @rule(conn=conns, frame=request_frames() | hello_frames(), cut=st.floats(0, 1))
    def send_truncated(self, conn: Conn, frame: tuple[str, bytes], cut: float) -> None:
        data = frame[1][: max(1, int(len(frame[1]) * cut) - 1)]
        self.step(f"{conn}: send the first {len(data)} of {len(frame[1])} bytes of {frame[0]}")
        self.send(conn, data)

    @rule(conn=conns, kind=st.sampled_from(sorted(BAD_FRAMES)))
    def send_bad_frame(self, conn: Conn, kind: str) -> None:
        self.step(f"{conn}: send a bad frame: {kind}")
        self.send(conn, BAD_FRAMES[kind])

    @rule(conn=conns, size=st.integers(1, 1 << 16))
    def read_a_little(self, conn: Conn, size: int) -> None:
        self.step(f"{conn}: read up to {size} bytes")
        if not conn.closed:
            with suppress(OSError):
                conn.sock.recv(size)

    @rule(conn=conns)
    def half_close(self, conn: Conn) -> None:
        self.step(f"{conn}: shutdown(SHUT_WR)")
        if not conn.closed:
            with suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)

    @rule(conn=consumes(conns))
    def close(self, conn: Conn) -> None:
        self.step(f"{conn}: close")
        conn.closed = True
        conn.sock.close()

    @rule(conn=consumes(conns))
    def reset(self, conn: Conn) -> None:
        self.step(f"{conn}: close with SO_LINGER 0 (reset)")
        self._reset(conn)

    @rule(
        conn=consumes(conns),
        frame=hello_frames() | request_frames(),
        how=st.sampled_from(["close", "reset"]),
    )
    def send_and_go(self, conn: Conn, frame: tuple[str, bytes], how: str) -> None:
        """Gone before the host answers: its answer meets a closed (or reset) socket."""
        self.step(f"{conn}: send {frame[0]}, then {how} at once")
        self.send(conn, frame[1])
        if how == "reset":
            self._reset(conn)
        else:
            conn.closed = True
            conn.sock.close()

    @rule(
        conn=consumes(conns),
        session=st.sampled_from(SESSIONS),
        create=st.booleans(),
        how=st.sampled_from(["close", "reset"]),
    )
    def hello_and_go(self, conn: Conn, session: str, create: bool, how: str) -> None:
        """A valid hello for a session, and gone before the welcome: the session must be
        left Disconnected, not in use by a connection that is no more."""
        frame = {
            "t": "hello", "version": PROTOCOL_VERSION, "client": "fuzz", "session": session,
            "create": create, "idle_timeout": None, "output_buffering": None,
        }  # fmt: skip
        self.send_and_go(conn, (f"hello {frame!r}", encode_frame(frame)), how)

    @staticmethod
    def _reset(conn: Conn) -> None:
        conn.closed = True
        with suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()

    @invariant()
    def host_alive(self) -> None:
        # Noted, not raised: the steps of an example must not depend on the host's state (a
        # replay of the failing example runs them all again); teardown fails it.
        self.world.note_death(self.steps)

    def teardown(self) -> None:
        try:
            # While the fuzzing connections are still open (and unread) ...
            self.world.served([*self.steps, "(a well-behaved client)"], records=False)
        finally:
            for conn in self.all:
                if not conn.closed:
                    conn.closed = True
                    conn.sock.close()
        time.sleep(0.05)  # ... and once they are gone
        self.world.served([*self.steps, "(all closed; a well-behaved client)"], records=True)


@pytest.mark.timeout(180)
def test_fuzz_the_host_socket(hostdir: Path) -> None:
    world = anyio.run(start_world, hostdir)
    HostSocketMachine.world = world
    fuzz_seed = int(os.environ.get("ASYNCJOBS_FUZZ_SEED") or random.randrange(2**32))
    began = time.monotonic()
    try:
        run_state_machine_as_test(hypothesis_seed(fuzz_seed)(HostSocketMachine), settings=SETTINGS)
        # And after the whole run: the same host, serving, every record in place.
        world.served(["(the whole fuzzing run)"], records=True)
    except BaseException as exc:
        exc.add_note(
            f"fuzz seed {fuzz_seed}: ASYNCJOBS_FUZZ_SEED={fuzz_seed} reruns these examples; "
            f"{time.monotonic() - began:.1f} s in"
        )
        raise
