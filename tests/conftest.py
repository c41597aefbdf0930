"""Shared fixtures: every async test runs on asyncio and on trio, and fails loudly if a backend
cannot load (anyio's own default fixture would silently drop trio)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def host_pid(directory: Path) -> int | None:
    """The pid of the job host serving ``directory`` (from its lock file), if any."""
    try:
        text = (directory / "host.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@pytest.fixture
def hostdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private job host directory (short: socket paths are limited); the host that served
    it is stopped (TERM, then KILL, by its pid) and the directory removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="ajh", dir="/tmp"))
    monkeypatch.setenv("ASYNCJOBS_HOST_DIR", str(directory))
    monkeypatch.setenv("ASYNCJOBS_HOST_IDLE_EXIT", "60")
    yield directory
    pid = host_pid(directory)
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    log = directory / "host.log"
    if log.exists():
        print(log.read_text())  # shown when the test failed
    subprocess.run(["rm", "-rf", str(directory)], check=False)


from tests.ssh_fixtures import *  # noqa: E402, F403


async def eventually(condition: Callable[[], object], *, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` is true, polling, and fail the test if ``timeout`` passes
    first: for facts no event announces (a process appearing, a counter reaching a value)."""
    import anyio

    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)
