"""pytest fixtures for real sshd test hosts (``asyncjobs.testing``, via ``tests/testhosts.py``).

- ``ssh_hosts`` (session): 3 hosts with raised limits (``load=True``: MaxSessions 1000,
  MaxStartups 1000:30:1000). Shared by every test of the run: don't kill or pause them.
- ``fresh_ssh_host`` (function): 1 host with sshd's default limits (MaxSessions 10), yours to
  ``kill(0)``, ``pause(0)``, ``restart(0)``; stopped after the test.

Both are sync (they start OS processes), so they work under either anyio backend; asyncssh itself
needs asyncio. A machine without ``/usr/sbin/sshd`` fails these tests: it never skips them.

- ``no_leftovers`` (function, asyncio): after the test and its other fixtures, no asyncio task
  that the test started is still running and no TCP connection this process opened is still
  open ("no controller task or connection is left behind"). Use it with
  ``pytest.mark.usefixtures("no_leftovers")``: it is set up first, so it checks last.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.testhosts import SSHD, TestHosts, stop_job_hosts

__all__ = ["fresh_ssh_host", "no_leftovers", "ssh_hosts"]


def _require_sshd() -> None:
    if not os.path.exists(SSHD):
        pytest.fail(
            f"{SSHD} is missing: the remote-job tests need real OpenSSH; "
            "install Debian's openssh-server (apt-get install -y openssh-server)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[TestHosts]:
    """Three real sshd hosts on 127.0.0.1 for the whole run, limits raised for load."""
    _require_sshd()
    with TestHosts(3, load=True) as hosts:
        yield hosts


@pytest.fixture(scope="session", autouse=True)
def _no_job_host_outlives_the_run() -> Iterator[None]:
    """Remote job hosts run as the test user, detached from the sshd that started them (any
    test host's, netns ones too): the run stops them when it ends."""
    yield
    if os.path.exists(SSHD):
        stop_job_hosts()


@pytest.fixture
def fresh_ssh_host() -> Iterator[TestHosts]:
    """One real sshd host with default limits, for fault tests that kill or pause it."""
    _require_sshd()
    with TestHosts(1) as hosts:
        yield hosts


def _tcp_connections() -> set[tuple[str, int, str, int]]:
    """This process's TCP connections that have a peer, as (local, port, remote, port)."""
    import psutil

    return {
        (c.laddr.ip, c.laddr.port, c.raddr.ip, c.raddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.status != psutil.CONN_TIME_WAIT
    }


@pytest.fixture
async def no_leftovers() -> AsyncIterator[None]:
    """Fail the test if it leaves an asyncio task running or a TCP connection open (closing
    ones get 5 s to finish)."""
    import asyncio

    import anyio

    tasks_before = asyncio.all_tasks()
    connections_before = _tcp_connections()
    yield
    deadline = time.monotonic() + 5
    while True:
        tasks = {
            t
            for t in asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
            if "TestRunner" not in getattr(t.get_coro(), "__qualname__", "")  # anyio's own
        }
        connections = _tcp_connections() - connections_before
        if not tasks and not connections:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left behind: tasks {tasks}, TCP connections {connections}")
        await anyio.sleep(0.02)


#: The marks of a test on the sshd test hosts: asyncio only (asyncssh), and no controller task
#: or connection left behind.
ON_HOSTS = (
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
    pytest.mark.usefixtures("no_leftovers"),
)


def on_hosts(fn: Any) -> Any:
    """Decorate one test with ``ON_HOSTS`` (a file that mixes local and remote tests)."""
    for mark in ON_HOSTS:
        fn = mark(fn)
    return fn
