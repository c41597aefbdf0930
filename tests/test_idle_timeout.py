"""The idle timeout (issue 14 item 2), in the API (``invoke(idle_timeout=)``) and the CLI
(``--idle-timeout S``), and ``--retries N`` in the CLI, against the real sshd test hosts.

A host whose command sent nothing (stdout nor stderr) for S seconds fails with "no output for
S s", naming the host, and its remote process group is killed (``pgrep`` on the test user's
processes finds nothing left); a command that keeps printing is never taken for idle, nor is
one that only waits because this side stopped reading (a full ``block`` buffer)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import Buffer, CommandFailed, JobArgumentError, JobManager, JobState
from tests.testhosts import TestHosts

ASYNCIO = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def tag() -> str:
    return f"aj{uuid.uuid4().hex[:10]}"


def silent(word: str) -> str:
    """Prints a line, then sleeps with ``word`` on its command line (for pgrep)."""
    return f"echo start; sh -c 'sleep 60; :' {word}"


def gone(hosts: TestHosts, word: str) -> bool:
    deadline = time.monotonic() + 10
    while hosts.pgrep(None, word):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- the API ------------------------------------------------------------------------------


@pytest.mark.anyio
@ASYNCIO
async def test_a_silent_command_fails_and_its_group_is_killed(ssh_hosts: TestHosts) -> None:
    word = tag()
    t0 = time.monotonic()
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0], silent(word), idle_timeout=1, **ssh_hosts.ssh_options()
        )
        await parent.wait(timeout=30)
        [child] = parent.children
        assert await child.receive() == ["start"]
    elapsed = time.monotonic() - t0
    assert child.state is JobState.FAILED
    assert isinstance(child.reason, CommandFailed)
    host = ssh_hosts.hosts[0]
    assert f"{host.address}:{host.port}" in str(child.reason)
    assert "no output for 1 s" in str(child.reason)
    assert 1 <= elapsed < 15
    assert gone(ssh_hosts, word)


@pytest.mark.anyio
@ASYNCIO
async def test_a_command_that_keeps_printing_is_not_idle(ssh_hosts: TestHosts) -> None:
    # 2.5 s in all, a line every 0.25 s: four times the idle timeout, never silent for 1 s.
    command = "i=0; while [ $i -lt 10 ]; do echo $i; i=$((i+1)); sleep 0.25; done; echo $i >&2"
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0], command, idle_timeout=1, **ssh_hosts.ssh_options()
        )
        await parent.wait(timeout=30)
        [child] = parent.children
        assert child.state is JobState.COMPLETED, child.reason
        assert await child.receive() == [str(i) for i in range(10)]


@pytest.mark.anyio
@ASYNCIO
async def test_stderr_counts_as_output(ssh_hosts: TestHosts) -> None:
    command = "i=0; while [ $i -lt 8 ]; do echo $i >&2; i=$((i+1)); sleep 0.25; done"
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0], command, idle_timeout=1, **ssh_hosts.ssh_options()
        )
        await parent.wait(timeout=30)
        assert parent.children[0].state is JobState.COMPLETED, parent.children[0].reason


@pytest.mark.anyio
@ASYNCIO
async def test_waiting_for_this_side_to_read_is_not_idle(ssh_hosts: TestHosts) -> None:
    """A full block buffer holds the host (SSH flow control): that silence is ours."""
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0],
            "seq 1 200000",
            idle_timeout=0.5,
            buffer=Buffer(max_items=1000, max_bytes=None, mode="block"),
            **ssh_hosts.ssh_options(),
        )
        [child] = parent.children
        await anyio.sleep(2)  # nobody reads: the host is held, four idle timeouts long
        assert child.state is JobState.RUNNING
        items = [item async for item in child.stream()]
        await parent.wait(timeout=30)
        assert child.state is JobState.COMPLETED, child.reason
        assert len(items) == 200000 and items[-1] == "200000"


@pytest.mark.anyio
@ASYNCIO
async def test_idle_timeout_refuses_bad_values_and_named_sessions(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    async with JobManager() as jobs:
        for bad in (0, -1, "1", float("nan")):
            with pytest.raises(JobArgumentError, match="idle_timeout must be"):
                await jobs.invoke(ssh_hosts.targets[0], "true", idle_timeout=bad)  # type: ignore[arg-type]
        async with asyncjobs.connect(
            host.address, host.port, name=tag(), **ssh_hosts.ssh_options()
        ) as named:
            with pytest.raises(JobArgumentError, match="not available on a named session"):
                await jobs.invoke([named], "true", idle_timeout=5)


# -- the CLI ------------------------------------------------------------------------------


def cli(
    hosts: TestHosts, home: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    ssh = ["-i", str(hosts.client_key), "--known-hosts", str(hosts.known_hosts), "-F", "none"]
    env = dict(os.environ, HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", "invoke", *ssh, "-l", hosts.username, *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_cli_idle_timeout_fails_the_silent_host_only(ssh_hosts: TestHosts, home: Path) -> None:
    word = tag()
    quiet, busy = (f"{h.address}:{h.port}" for h in ssh_hosts.hosts[:2])
    command = (
        f'if [ "$SSH_CONNECTION" != "${{SSH_CONNECTION%{ssh_hosts.hosts[0].port}}}" ]; '
        f"then {silent(word)}; else for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done; fi"
    )
    run = cli(ssh_hosts, home, "--idle-timeout", "1", "-H", f"{quiet},{busy}", "--", command)
    assert run.returncode == 255, run.stderr  # a failure without the command's own status
    assert f"{quiet}: start" in run.stdout and f"{busy}: 6" in run.stdout
    summary = run.stderr
    assert "no output for 1 s (idle timeout)" in summary
    assert "1 failed" in summary and "1 completed" in summary
    assert "Traceback" not in summary
    assert gone(ssh_hosts, word)


def test_cli_idle_timeout_needs_hosts(home: Path, ssh_hosts: TestHosts) -> None:
    run = cli(ssh_hosts, home, "--idle-timeout", "1", "--", "true")
    assert run.returncode == 2
    assert "--idle-timeout is for hosts reached over SSH" in run.stderr
    bad = cli(ssh_hosts, home, "--idle-timeout", "0", "-H", "127.0.0.1:1", "--", "true")
    assert bad.returncode == 2 and "--idle-timeout" in bad.stderr
    bad = cli(ssh_hosts, home, "--retries", "-1", "-H", "127.0.0.1:1", "--", "true")
    assert bad.returncode == 2 and "--retries" in bad.stderr


# -- --retries ----------------------------------------------------------------------------


def _silent_listener(fresh: TestHosts) -> socket.socket:
    """Host 0's sshd killed and its port held by a listener that accepts and says nothing:
    a connection to it times out (a connection-level failure, retryable)."""
    host = fresh.hosts[0]
    fresh.kill(0)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host.address, host.port))
    listener.listen(8)
    return listener


def _first_attempt(listener: socket.socket, proc: subprocess.Popen[Any]) -> socket.socket:
    """The CLI's first connection, accepted (held open, silent)."""
    listener.settimeout(0.1)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never connected"
        else:
            return conn


