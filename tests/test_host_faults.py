"""Nothing one connection does can end the job host or another connection (issue 10, items 1
and 3): a real detached host, its real Unix socket, real jobs.

Every test starts a job that prints a line every 0.1 s (session ``a``, then disconnected) and
keeps another controller (``bystander``) connected, does one bad thing to the host's socket, and
then checks (``Victim.check``) that the same host process is alive, the bystander's connection
still answers, ``connect_local("a", create=False)`` reattaches, the job is still Running and
still producing, and every line it had printed is still stored, in order.

The client side runs on asyncio only: what is tested is the host (its own process, always on
asyncio), not the controller's backend.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
import pytest

from asyncjobs import JobState
from asyncjobs._host.client import HostSession, connect_local
from asyncjobs._host.protocol import PROTOCOL_VERSION, Hello, Request, encode_frame
from tests.conftest import host_pid, pid_alive, python

pytestmark = pytest.mark.anyio

#: A job that prints ``line 0``, ``line 1``, ... every 0.1 s until it is stopped.
TICKER: Final = "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.1; done"
#: Lines of the big job: 80 bytes each (``0000042 xxx...``), so that a page of 50,000 of them is
#: a 4 MB answer, far more than a Unix socket buffers.
BIG_LINES: Final = 200_000
BIG: Final = python(
    f"""
    import sys
    pad = "x" * 72
    sys.stdout.write("".join(f"{{i:07d}} {{pad}}\\n" for i in range({BIG_LINES})))
    """
)
SETTLE: Final = 0.5  # seconds for a host that was hurt to die (it stops its jobs first)
FAST: Final = 2.0  # seconds a well-behaved request may take while another client misbehaves


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def big_line(i: int) -> str:
    return f"{i:07d} " + "x" * 72


def log_tail(directory: Path, size: int = 4000) -> str:
    """The end of host.log, for failure messages."""
    try:
        text = (directory / "host.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no host.log)"
    return text[-size:] or "(host.log is empty)"


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def nofile_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of ``pid``, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files limit for pid {pid}")


# -- frames and raw sockets -------------------------------------------------------------------


def hello(session: str | None = "raw", *, create: bool = True) -> bytes:
    return encode_frame(Hello(PROTOCOL_VERSION, "raw test client", session, create).to_wire())


def request(request_id: int, op: str, **args: Any) -> bytes:
    return encode_frame(Request(request_id, op, args).to_wire())


def raw_connect(directory: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.settimeout(timeout)
        sock.connect(str(directory / "host.sock"))
    except BaseException:
        sock.close()
        raise
    return sock


def probe(directory: Path, timeout: float = 10.0) -> bytes:
    """A well-behaved raw client: an observer's hello, then ``disconnect``; all the host said
    (it closes the connection after answering the disconnect)."""
    with raw_connect(directory, timeout) as sock:
        sock.sendall(hello(None, create=False) + request(1, "disconnect"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: whatever the host sent and we did not read makes its next write
    fail with ECONNRESET (a Unix socket resets its peer when closed with unread data)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_at_least(sock: socket.socket, size: int, timeout: float = 10.0) -> int:
    """Read until ``size`` bytes came (or the host closed, or ``timeout``): how many came."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < size and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        got += len(chunk)
    return got


# -- the job that must survive ----------------------------------------------------------------


