"""Shared fixtures: every async test runs on asyncio and on trio, and fails loudly if a backend
cannot load (anyio's own default fixture would silently drop trio)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    if backend == "trio":
        import trio

        major, minor = (int(x) for x in trio.__version__.split(".")[:2])
        assert (major, minor) >= (0, 32), f"trio {trio.__version__} is too old for anyio"
    return backend


@pytest.fixture
def anyio_backend_name(anyio_backend: str) -> str:
    return anyio_backend


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def python(code: str) -> list[str]:
    """argv that runs ``code`` (dedented) in a child Python, for command jobs in tests."""
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.fixture
def reap_pids() -> Iterator[list[int]]:
    """Pids a test learned of; any still alive at the end are killed and fail the test."""
    pids: list[int] = []
    yield pids
    alive = [p for p in pids if pid_alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"processes left alive: {alive}"


__all__ = ["pid_alive", "python", "subprocess"]

from tests.ssh_fixtures import *  # noqa: E402, F403
