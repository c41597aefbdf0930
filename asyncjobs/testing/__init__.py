"""Real OpenSSH test hosts on loopback, for testing code that runs things over SSH.

``TestHosts(n)`` starts ``n`` real ``sshd`` processes on 127.0.0.0/8, each with its own generated
host key, one generated client key, and a ``known_hosts`` that lists exactly those hosts: your
code connects with host keys verified, exactly as it would in production, and no mock stands in
for the server::

    async with asyncjobs.testing.TestHosts(4) as hosts:
        async with asyncjobs.JobManager() as jobs:
            job = await jobs.invoke(hosts.targets, "uptime", **hosts.ssh_options())

Faults for tests: ``kill(i)`` (sshd killed mid-command), ``pause(i)``/``resume(i)`` (the host
hangs), ``restart(i)`` (same port, same host key), ``cut_link(i)`` (sshd gone, the user's
processes live on); with ``addresses="netns"`` each sshd runs in a network namespace of its own
and ``cut_network(i)``/``restore_network(i)`` cut its link silently (no RST, no FIN) and mend
it. ``pgrep(i, pattern)`` and ``processes(i)`` find what host ``i`` started.

What it needs: OpenSSH's ``sshd`` at ``/usr/sbin/sshd`` and ``ssh-keygen`` (Debian:
``apt-get install openssh-server``). As root, the hosts log in as a dedicated user,
``asyncjobs-test``, created on first use; as any other user, sshd runs as you and logs in only
you (each host with a ``HOME`` of its own). Network namespaces need root and iproute2. What is
missing is said by ``TestHostsError`` (the pytest fixtures fail with it).

The pytest plugin (``pytest -p asyncjobs.testing``) gives the fixtures ``sshd_hosts`` (per test)
and ``sshd_hosts_shared`` (per session); ``python -m asyncjobs.testing N`` starts ``N`` hosts by
hand and prints how to reach them. This package imports nothing of asyncjobs: it stands on the
standard library and attrs (and anyio for ``async with``).
"""

from __future__ import annotations

from ._hosts import TestHosts as TestHosts
from ._machine import NETNS_RANGE as NETNS_RANGE
from ._machine import REQUIREMENTS as REQUIREMENTS
from ._machine import SSHD as SSHD
from ._machine import TEST_HOME as TEST_HOME
from ._machine import TEST_USER as TEST_USER
from ._machine import Addresses as Addresses
from ._machine import Mode as Mode
from ._machine import TestHostsError as TestHostsError
from ._machine import check_machine as check_machine
from ._machine import ensure_test_user as ensure_test_user
from ._machine import sshd_version as sshd_version
from ._machine import stop_job_hosts as stop_job_hosts
from ._server import Host as Host
from ._server import SSHOptions as SSHOptions

__all__ = [
    "NETNS_RANGE",
    "REQUIREMENTS",
    "SSHD",
    "TEST_HOME",
    "TEST_USER",
    "Addresses",
    "Host",
    "Mode",
    "SSHOptions",
    "TestHosts",
    "TestHostsError",
    "check_machine",
    "ensure_test_user",
    "sshd_version",
    "stop_job_hosts",
]

#: ``pytest -p asyncjobs.testing`` loads this package as a plugin; pytest then loads the
#: fixtures from here (importing pytest only then: ``import asyncjobs.testing`` does not).
pytest_plugins = ["asyncjobs.testing.plugin"]