@attrs.define
class Victim:
    """The host under test, the job that must outlive the bad thing, and a bystander."""

    directory: Path
    pid: int
    job: int
    seen: list[str]  # the job's lines stored before the bad thing
    bystander: HostSession
    big: int | None = None  # a finished job of BIG_LINES lines, if asked for

    def assert_host_alive(self, what: str = "") -> None:
        now = host_pid(self.directory)
        listening = (self.directory / "host.sock").exists()  # a dying host removes it
        assert pid_alive(self.pid) and now == self.pid and listening, (
            f"the job host (pid {self.pid}) died{what}: alive={pid_alive(self.pid)}, "
            f"host.lock now says {now}, host.sock exists: {listening}"
            f"\n--- host.log ---\n{log_tail(self.directory)}"
        )

    async def check(self) -> None:
        """The host, the bystander's connection, the session, the job and its records are
        all as they were: the job still Running, still producing, no line lost."""
        await anyio.sleep(SETTLE)
        self.assert_host_alive()
        with anyio.fail_after(10):
            info = await self.bystander.jobs.job(self.job)  # another connection: still served
        assert info.state is JobState.RUNNING, (info, log_tail(self.directory))
        async with connect_local(name="a", create=False) as a:
            self.assert_host_alive(" (reattaching to session 'a' started a new one)")
            info = await a.jobs.job(self.job)
            assert info.state is JobState.RUNNING, (info, log_tail(self.directory))
            lines = [r.value for r in await a.jobs.read(self.job)]
            assert lines[: len(self.seen)] == self.seen
            assert lines == [f"line {i}" for i in range(len(lines))]
            with anyio.fail_after(10):  # and its output is still being stored
                while (await a.jobs.job(self.job)).next_seq <= len(lines):
                    await anyio.sleep(0.05)
            if self.big is not None:
                records = await a.jobs.read(self.big)
                assert len(records) == BIG_LINES
                assert [r.value for r in records[:: BIG_LINES // 10]] == [
                    big_line(i) for i in range(0, BIG_LINES, BIG_LINES // 10)
                ]
                assert records[-1].value == big_line(BIG_LINES - 1)
        self.assert_host_alive()


@asynccontextmanager
async def victim(directory: Path, *, big: bool = False) -> AsyncIterator[Victim]:
    """Start the ticker (session "a", disconnected again) and a bystander controller; with
    ``big``, a finished job of ``BIG_LINES`` lines too."""
    async with connect_local(name="a") as a:
        job = await a.jobs.start_command(TICKER, name="ticker")
        big_id = None
        if big:
            big_job = await a.jobs.start_command(BIG, name="big")
            [done] = await a.jobs.wait(big_job, timeout=60)
            assert done.state is JobState.COMPLETED and done.next_seq == BIG_LINES, done
            big_id = big_job.id
        with anyio.fail_after(10):
            while (await a.jobs.job(job)).next_seq < 3:
                await anyio.sleep(0.05)
        seen = [r.value for r in await a.jobs.read(job)]
    pid = host_pid(directory)
    assert pid is not None and pid_alive(pid)
    async with connect_local(name="bystander") as bystander:
        yield Victim(directory, pid, job.id, seen, bystander, big_id)


def in_thread(fn: Any, *args: Any) -> Any:
    return anyio.to_thread.run_sync(fn, *args)


# -- item 1: a connection that goes away ------------------------------------------------------


async def test_a_client_that_connects_and_closes(hostdir: Path) -> None:
    async with victim(hostdir) as v:
        raw_connect(hostdir).close()
        await v.check()


async def test_a_client_that_says_hello_and_closes_without_reading(hostdir: Path) -> None:
    async with victim(hostdir) as v:

        def run() -> None:
            with raw_connect(hostdir) as sock:
                sock.sendall(hello("raw"))

        await in_thread(run)
        await v.check()
        # The session it opened is disconnected, not left "in use" by a connection that is gone.
        with anyio.fail_after(10):
            async with connect_local(name="raw", create=False) as again:
                assert again.name == "raw"
        v.assert_host_alive()


async def test_a_silent_client_that_then_closes(hostdir: Path) -> None:
    async with victim(hostdir) as v:
        sock = raw_connect(hostdir)
        await anyio.sleep(1.0)  # the host waits for its hello
        sock.close()
        await v.check()


async def test_200_connections_opened_and_closed_one_after_another(hostdir: Path) -> None:
    async with victim(hostdir) as v:

        def run() -> int:
            for n in range(200):
                try:
                    sock = raw_connect(hostdir)
                except OSError:  # the host is gone
                    return n
                sock.close()
            return 200

        opened = await in_thread(run)
        await v.check()
        assert opened == 200


async def test_200_connections_opened_at_once_then_closed(hostdir: Path) -> None:
    async with victim(hostdir) as v:

        def run() -> None:
            socks = [raw_connect(hostdir) for _ in range(200)]
            time.sleep(0.3)  # all accepted, all waiting for a hello
            for sock in socks:
                sock.close()

        await in_thread(run)
        await v.check()


async def test_a_reset_while_a_big_read_answer_is_in_flight(hostdir: Path) -> None:
    async with victim(hostdir, big=True) as v:
        assert v.big is not None
        big = v.big

        def run(session: str) -> None:
            sock = raw_connect(hostdir)
            sock.sendall(hello(session) + b"".join(request(i, "read", job=big) for i in (1, 2, 3)))
            assert recv_at_least(sock, 256 * 1024) >= 256 * 1024  # the answers are coming
            reset(sock)  # ... and most of them are unread: the host's writes get ECONNRESET

        for n in range(5):
            await in_thread(run, f"reset{n}")
            await anyio.sleep(SETTLE)
            v.assert_host_alive(f" after {n + 1} resets")
        await v.check()


def spawn_reader(directory: Path, session: str, job: int | None) -> subprocess.Popen[str]:
    """A controller process that reads ``job`` whole, again and again; it says "reading"."""
    code = f"""
        import anyio
        from asyncjobs._host.client import connect_local
        async def main():
            async with connect_local(name={session!r}) as s:
                print("reading", flush=True)
                while True:
                    await s.jobs.read({job})
        anyio.run(main)
        """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(os.environ, ASYNCJOBS_HOST_DIR=str(directory)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_controller_killed_while_it_reads_a_big_job(hostdir: Path) -> None:
    async with victim(hostdir, big=True) as v:
        for n, delay in enumerate((0.05, 0.2, 0.5)):
            reader = spawn_reader(hostdir, f"reader{n}", v.big)
            try:
                assert reader.stdout is not None
                line = await in_thread(reader.stdout.readline)
                assert line == "reading\n", reader.stderr.read() if reader.stderr else ""
                await anyio.sleep(delay)  # a page is on its way
            finally:
                reader.kill()
                await in_thread(reader.communicate)
            await anyio.sleep(SETTLE)
            v.assert_host_alive(f" after {n + 1} killed readers")
        await v.check()


# -- item 1: bad frames, and then the client goes away without reading the answer -------------

_BAD_FRAMES: Final = {
    "garbage length prefix": b"\xff\xff\xff\xfe" + b"\x00garbage" * 8,
    "oversized frame": struct.pack(">I", 17 * 1024 * 1024) + b"{" * 4096,
    "random bytes": random.Random(10).randbytes(4096),
    "not JSON": struct.pack(">I", 5) + b"hello",
    "JSON but not an object": struct.pack(">I", 7) + b"[1,2,3]",
    "not UTF-8": struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc",
    "a request before the hello": request(1, "ping"),
    "a hello then garbage": hello("garbage") + b"\x00\x00\x00\x09not json!",
    "a hello then an oversized frame": hello("oversized") + struct.pack(">I", 0xFFFFFFFF),
    "a hello then a frame that is not a request": hello("notreq") + struct.pack(">I", 2) + b"{}",
    "a hello then a truncated frame": hello("truncated") + request(1, "ping")[:-3],
    "a hello then a request of an unknown op": hello("unknown")
    + encode_frame({"t": "request", "id": 1, "op": "nope", "args": {}}),
}


@pytest.mark.parametrize("reads", [False, True], ids=["closes-at-once", "reads-the-answer"])
@pytest.mark.parametrize("data", list(_BAD_FRAMES.values()), ids=list(_BAD_FRAMES))
async def test_a_bad_frame(hostdir: Path, data: bytes, reads: bool) -> None:
    async with victim(hostdir) as v:

        def run() -> None:
            with raw_connect(hostdir) as sock, suppress(OSError):  # the host may close first
                sock.sendall(data)
                if reads:
                    sock.shutdown(socket.SHUT_WR)
                    recv_at_least(sock, 1 << 20, timeout=5)

        await in_thread(run)
        await v.check()


# -- item 1: out of descriptors ---------------------------------------------------------------


@contextmanager
def host_with_nofile(directory: Path, soft: int, hard: int) -> Iterator[int]:
    """Start the job host for ``directory`` as ``_host.directory.spawn_host`` does (``python -m
    asyncjobs._host.daemon --daemonize``, stderr on host.log), under RLIMIT_NOFILE (soft, hard); its
    pid once its socket answers. The ``hostdir`` fixture stops it."""
    limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))"
    code = (
        f"import os, resource, sys; {limit}; "
        "os.execv(sys.executable, [sys.executable, '-m', 'asyncjobs._host.daemon', '--daemonize'])"
    )
    env = dict(os.environ, ASYNCJOBS_HOST_DIR=str(directory))
    with open(directory / "host.log", "ab") as log:
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            check=True,
            timeout=30,
        )
    deadline = time.monotonic() + 15
    while True:
        try:
            assert b'"welcome"' in probe(directory)
            break
        except OSError:
            assert time.monotonic() < deadline, log_tail(directory)
            time.sleep(0.02)
    pid = host_pid(directory)
    assert pid is not None and pid_alive(pid), log_tail(directory)
    yield pid


