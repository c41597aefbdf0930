"""The local job host: a real detached process with its real store on disk, driven through
``connect_local`` from this process and from child processes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from asyncjobs import (
    AsyncJobsError,
    JobArgumentError,
    JobState,
    JobStateError,
    NoSuchJob,
    ProtocolError,
)
from asyncjobs._core.lines import MAX_LINE, LineSplitter
from asyncjobs._host.client import connect_local, get_local_sessions
from asyncjobs._host.hosted import LinePacker, unpack_value
from asyncjobs._host.protocol import PROTOCOL_VERSION
from tests.conftest import eventually, host_pid, pid_alive, python

pytestmark = pytest.mark.anyio


def child(code: str, directory: Path) -> subprocess.Popen[str]:
    """A separate controller process (another 'shell')."""
    env = dict(os.environ, ASYNCJOBS_HOST_DIR=str(directory))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_jobs_run_on_the_host_and_keep_their_records(hostdir: Path) -> None:
    async with connect_local(name="build") as s:
        assert s.name == "build"
        job = await s.jobs.start_command(
            "for i in 1 2 3; do echo line $i; done; echo oops >&2; exit 2", name="b"
        )
        [done] = await s.jobs.wait(job, timeout=30)
        assert done.state is JobState.FAILED and done.exit_status == 2
        assert "exited with status 2" in (done.reason or "")
        kept = await s.jobs.receive_records(job, keep=True)
        assert [(r.seq, r.stream, r.value) for r in kept] == [
            (0, "output", "line 1"),
            (1, "output", "line 2"),
            (2, "output", "line 3"),
            (3, "error", "oops"),
        ]
        assert await s.jobs.read(job, 2) == kept[2:]
        assert await s.jobs.receive(job) == ["line 1", "line 2", "line 3"]
        assert await s.jobs.receive(job) == []
        assert (await s.jobs.job(job)).has_more_data  # the error record is not received yet
        assert [r.value for r in await s.jobs.receive_records(job)] == ["oops"]
        assert not (await s.jobs.job(job)).has_more_data
        assert await s.jobs.read(job) == kept  # keep reads from any seq, received or not
    pid = host_pid(hostdir)
    assert pid is not None and pid_alive(pid)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[1]) != os.getpid()  # not our child: detached
    assert int(stat[3]) != os.getsid(0)  # a session of its own (setsid, then a second fork)
    assert int(stat[4]) == 0  # and no controlling terminal
    assert (hostdir.stat().st_mode & 0o777) == 0o700


async def test_stream_follows_a_running_job(hostdir: Path) -> None:
    async with connect_local() as s:
        job = await s.jobs.start_command(
            "i=0; while [ $i -lt 5 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done"
        )
        assert [x async for x in s.jobs.stream(job)] == [f"tick {i}" for i in range(5)]
        assert await s.invoke("echo invoked") == ["invoked"]


async def test_detached_job_outlives_its_controller_and_is_received_later(hostdir: Path) -> None:
    proc = child(
        """
        import anyio
        from asyncjobs._host.client import connect_local
        async def main():
            s = await connect_local(name="nightly")
            job = await s.jobs.start_command("sleep 0.5; seq 1 1000")
            print(job.id, flush=True)
            await s.disconnect()
        anyio.run(main)
        """,
        hostdir,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    job_id = int(out)
    sessions = await get_local_sessions()
    assert [(i.name, i.state, i.job_count) for i in sessions] == [("nightly", "Disconnected", 1)]
    async with connect_local(name="nightly", create=False) as s:
        await s.jobs.wait(job_id, timeout=30)
        assert await s.jobs.receive(job_id, keep=True) == [str(i) for i in range(1, 1001)]


async def test_a_killed_controller_resumes_from_the_last_record_it_holds(hostdir: Path) -> None:
    async with connect_local(name="follow") as s:
        job = await s.jobs.start_command("i=0; while [ $i -lt 3000 ]; do echo $i; i=$((i+1)); done")
    follower = child(
        f"""
        import anyio
        from asyncjobs._host.client import connect_local
        async def main():
            async with connect_local(name="follower") as s:
                seq = 0
                while True:
                    for r in await s.jobs.read({job.id}, seq, limit=100):
                        print(r.seq, r.value, flush=True)
                        seq = r.seq + 1
                    await anyio.sleep(0.001)
        anyio.run(main)
        """,
        hostdir,
    )
    assert follower.stdout is not None
    seen: list[tuple[int, str]] = []
    while len(seen) < 500:
        line = follower.stdout.readline()
        assert line, follower.stderr.read() if follower.stderr else ""
        seq, value = line.split()
        seen.append((int(seq), value))
    follower.send_signal(signal.SIGKILL)
    follower.communicate(timeout=10)
    async with connect_local(name="follow", create=False) as s:
        await s.jobs.wait(job.id, timeout=30)
        last = seen[-1][0]
        rest = await s.jobs.read(job.id, last + 1)
    everything = seen + [(r.seq, r.value) for r in rest]
    assert everything == [(i, str(i)) for i in range(3000)]  # each exactly once, in order


async def test_sigkilled_host_restarts_with_its_store_intact(hostdir: Path) -> None:
    async with connect_local(name="a") as s:
        done = await s.jobs.start_command("echo kept")
        await s.jobs.wait(done, timeout=30)
        running = await s.jobs.start_command("echo $$; exec sleep 1000")
        with anyio.fail_after(10):
            while (await s.jobs.job(running)).next_seq == 0:
                await anyio.sleep(0.02)
    pid = host_pid(hostdir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: not pid_alive(pid), timeout=10)
    async with connect_local(name="a", create=False) as s:  # starts a new host
        assert host_pid(hostdir) != pid
        assert await s.jobs.receive(done, keep=True) == ["kept"]
        info = await s.jobs.job(running)
        assert info.state is JobState.FAILED
        assert "job host died" in (info.reason or "")
        [orphan] = await s.jobs.receive(running)  # acknowledged before the crash: not lost
    os.kill(int(orphan), signal.SIGKILL)  # the killed host could not stop it: we do


async def test_bad_frames_close_that_connection_only(hostdir: Path) -> None:
    async with connect_local(name="steady") as s:
        job = await s.jobs.start_command("sleep 0.3; echo still here")
        frames = [
            b"\x00\x00\x00\x05hello",  # not JSON
            struct.pack(">I", 1 << 30),  # oversized length: refused before any body
            b'\x00\x00\x00\x10{"t": "hel',  # truncated at EOF
            _frame(
                {
                    "t": "hello",
                    "version": 99,
                    "client": "x",
                    "session": None,
                    "create": True,
                    "idle_timeout": None,
                    "output_buffering": None,
                }
            ),
            _frame({"t": "hello", "version": PROTOCOL_VERSION, "client": 5}),
        ]
        replies = [await anyio.to_thread.run_sync(_send_raw, hostdir, f) for f in frames]
        assert "ProtocolError" in replies[0] and "JSON" in replies[0]
        assert "ProtocolError" in replies[1] and "exceeds the limit" in replies[1]
        mine = str(PROTOCOL_VERSION)
        assert "version mismatch" in replies[3] and "99" in replies[3] and mine in replies[3]
        assert "client" in replies[4]
        await s.jobs.wait(job, timeout=30)
        assert await s.jobs.receive(job) == ["still here"]  # the host and its jobs went on


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _send_raw(directory: Path, data: bytes) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(directory / "host.sock"))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def test_another_user_cannot_use_the_socket(hostdir: Path) -> None:
    async with connect_local():
        pass
    code = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try: s.connect({str(hostdir / 'host.sock')!r})\n"
        "except PermissionError: print('refused')\n"
        "else: print('connected')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused", out.stderr


async def test_idle_timeout_stops_a_disconnected_sessions_jobs(hostdir: Path) -> None:
    async with connect_local(name="short", idle_timeout=0.5) as s:
        job = await s.jobs.start_command("sleep 1000")
    async with connect_local(name="watcher") as w:
        [info] = await w.jobs.wait(job, timeout=20)
        assert info.state is JobState.STOPPED
        assert [i.name for i in await w.sessions()] == ["watcher"]


async def test_unknown_session_and_bad_calls_are_clear(hostdir: Path) -> None:
    async with connect_local(name="one") as s:
        with pytest.raises(NoSuchJob, match="no job with id 999"):
            await s.jobs.job(999)
        job = await s.jobs.start_command("sleep 1000")
        with pytest.raises(JobStateError, match="stop it first or pass force=True"):
            await s.jobs.remove(job)
        await s.jobs.remove(job, force=True)
        with pytest.raises(NoSuchJob):
            await s.jobs.job(job)
        with pytest.raises(AsyncJobsError, match="in use by another connection") as held:
            await connect_local(name="one")
        # it names who holds it: this very process, and since when
        assert f"pid {os.getpid()} (" in str(held.value) and " since " in str(held.value)
        assert "free again when that program disconnects or exits" in str(held.value)
    with pytest.raises(AsyncJobsError, match=r"no session named 'nope'.*sessions: one"):
        await connect_local(name="nope", create=False)


async def test_drop_buffering_while_disconnected(hostdir: Path) -> None:
    from asyncjobs._host import hostjob as _host

    bound = _host.DISCONNECTED_BOUND
    async with connect_local(name="lossy", output_buffering="drop") as s:
        job = await s.jobs.start_command(f"sleep 0.5; seq 1 {bound + 500}")
    async with connect_local(name="watcher") as w:  # "lossy" stays disconnected meanwhile
        [info] = await w.jobs.wait(job.id, timeout=30)
        assert info.dropped == 500
    async with connect_local(name="lossy", create=False) as s:
        got = await s.jobs.receive(job.id)
        assert got == [str(i) for i in range(501, bound + 501)]  # the oldest 500 went


async def test_block_buffering_holds_the_producer_while_disconnected(hostdir: Path) -> None:
    from asyncjobs._host import hostjob as _host

    bound = _host.DISCONNECTED_BOUND
    async with connect_local(name="held", output_buffering="block") as s:
        job = await s.jobs.start_command("sleep 0.3; yes")
    async with connect_local(name="watcher") as w:
        with anyio.fail_after(20):
            while (await w.jobs.job(job.id)).next_seq < bound:
                await anyio.sleep(0.05)
        with anyio.fail_after(10):  # held: Blocked, and it says why and what to do
            while (info := await w.jobs.job(job.id)).state is not JobState.BLOCKED:
                await anyio.sleep(0.05)
        assert info.reason is not None and "output_buffering='block'" in info.reason
        assert f"receive {job.id}" in info.reason and "'held'" in info.reason
        assert bound <= info.next_seq < bound + 8192  # held near the bound, not growing
        assert [j.state for j in await w.jobs.get(state="Blocked")] == [JobState.BLOCKED]
    async with connect_local(name="held", create=False) as s:
        got = await s.jobs.receive(job.id)
        assert len(got) >= bound and set(got) == {"y"}
        with anyio.fail_after(20):  # receiving made room: the producer goes on
            while (await s.jobs.job(job.id)).next_seq < bound + 8192 + 1:
                await anyio.sleep(0.05)
        info = await s.jobs.job(job.id)
        assert info.state is JobState.RUNNING and info.reason is None
        await s.jobs.stop(job.id)


async def test_protocol_error_type_is_ours() -> None:
    assert issubclass(ProtocolError, AsyncJobsError)


async def test_big_records_come_in_pages_that_fit_a_frame(hostdir: Path) -> None:
    # 60,000 lines of 400 bytes: 24 MB, more than one 16 MiB frame: nothing may be lost.
    async with connect_local(name="big") as s:
        job = await s.jobs.start_command("yes $(printf 'x%.0s' $(seq 1 399)) | head -n 60000")
        await s.jobs.wait(job, timeout=60)
        kept = await s.jobs.read(job)
        assert len(kept) == 60000 and kept[-1].seq == 59999
        got = await s.jobs.receive(job)
        assert len(got) == 60000 and set(got) == {"x" * 399}
        assert await s.jobs.receive(job) == []


async def test_a_clean_stop_of_the_host_records_its_jobs_as_stopped(hostdir: Path) -> None:
    async with connect_local(name="c") as s:
        job = await s.jobs.start_command("sleep 1000")
    pid = host_pid(hostdir)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    await eventually(lambda: not pid_alive(pid), timeout=20)
    async with connect_local(name="c", create=False) as s:
        info = await s.jobs.job(job)
        assert info.state is JobState.STOPPED and info.reason is None


# -- the fast path: a command's pipes straight into the store ---------------------------------


def _packed_values(packer: LinePacker, chunks: list[bytes]) -> list[object]:
    pieces = [p for chunk in chunks for p in packer.feed(chunk)] + packer.flush()
    values: list[object] = []
    for piece in pieces:
        lens = struct.unpack(f"<{piece.records}I", piece.lens)
        assert sum(lens) == len(piece.values) and piece.stream == "output"
        offset = 0
        for n in lens:
            values.append(unpack_value(piece.values[offset : offset + n]))
            offset += n
    return values


def _split_values(chunks: list[bytes], max_line: int) -> list[object]:
    splitter = LineSplitter(max_line)
    lines: list[object] = [line for chunk in chunks for line in splitter.feed(chunk)]
    tail = splitter.flush()
    return lines if tail is None else [*lines, tail]


@pytest.mark.parametrize("seed", range(40))
def test_line_packer_makes_the_lines_line_splitter_makes(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = [b"a", b"b", b"\n", b"\r", "é".encode(), "€".encode(), b"\xff", b"\xe2\x82"]
    weights = [30, 10, 8, 1, 3, 3, 1 if seed % 2 else 0, 1 if seed % 3 == 0 else 0]
    data = b"".join(rng.choices(alphabet, weights, k=rng.randrange(0, 3000)))
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(1, 40))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    max_line = rng.choice((4, 7, 16, 64, 1 << 20))
    assert _packed_values(LinePacker("output", max_line), chunks) == _split_values(chunks, max_line)


def test_line_packer_fast_and_slow_batches() -> None:
    packer = LinePacker("output")
    [fast] = packer.feed(b"one\ntwo\nthr")
    assert (fast.records, fast.values, packer.pending) == (2, b"sonestwo", 3)
    [slow] = packer.feed(b"ee\n\xff\xfe\nfour\n")  # one line is not UTF-8: packed one by one
    assert slow.records == 3 and slow.values == b"sthreeb\xff\xfesfour"
    assert packer.flush() == []


async def test_lines_of_every_shape_go_from_the_pipes_into_the_store(hostdir: Path) -> None:
    big = 1024 * 1024 + 300_000  # one line over MAX_LINE: kept, in pieces
    code = f"""
        import os, sys, time
        out, err = sys.stdout.buffer, sys.stderr.buffer
        def w(stream, data):
            stream.write(data)
            stream.flush()
            time.sleep(0.01)  # separate reads: lines cross the chunks the host reads
        w(out, b"ab")
        w(out, b"c\\nd")
        w(err, b"warn")
        w(err, b"ing\\n")
        w(out, b"e\\n\\xff\\xfe\\n\\xc3")  # a line that is not UTF-8; half a character
        w(out, b"\\xa9t\\xc3\\xa9\\n")  # and its other half: 'été'
        w(out, b"x" * {big} + b"\\n")
        w(out, "".join(f"{{i}}\\n" for i in range(100_000)).encode())
        w(out, b"no newline at the end")
    """
    async with connect_local(name="shapes") as s:
        job = await s.jobs.start_command(python(code))
        [done] = await s.jobs.wait(job, timeout=60)
        assert done.state is JobState.COMPLETED, done.reason
        records = await s.jobs.read(job)
    assert [r.seq for r in records] == list(range(len(records)))
    errors = [r.value for r in records if r.stream == "error"]
    output = [r.value for r in records if r.stream == "output"]
    assert errors == ["warning"]
    assert output[:4] == ["abc", "de", b"\xff\xfe", "été"]
    assert output[4:6] == ["x" * MAX_LINE, "x" * (big - MAX_LINE)]
    assert output[6:] == [str(i) for i in range(100_000)] + ["no newline at the end"]
    assert done.next_seq == len(records)


async def test_stop_mid_stream_keeps_every_line_read_once_in_order(hostdir: Path) -> None:
    async with connect_local(name="stopper") as s:
        job = await s.jobs.start_command(
            python("import itertools\nfor i in itertools.count(): print(i)")
        )
        with anyio.fail_after(30):
            while (await s.jobs.job(job)).next_seq < 200_000:
                await anyio.sleep(0.02)
        info = await s.jobs.stop(job)
        assert info.state is JobState.STOPPED and info.has_more_data
        values = await s.jobs.receive(job)
        assert values == [str(i) for i in range(len(values))]  # nothing lost, nothing twice
        assert len(values) == info.next_seq >= 200_000
        assert await s.jobs.read(job, info.next_seq) == []
        assert (await s.jobs.job(job)).next_seq == info.next_seq  # the end is the end


async def test_receive_once_across_a_reconnect_gives_each_record_once(hostdir: Path) -> None:
    n = 300_000
    async with connect_local(name="twice") as s:
        job = await s.jobs.start_command(python(f"for i in range({n}): print(i)"))
        with anyio.fail_after(30):
            while (await s.jobs.job(job)).next_seq < 1000:
                await anyio.sleep(0.01)
        first = await s.jobs.receive(job)  # while it runs: what is stored so far
        assert first
    async with connect_local(name="twice", create=False) as s:
        await s.jobs.wait(job, timeout=60)
        rest = await s.jobs.receive(job)
        assert first + rest == [str(i) for i in range(n)]
        assert await s.jobs.receive(job) == []


async def test_paged_reads_ask_ahead_and_stop_where_asked(hostdir: Path) -> None:
    n = 130_000  # three pages of 50,000: the next one is asked for before a page is decoded
    async with connect_local(name="pages") as s:
        job = await s.jobs.start_command(python(f"for i in range({n}): print(i)"))
        await s.jobs.wait(job, timeout=60)
        got = await s.jobs.read(job, 7, limit=100_001)
        assert [r.value for r in got] == [str(i) for i in range(7, 100_008)]
        assert [r.seq for r in await s.jobs.read(job, n - 3)] == [n - 3, n - 2, n - 1]
        kept = await s.jobs.receive_records(job, keep=True)
        assert [r.value for r in kept] == [str(i) for i in range(n)]
        assert len(await s.jobs.receive(job)) == n  # the connection is in step after all that


async def test_spawn_failures_input_and_both_pipes_on_the_host(hostdir: Path) -> None:
    async with connect_local(name="edges") as s:
        missing = await s.jobs.start_command(["/nonexistent/program"])
        assert missing.state is JobState.FAILED and "no such program" in (missing.reason or "")
        [error] = await s.jobs.receive_records(missing, streams=["error"])
        assert error.seq == 0 and "no such program" in error.value
        with pytest.raises(JobArgumentError, match="cwd '/nonexistent' does not exist"):
            await s.jobs.start_command("true", cwd="/nonexistent")
        fed = await s.jobs.start_command(
            python("import sys\nfor line in sys.stdin: print(line.strip().upper())"),
            input="one\ntwo\n",
        )
        both = await s.jobs.start_command("echo out; echo err >&2; sleep 0.1; echo out2")
        await s.jobs.wait(fed, both, timeout=30)
        assert await s.jobs.receive(fed) == ["ONE", "TWO"]
        got = [(r.seq, r.stream, r.value) for r in await s.jobs.read(both)]
        assert got == [(0, "output", "out"), (1, "error", "err"), (2, "output", "out2")]


async def test_the_host_closes_the_connection_after_disconnect(hostdir: Path) -> None:
    # A bridge (SSH) exits only once the host closes its end: it must not linger.
    async with connect_local(name="first"):
        pass
    hello = {
        "t": "hello", "version": PROTOCOL_VERSION, "client": "raw", "session": "raw",
        "create": True, "idle_timeout": None, "output_buffering": None,
    }  # fmt: skip
    request = {"t": "request", "id": 1, "op": "disconnect", "args": {}}
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)  # a host that keeps the connection open fails here
        sock.connect(str(hostdir / "host.sock"))
        sock.sendall(_frame(hello) + _frame(request))  # and no EOF from this side
        chunks = []
        while chunk := await anyio.to_thread.run_sync(sock.recv, 65536):
            chunks.append(chunk)
    reply = b"".join(chunks).decode()
    assert '"welcome"' in reply and '"id":1' in reply and '"ok":true' in reply
