"""The sshd test hosts of this project's tests and benchmarks: ``asyncjobs.testing``, re-exported.

The tests and benchmarks import from here (``from tests.testhosts import TestHosts``); the code
and its documentation live in the public package. ``scripts/testhosts N`` runs its ``main``.
"""

from __future__ import annotations

import sys

from asyncjobs.testing import (
    NETNS_RANGE,
    SSHD,
    TEST_HOME,
    TEST_USER,
    Host,
    SSHOptions,
    TestHosts,
    TestHostsError,
    ensure_test_user,
    sshd_version,
    stop_job_hosts,
)
from asyncjobs.testing.__main__ import main

__all__ = [
    "NETNS_RANGE",
    "SSHD",
    "TEST_HOME",
    "TEST_USER",
    "Host",
    "SSHOptions",
    "TestHosts",
    "TestHostsError",
    "ensure_test_user",
    "main",
    "sshd_version",
    "stop_job_hosts",
]

if __name__ == "__main__":
    sys.exit(main())
