"""The pytest plugin of ``asyncjobs.testing``: load it with ``pytest -p asyncjobs.testing`` or
``pytest_plugins = ["asyncjobs.testing"]`` in your top-level ``conftest.py``.

Fixtures (both sync: they start OS processes, so they serve sync tests and async ones, on
asyncio and on trio alike):

- ``sshd_hosts`` (per test): ``TestHosts`` started for one test and stopped after it, yours to
  fault (``kill``, ``pause``, ``restart``, …). Two hosts unless the test says otherwise with the
  ``sshd_hosts`` marker, whose arguments are ``TestHosts``'s:
  ``@pytest.mark.sshd_hosts(4, load=True)``.
- ``sshd_hosts_shared`` (per session): ``TestHosts`` with raised limits (``load=True``) shared by
  every test of the run; ``sshd_hosts_count`` in the ini file sets how many (3). Don't fault
  them.

A machine that cannot run the hosts fails these tests (never skips them) with the reason and
the fix. At the end of a run, the job hosts that tests started on the test hosts are stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._hosts import TestHosts
from ._machine import TestHostsError, stop_job_hosts

__all__ = ["sshd_hosts", "sshd_hosts_shared"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "sshd_hosts_count", "how many hosts the sshd_hosts_shared fixture starts", default="3"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sshd_hosts(count=2, **options): how many test hosts the sshd_hosts fixture starts, "
        "and TestHosts's other options (load=, addresses=, mode=, ...)",
    )


def _started(hosts: TestHosts) -> TestHosts:
    try:
        return hosts.start()
    except TestHostsError as e:
        pytest.fail(f"asyncjobs.testing: {e}", pytrace=False)


@pytest.fixture
def sshd_hosts(request: pytest.FixtureRequest) -> Iterator[TestHosts]:
    """Real sshd test hosts for one test (two unless ``@pytest.mark.sshd_hosts(N, ...)``)."""
    marker = request.node.get_closest_marker("sshd_hosts")
    args: tuple[Any, ...] = marker.args if marker else ()
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    count = args[0] if args else kwargs.pop("count", 2)
    hosts = _started(TestHosts(count, **kwargs))
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="session")
def sshd_hosts_shared(request: pytest.FixtureRequest) -> Iterator[TestHosts]:
    """Real sshd test hosts shared by the whole run (limits raised for load)."""
    count = int(request.config.getini("sshd_hosts_count"))
    hosts = _started(TestHosts(count, load=True))
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="session", autouse=True)
def _asyncjobs_testing_job_hosts() -> Iterator[None]:
    """Root mode: job hosts run as the test user, detached from the sshd that started them, and
    outlive any one TestHosts; the run stops them when it ends (user mode: ``close()`` does)."""
    yield
    stop_job_hosts()
