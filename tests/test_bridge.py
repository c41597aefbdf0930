"""The SSH bridge to a remote job host when its controller goes away mid-answer (issue 10: "a
controller that drops mid-answer must not end the remote host either"), against real sshd.

A controller process reads a big job page after page through the bridge and is SIGKILLed while
an answer is in flight (its kernel resets the TCP connection with data unread; sshd sees the
reset and closes the bridge's pipes mid-write). Each time: the job host is the same process,
the killed controller's bridge is gone within seconds (none left spinning or holding the
session), its session can be reattached by name, and the job and every one of its records are
there, in order.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import AsyncJobsError, JobState
from asyncjobs._host import bridge as _bridge
from tests.conftest import pid_alive
from tests.testhosts import TEST_HOME, TestHosts

LINES = 100_000
ROUNDS = 3


def _job_hosts(hosts: TestHosts) -> set[int]:
    return set(hosts.pgrep(None, "asyncjobs._host.daemon"))


def _job_host_pid() -> int | None:
    """The pid of the test user's job host (from its lock file: one per user and machine,
    whichever test host's sshd started it)."""
    try:
        text = (TEST_HOME / ".local/state/asyncjobs/host.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@pytest.fixture
def remote(ssh_hosts: TestHosts) -> Iterator[TestHosts]:
    """The test hosts; the job hosts that the test started there are stopped (by pid) after."""
    before = _job_hosts(ssh_hosts)
    yield ssh_hosts
    for pid in _job_hosts(ssh_hosts) - before:
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


def _bridges(hosts: TestHosts) -> set[int]:
    return set(hosts.pgrep(None, "asyncjobs._host.bridge"))


def _reader(host: Any, options: dict[str, Any], job_id: int) -> subprocess.Popen[str]:
    """A controller in a process of its own: session "reader", reading job ``job_id`` from
    seq 0 again and again, a line on stdout after each whole read."""
    code = f"""
        import anyio, asyncjobs
        async def main():
            async with asyncjobs.connect({host.address!r}, {host.port}, name="reader",
                                         **{options!r}) as s:
                while True:
                    records = await s.jobs.read({job_id}, 0)
                    print(len(records), flush=True)
        anyio.run(main, backend="asyncio")
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_controller_killed_mid_answer_leaves_the_remote_job_host_intact(
    remote: TestHosts,
) -> None:
    host = remote.hosts[0]
    options: dict[str, Any] = dict(remote.ssh_options())
    async with asyncjobs.connect(host.address, host.port, name="owner", **options) as s:
        job = await s.jobs.start_command(f"seq 1 {LINES}", name="big")
        await s.jobs.wait(job, timeout=60)
        job_host = _job_host_pid()
        assert job_host is not None and pid_alive(job_host)
        idle_bridges = _bridges(remote)  # the owner's own
        for _ in range(ROUNDS):
            reader = _reader(host, options, job.id)
            try:
                assert reader.stdout is not None
                assert reader.stdout.readline().strip() == str(LINES)  # one whole read...
                await anyio.sleep(0.05)  # ...and the next answer on its way
            finally:
                reader.send_signal(signal.SIGKILL)
                reader.wait()
                if reader.stdout is not None:
                    reader.stdout.close()
            # The killed controller's bridge ends by itself, soon; the job host lives on.
            deadline = time.monotonic() + 15
            while _bridges(remote) - idle_bridges and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            assert _bridges(remote) - idle_bridges == set(), "a bridge was left behind"
            assert pid_alive(job_host), "the job host ended"
            assert _job_host_pid() == job_host, "another job host took over"
            # Its session is free again: reattach it by name, and find everything kept.
            with anyio.fail_after(30):
                while True:
                    try:
                        again = await asyncjobs.connect(
                            host.address, host.port, name="reader", create=False, **options
                        )
                        await again.jobs.get()
                        break
                    except AsyncJobsError as exc:  # the host may need a moment to notice
                        if "in use" not in str(exc):
                            raise
                        await anyio.sleep(0.1)
            async with again:
                info = await again.jobs.job(job.id)
                assert (info.state, info.name) == (JobState.COMPLETED, "big")
                records = await again.jobs.read(job.id, 0)
                assert [r.value for r in records] == [str(i) for i in range(1, LINES + 1)]
                assert [r.seq for r in records] == list(range(LINES))
            assert (await s.jobs.job(job.id)).state is JobState.COMPLETED  # the owner's link too
        assert _job_host_pid() == job_host and pid_alive(job_host)


def test_a_bridge_whose_channel_is_gone_lingers_at_most_briefly() -> None:
    """The bridge's end-of-controller path on its own: stdout closed under it while the job host
    still has an answer to send. It sends EOF, drops the rest, and exits (never spins)."""

    host_end, bridge_end = socket.socketpair()
    host_end.sendall(b"x" * 100_000)  # an answer the controller will never read
    t0 = time.monotonic()
    done: list[bytes] = []

    def host() -> None:  # an orderly host: it closes once it has read EOF
        while host_end.recv(1 << 16):
            pass
        done.append(b"eof")
        host_end.close()

    thread = threading.Thread(target=host)
    thread.start()
    _bridge._linger(bridge_end, seconds=5)
    thread.join(5)
    bridge_end.close()
    assert done == [b"eof"] and time.monotonic() - t0 < 2
    # A host that never closes: the bridge gives up after its linger, no longer.
    quiet_host, bridge_end = socket.socketpair()
    t0 = time.monotonic()
    _bridge._linger(bridge_end, seconds=0.5)
    assert 0.4 < time.monotonic() - t0 < 2
    bridge_end.close()
    quiet_host.close()
