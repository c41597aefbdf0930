"""A silently cut network, for real: sshd in a network namespace of its own, reached over a veth
pair whose far end is taken down (``TestHosts.cut_network``). No reset, no FIN, no ICMP: only
keepalives can tell such a link from a quiet one (see ``asyncjobs._ssh.defaults``)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import ConnectionFailed, JobManager, JobState
from tests.conftest import eventually
from tests.testhosts import NETNS_RANGE, TestHosts


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # remote jobs run on asyncio (asyncssh)


#: Keepalives small enough for a test: the loss shows after about 1.5 s of silence.
FAST_KEEPALIVE = {"keepalive_interval": 0.5, "keepalive_count_max": 2}


@pytest.fixture
def netns_host() -> Iterator[TestHosts]:
    """One sshd in a network namespace of its own, on 198.18.x.2 port 22."""
    with TestHosts(1, addresses="netns") as hosts:
        yield hosts


def options(hosts: TestHosts, **extra: Any) -> dict[str, Any]:
    return {**hosts.ssh_options(), **FAST_KEEPALIVE, **extra}


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leftovers")
async def test_a_silent_cut_fails_that_child_only_through_keepalives(
    netns_host: TestHosts, ssh_hosts: TestHosts
) -> None:
    cut = netns_host.hosts[0]
    fine = ssh_hosts.hosts[0]
    word = f"aj{uuid.uuid4().hex[:10]}"
    async with (
        asyncjobs.connect(cut.address, cut.port, **options(netns_host)) as far,
        asyncjobs.connect(fine.address, fine.port, **options(ssh_hosts)) as near,
        JobManager() as jobs,
    ):
        command = f"echo start; sleep 4; echo {word}"
        job = await jobs.invoke([far, near], command)
        lost, kept = job.children
        await eventually(lambda: lost.statistics().buffer.next_seq >= 1, timeout=10)
        netns_host.cut_network(0)
        t0 = time.monotonic()
        with anyio.fail_after(20):
            await lost.wait()
        took = time.monotonic() - t0
        assert lost.state is JobState.FAILED
        assert isinstance(lost.reason, ConnectionFailed)
        assert cut.address in str(lost.reason)
        assert took < 4  # the keepalives, not the command's end or TCP's 15 minutes
        with anyio.fail_after(20):
            await job.wait()
        assert kept.state is JobState.COMPLETED
        assert await kept.receive() == ["start", word]  # the other child's output is whole
        assert await lost.receive() == ["start"]
        netns_host.restore_network(0)


@pytest.mark.anyio
@pytest.mark.usefixtures("no_leftovers")
async def test_a_named_sessions_job_is_disconnected_by_a_silent_cut_and_resumes(
    netns_host: TestHosts,
) -> None:
    host = netns_host.hosts[0]
    name = f"netcut-{uuid.uuid4().hex[:8]}"
    count = 60
    command = f"i=0; while [ $i -lt {count} ]; do echo $i; i=$((i+1)); sleep 0.1; done"
    # connect_timeout bounds each reconnect attempt while the link is still cut.
    session = await asyncjobs.connect(
        host.address, host.port, name=name, **options(netns_host, connect_timeout=3)
    )
    async with session, JobManager() as jobs:
        job = await jobs.invoke([session], command)
        child = job.children[0]
        await eventually(lambda: child.statistics().buffer.next_seq >= 5, timeout=30)
        netns_host.cut_network(0)
        await eventually(lambda: child.state is JobState.DISCONNECTED, timeout=15)
        await anyio.sleep(1)  # the command runs on, its lines kept by the host's job host
        assert child.state is JobState.DISCONNECTED
        netns_host.restore_network(0)
        with anyio.fail_after(60):
            await job.wait()
        assert child.state is JobState.COMPLETED, child.reason
        states = [c.state for c in child._history]
        assert JobState.DISCONNECTED in states and states[-1] is JobState.COMPLETED
        assert await job.receive() == [str(i) for i in range(count)]  # none lost, none twice
        for info in await session.jobs.get():  # leave the shared job host as we found it
            await session.jobs.remove(info.id, force=True)


def test_netns_hosts_cut_silently_and_clean_up() -> None:
    def namespaces() -> str:
        return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout

    with TestHosts(1, addresses="netns") as hosts:
        host = hosts.hosts[0]
        name = hosts._servers[0].netns
        assert name is not None and name in namespaces()
        assert host.port == 22 and ipaddress.ip_address(host.address) in NETNS_RANGE
        hosts.cut_network(0)
        with pytest.raises(TimeoutError), socket.create_connection((host.address, 22), 1):
            pass  # no RST, no ICMP: the connect just gets no answer
        hosts.restore_network(0)
        with socket.create_connection((host.address, 22), 5) as sock:
            assert sock.recv(4) == b"SSH-"
    assert name not in namespaces()  # close() deleted it, and its veth pair with it
