"""Receive-once through the job host is acknowledged: a record is received when the controller
handed it to its caller, so a normal end (break, cancel, an exception, ``aclose``) loses and
repeats nothing, a killed controller loses nothing, and two receivers never share a record.
Real host, real sockets, real controller processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncjobs import JobState
from asyncjobs._host.client import connect_local
from asyncjobs._host.connection import ACK_EVERY
from asyncjobs._host.protocol import PROTOCOL_VERSION
from tests.conftest import python

pytestmark = pytest.mark.anyio

N_LINES = 1000


async def _finished_job(name: str, n: int = N_LINES) -> int:
    async with connect_local(name=name) as s:
        job = await s.jobs.start_command(python(f"for i in range({n}): print(i)"))
        done = await s.jobs.wait(job, timeout=60)
        assert done and done[0].state is JobState.COMPLETED
        return job.id


async def test_a_break_in_stream_loses_nothing_and_repeats_nothing(hostdir: Path) -> None:
    job = await _finished_job("brk")
    async with connect_local(name="brk", create=False) as s:
        got = []
        async for value in s.jobs.stream(job):
            got.append(value)
            if len(got) == 3:
                break  # no aclose: the iterator is left to the garbage collector
    # the session is gone right after the break: what was handed on stays received
    async with connect_local(name="brk", create=False) as s:
        rest = await s.jobs.receive(job)
        assert got + rest == [str(i) for i in range(N_LINES)]
        assert (await s.jobs.job(job)).has_more_data is False


async def test_aclose_gives_the_rest_back_at_once_on_the_same_connection(hostdir: Path) -> None:
    job = await _finished_job("acl")
    async with connect_local(name="acl", create=False) as s:
        stream = s.jobs.stream(job)
        async with contextlib.aclosing(stream):
            first = [await anext(stream) for _ in range(5)]
        assert (await s.jobs.job(job)).has_more_data  # the rest is back, unreceived
        second = [value async for value in s.jobs.stream(job)]
        assert first + second == [str(i) for i in range(N_LINES)]


async def test_an_exception_in_the_loop_gives_the_rest_back(hostdir: Path) -> None:
    job = await _finished_job("exc")
    async with connect_local(name="exc", create=False) as s:
        got: list[str] = []

        async def fail_at_10() -> None:
            async for value in s.jobs.stream(job):
                got.append(value)
                if len(got) == 10:
                    raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await fail_at_10()
        assert got + await s.jobs.receive(job) == [str(i) for i in range(N_LINES)]


async def test_a_cancelled_stream_and_receive_lose_nothing(hostdir: Path) -> None:
    job = await _finished_job("cnc", n=200_000)
    async with connect_local(name="cnc", create=False) as s:
        got: list[str] = []
        midway = anyio.Event()

        async def follow() -> None:
            async for value in s.jobs.stream(job):
                got.append(value)
                if len(got) == 70_000:  # into the second page
                    midway.set()
                    await anyio.sleep(60)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await midway.wait()
                tg.cancel_scope.cancel()
        assert len(got) == 70_000
        with anyio.move_on_after(0.001):  # cancelled while pages come in: all go back
            await s.jobs.receive(job)
        rest = await s.jobs.receive(job)
        assert got + rest == [str(i) for i in range(200_000)]


async def test_two_controllers_split_a_running_job_and_never_share_a_record(
    hostdir: Path,
) -> None:
    n = 20_000
    async with connect_local(name="src") as s:
        code = f"""
            import time
            for i in range({n}):
                print(i, flush=True)
                i % 500 or time.sleep(0.01)
            """
        job = await s.jobs.start_command(python(code))
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def receiver(who: str, stop_after: int | None) -> None:
        async with connect_local(name=who) as s:
            async for value in s.jobs.stream(job.id):
                seen[who].append(value)
                if stop_after is not None and len(seen[who]) == stop_after:
                    break  # "a" leaves early: what it did not hand on goes to "b"

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver, "a", 3000)
            tg.start_soon(receiver, "b", None)
    a, b = set(seen["a"]), set(seen["b"])
    assert len(a) == len(seen["a"]) and len(b) == len(seen["b"])
    assert not a & b  # no record delivered to both
    assert a | b == {str(i) for i in range(n)}  # and none lost
    assert seen["a"] and seen["b"]


CONSUMER = """
import anyio, sys
from asyncjobs._host.client import connect_local
async def main():
    async with connect_local(name="kill") as s:
        with open(sys.argv[1], "a") as out:
            async for value in s.jobs.stream(int(sys.argv[2])):
                out.write(value + "\\n")
                out.flush()