@pytest.mark.parametrize("retries", [0, 3])
def test_cli_retries_a_connection_that_failed(
    fresh_ssh_host: TestHosts, home: Path, retries: int
) -> None:
    """The first attempt reaches a port that accepts and stays silent (it times out after
    1 s); sshd is back on that port before it does. With --retries the second attempt gets
    through; without, the host fails with the timeout. Each step waits for the one before
    (the attempt is seen arriving), so nothing depends on timing but the 1 s timeout."""
    host = fresh_ssh_host.hosts[0]
    listener = _silent_listener(fresh_ssh_host)
    ssh = ["-i", str(fresh_ssh_host.client_key), "--known-hosts", str(fresh_ssh_host.known_hosts)]
    env = dict(os.environ, HOME=str(home))
    env.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "invoke", *ssh, "-F", "none", "-l",
         fresh_ssh_host.username, "--connect-timeout", "1", "--retries", str(retries),
         "-H", f"{host.address}:{host.port}", "--", "echo through"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    held = None
    try:
        held = _first_attempt(listener, proc)
        listener.close()
        fresh_ssh_host.restart(0)  # same port; the first attempt still times out (held)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if held is not None:
            held.close()
        listener.close()
    if retries:
        assert proc.returncode == 0, err
        assert out == f"{host.address}:{host.port}: through\n"
    else:
        assert proc.returncode == 255, err  # as ssh: the connection failed
        assert "timed out after 1 s" in err and out == ""
