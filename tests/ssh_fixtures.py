"""pytest fixtures for real sshd test hosts (see ``tests/testhosts.py``).

- ``ssh_hosts`` (session): 3 hosts with raised limits (``load=True``: MaxSessions 1000,
  MaxStartups 1000:30:1000). Shared by every test of the run: don't kill or pause them.
- ``fresh_ssh_host`` (function): 1 host with sshd's default limits (MaxSessions 10), yours to
  ``kill(0)``, ``pause(0)``, ``restart(0)``; stopped after the test.

Both are sync (they start OS processes), so they work under either anyio backend; asyncssh itself
needs asyncio. A machine without ``/usr/sbin/sshd`` fails these tests: it never skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.testhosts import SSHD, TestHosts

__all__ = ["fresh_ssh_host", "ssh_hosts"]


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


@pytest.fixture
def fresh_ssh_host() -> Iterator[TestHosts]:
    """One real sshd host with default limits, for fault tests that kill or pause it."""
    _require_sshd()
    with TestHosts(1) as hosts:
        yield hosts