anyio.run(main)
"""


async def test_killed_controllers_lose_nothing_and_repeat_at_most_a_batch(
    hostdir: Path,
) -> None:
    n = 20_000
    job = await _finished_job("kill", n=n)
    sink = hostdir / "received.txt"
    env = dict(os.environ, ASYNCJOBS_HOST_DIR=str(hostdir))
    kills = 0
    for _ in range(6):
        before = sink.read_text().count("\n") if sink.exists() else 0
        argv = [sys.executable, "-c", textwrap.dedent(CONSUMER), str(sink), str(job)]
        proc = subprocess.Popen(argv, env=env)  # noqa: ASYNC220 - killed by pid below
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill it mid-stream
            now = sink.read_text().count("\n") if sink.exists() else 0
            if now >= before + 2000 or proc.poll() is not None:
                break
            await anyio.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=10)
    async with connect_local(name="kill", create=False) as s:
        rest = await s.jobs.receive(job)
    lines = sink.read_text().split("\n")[:-1] + rest
    assert set(lines) == {str(i) for i in range(n)}, "a record was lost"
    duplicates = len(lines) - n
    assert kills >= 3
    # each kill leaves at most its unacknowledged records (ACK_EVERY, or 50 ms of them)
    assert 0 <= duplicates <= kills * (ACK_EVERY + 2000), duplicates


# -- a bad request is answered by its id; the connection goes on -------------------------------


def _frame(obj: object) -> bytes:
    import json

    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def _read_frames(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    import json

    data = b""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "the host closed the connection"
        data += chunk
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
            size = struct.unpack(">I", data[:4])[0]
            out.append(json.loads(data[4 : 4 + size]))
            data = data[4 + size :]
    return out


async def test_a_refused_request_is_answered_by_its_id_and_the_connection_goes_on(
    hostdir: Path,
) -> None:
    async with connect_local(name="x"):
        pass
    hello = {
        "t": "hello", "version": PROTOCOL_VERSION, "client": "raw", "session": None,
        "create": False, "idle_timeout": None, "output_buffering": None,
    }  # fmt: skip
    bad = [
        {"t": "request", "id": 5, "op": "wait", "args": {"jobs": [], "timeout": -1}},
        {"t": "request", "id": 6, "op": "job", "args": {"job": 0}},
        {"t": "request", "id": 7, "op": "nope", "args": {}},
        {"t": "request", "id": 8, "op": "read", "args": {"job": 1, "streams": ["nope"]}},
        {"t": "request", "id": 9, "op": "ack", "args": {"lease": 12345, "count": 1}},
    ]
    ping = {"t": "request", "id": 10, "op": "ping", "args": {}}

    def talk() -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(hostdir / "host.sock"))
            sock.sendall(_frame(hello) + b"".join(map(_frame, bad)) + _frame(ping))
            return _read_frames(sock, 2 + len(bad))

    replies = await anyio.to_thread.run_sync(talk)
    by_id = {r["id"]: r for r in replies[1:]}
    assert sorted(by_id) == [5, 6, 7, 8, 9, 10]
    for i in range(5, 10):
        assert by_id[i]["ok"] is False and by_id[i]["error"]["message"]
    assert "timeout" in by_id[5]["error"]["message"]
    assert by_id[10]["ok"] is True and by_id[10]["result"] == "pong"