async def test_the_host_raises_its_soft_descriptor_limit_to_the_hard_one(hostdir: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with host_with_nofile(hostdir, 96, hard) as pid:
        assert nofile_limits(pid) == (hard, hard), log_tail(hostdir)


async def test_out_of_descriptors_the_host_refuses_for_a_moment_and_lives(hostdir: Path) -> None:
    limit = 96
    with host_with_nofile(hostdir, limit, limit) as pid:
        assert nofile_limits(pid) == (limit, limit)
        async with victim(hostdir) as v:
            assert v.pid == pid

            def flood() -> int:
                socks = []
                try:
                    for _ in range(limit + 60):  # more than the host has descriptors
                        try:
                            socks.append(raw_connect(hostdir, timeout=2))
                        except OSError:
                            break  # the backlog is full: enough
                    time.sleep(1.0)  # the host is out of descriptors for a while
                    return len(socks)
                finally:
                    for sock in socks:
                        sock.close()

            opened = await in_thread(flood)
            assert opened > limit, f"only {opened} connections could be opened"
            await v.check()  # a well-behaved client is served again, the job runs on


# -- item 3: one client cannot starve the others ----------------------------------------------


async def test_a_client_that_pipelines_big_reads_and_never_reads_starves_no_one(
    hostdir: Path,
) -> None:
    async with victim(hostdir, big=True) as v:
        assert v.big is not None
        baseline = rss(v.pid)
        peak = baseline
        hog = raw_connect(hostdir)
        try:
            pipelined = b"".join(request(i, "read", job=v.big, limit=50_000) for i in range(1, 101))
            hog.sendall(hello("hog") + pipelined)  # and never a byte read
            latencies: dict[str, list[float]] = {"invoke": [], "get": []}

            async def sample_rss() -> None:
                nonlocal peak
                while True:
                    with suppress(OSError):
                        peak = max(peak, rss(v.pid))
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample_rss)
                for _ in range(5):
                    for what in ("invoke", "get"):
                        began = time.monotonic()
                        with anyio.move_on_after(10):  # far past FAST: no need to wait more
                            if what == "invoke":
                                assert await v.bystander.invoke("echo ok") == ["ok"]
                            else:
                                await v.bystander.jobs.get()
                        latencies[what].append(round(time.monotonic() - began, 3))
                    await anyio.sleep(0.3)
                tg.cancel_scope.cancel()
            v.assert_host_alive(" while one client pipelined reads")
            grown = (peak - baseline) / 2**20
            slow = max(max(x) for x in latencies.values())
            assert slow < FAST and grown < 300, (
                f"while one client held 100 unread big answers, another controller's requests "
                f"took {latencies} s (at most {FAST} s each; 10 s means it was given up) and "
                f"the job host's RSS grew by {grown:.0f} MB (at most 300 MB)"
            )
        finally:
            reset(hog)
        await v.check()
