"""A remote command's stdin (issue 11, item 2), against real sshd test hosts.

By default the channel gets EOF at once, as ``ssh host cmd </dev/null`` (and a local command's
``/dev/null``) would give it, so that a command that reads stdin ends instead of hanging until
its timeout. ``input=`` (``str`` or ``bytes``) is sent to the command's stdin, then EOF: on
``Session.invoke``, on every child of ``JobManager.invoke``, through a named session's job host
and on ``session.jobs.start_command``. The command line's ``--stdin`` / ``-I`` reads its own
stdin once and sends it to every host (as ``pssh -I``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import JobArgumentError, JobManager, JobState
from asyncjobs._cli._invoke import STDIN_LIMIT
from tests.testhosts import TestHosts


def on_asyncio(test: Any) -> Any:
    """An async test, on asyncio only (asyncssh); the command-line tests are plain functions."""
    return pytest.mark.anyio(pytest.mark.parametrize("anyio_backend", ["asyncio"])(test))


#: Past this a remote `cat` that never got EOF has hung (each case takes well under 1 s).
QUICK = 15.0


@pytest.fixture
async def session(ssh_hosts: TestHosts) -> AsyncIterator[asyncjobs.Session]:
    host = ssh_hosts.hosts[0]
    async with asyncjobs.connect(host.address, host.port, **ssh_hosts.ssh_options()) as s:
        yield s


# -- the Python API ---------------------------------------------------------------------------


@on_asyncio
@pytest.mark.usefixtures("no_leftovers")
async def test_a_remote_command_that_reads_stdin_gets_eof(session: asyncjobs.Session) -> None:
    with anyio.fail_after(QUICK):
        assert await session.invoke("cat", timeout=QUICK) == []
        assert await session.invoke("read x || echo eof", timeout=QUICK) == ["eof"]
        assert await session.invoke("wc -c", timeout=QUICK) == ["0"]


@on_asyncio
@pytest.mark.usefixtures("no_leftovers")
async def test_session_invoke_sends_input_then_eof(session: asyncjobs.Session) -> None:
    with anyio.fail_after(QUICK):
        assert await session.invoke("cat", input="a\nb\n") == ["a", "b"]
        assert await session.invoke("cat", input=b"x\xffy\n") == [b"x\xffy"]  # as local lines
        assert await session.invoke("tr a-z A-Z", input="no newline") == ["NO NEWLINE"]
        assert await session.invoke("cat", input="") == []
        # A program that stops reading early is fine, as locally.
        assert await session.invoke("head -n 1", input="first\n" + "more\n" * 200_000) == ["first"]
        assert await session.invoke("true", input=b"z" * 3_000_000) == []


@on_asyncio
@pytest.mark.usefixtures("no_leftovers")
async def test_big_input_arrives_whole_and_the_output_flows_meanwhile(
    session: asyncjobs.Session,
) -> None:
    """8 MiB through `cat`: more than the SSH windows both ways, so sending and receiving
    must overlap (a writer that waited for all its input to be taken would deadlock)."""
    data = os.urandom(8 << 20)
    with anyio.fail_after(60):
        out = b"".join(await session.invoke("cat", input=data, lines=False))
        assert out == data
        [digest] = await session.invoke("sha256sum | cut -d' ' -f1", input=data)
    assert digest == hashlib.sha256(data).hexdigest()


@on_asyncio
@pytest.mark.usefixtures("no_leftovers")
async def test_input_is_checked_naming_input(session: asyncjobs.Session) -> None:
    for bad in (42, ["a\n", "b\n"], {"a": "b"}, 1.5):
        with pytest.raises(JobArgumentError, match=r"\binput\b"):
            await session.invoke("cat", input=bad)  # type: ignore[arg-type]
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"\binput\b"):
            await jobs.invoke([session], "cat", input=42)  # type: ignore[arg-type]
        assert jobs.get() == []  # refused before any job was made


@on_asyncio
@pytest.mark.usefixtures("no_leftovers")
async def test_fan_out_sends_the_same_input_to_every_host(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        job = await jobs.invoke(
            ssh_hosts.targets, "sort -r", input="1\n3\n2\n", **ssh_hosts.ssh_options()
        )
        assert await job.wait(timeout=QUICK)
        assert job.state is JobState.COMPLETED
        for child in job.children:
            assert await child.receive() == ["3", "2", "1"]
        eof = await jobs.invoke(ssh_hosts.targets, "cat; echo done", **ssh_hosts.ssh_options())
        assert await eof.wait(timeout=QUICK) and eof.state is JobState.COMPLETED
        assert [await c.receive() for c in eof.children] == [["done"]] * 3


# -- the job host over SSH (named sessions, session.jobs) --------------------------------------


@pytest.fixture
def remote(ssh_hosts: TestHosts) -> Iterator[TestHosts]:
    """The test hosts; the job hosts that the test started there are stopped (by pid) after."""
    before = set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon"))
    yield ssh_hosts
    for pid in set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon")) - before:
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


@on_asyncio
async def test_input_reaches_commands_on_a_remote_job_host(remote: TestHosts) -> None:
    host = remote.hosts[1]
    options: dict[str, Any] = dict(remote.ssh_options())
    async with asyncjobs.connect(host.address, host.port, name="stdin", **options) as s:
        with anyio.fail_after(30):
            job = await s.jobs.start_command("cat; echo end", input="from the controller\n")
            await s.jobs.wait(job, timeout=QUICK)
            assert await s.jobs.receive(job) == ["from the controller", "end"]
            closed = await s.jobs.start_command("cat; echo end")  # stdin is /dev/null there
            [info] = await s.jobs.wait(closed, timeout=QUICK)
            assert info.state is JobState.COMPLETED
            async with JobManager() as jobs:  # invoke on a named session: its job host
                parent = await jobs.invoke([s], "tac", input=b"1\n2\n")
                assert await parent.wait(timeout=QUICK)
                assert await parent.receive() == ["2", "1"]


# -- the command line -------------------------------------------------------------------------


def _env() -> dict[str, str]:
    clean = dict(os.environ)
    clean.pop("SSH_AUTH_SOCK", None)
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    return clean


def _cli(
    *args: str, stdin: bytes | None = None, devnull: bool = False, timeout: float = QUICK + 15
) -> subprocess.CompletedProcess[str]:
    """The command line as a subprocess; ``stdin`` piped in, or /dev/null, or (neither) an
    open pipe that nobody writes to or closes: a terminal-like stdin that never ends."""
    argv = [sys.executable, "-m", "asyncjobs", *args]
    if stdin is not None or devnull:
        proc = subprocess.run(
            argv,
            input=stdin,
            stdin=subprocess.DEVNULL if devnull else None,
            capture_output=True,
            timeout=timeout,
            env=_env(),
        )
        return subprocess.CompletedProcess(
            argv, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
        )
    r, w = os.pipe()  # held open: reading it would block forever
    try:
        done = subprocess.run(
            argv, stdin=r, capture_output=True, text=True, timeout=timeout, env=_env()
        )
    finally:
        os.close(r)
        os.close(w)
    return done


def _ssh(hosts: TestHosts) -> list[str]:
    return [
        "-l", hosts.username, "-i", str(hosts.client_key),
        "--known-hosts", str(hosts.known_hosts), "-F", "none",
    ]  # fmt: skip


def _hosts(hosts: TestHosts) -> list[str]:
    return [f"{h.address}:{h.port}" for h in hosts.hosts]


def test_cli_invoke_closes_remote_stdin(remote: TestHosts, hostdir: Path) -> None:
    hosts = _hosts(remote)
    t0 = time.monotonic()
    run = _cli("invoke", "-H", hosts[0], *_ssh(remote), "--timeout", str(QUICK), "--", "cat",
               devnull=True)  # fmt: skip
    assert run.returncode == 0, run
    assert time.monotonic() - t0 < QUICK
    # Without --stdin, a piped stdin is not the hosts' (as with pdsh): they get EOF.
    piped = _cli("invoke", "-H", ",".join(hosts), *_ssh(remote), "--timeout", str(QUICK),
                 "--", "cat; echo done", stdin=b"hi\n")  # fmt: skip
    assert piped.returncode == 0, piped
    assert sorted(piped.stdout.splitlines()) == sorted(f"{h}: done" for h in hosts)
    # Nor is a stdin that never ends (a terminal): the command line never reads it.
    never = _cli("invoke", "-H", hosts[1], *_ssh(remote), "--timeout", str(QUICK), "--", "cat")
    assert never.returncode == 0 and never.stdout == "", never


def test_cli_invoke_stdin_broadcasts_to_every_host(remote: TestHosts, hostdir: Path) -> None:
    hosts = _hosts(remote)
    for flag in ("--stdin", "-I"):
        run = _cli("invoke", flag, "-H", ",".join(hosts), *_ssh(remote), "--timeout",
                   str(QUICK), "--", "cat; echo done", stdin=b"hi\nthere\n")  # fmt: skip
        assert run.returncode == 0, run
        for h in hosts:
            assert [ln for ln in run.stdout.splitlines() if ln.startswith(f"{h}: ")] == [
                f"{h}: hi", f"{h}: there", f"{h}: done"
            ]  # fmt: skip
    data = os.urandom(3 << 20)  # more than one SSH window, to each of three hosts
    sums = _cli("invoke", "-I", "-H", ",".join(hosts), *_ssh(remote), "--json", "--",
                "sha256sum | cut -c1-64", stdin=data)  # fmt: skip
    assert sums.returncode == 0, sums
    records = json.loads(sums.stdout)["records"]
    assert sorted(r["location"] for r in records) == sorted(hosts)
    assert {r["value"] for r in records} == {hashlib.sha256(data).hexdigest()}
    # Without -H, on this machine's job host: the same option.
    local = _cli("invoke", "-I", "--", "tr a-z A-Z", stdin=b"local\n")
    assert local.returncode == 0 and local.stdout.split(": ")[1:] == ["LOCAL\n"], local


def test_cli_stdin_is_bounded_and_exclusive_with_hosts_from_stdin(
    remote: TestHosts, hostdir: Path
) -> None:
    hosts = _hosts(remote)
    both = _cli("invoke", "-I", "-H", "-", *_ssh(remote), "--", "cat", stdin=b"x\n")
    assert both.returncode == 2, both
    assert "--stdin" in both.stderr and "-H -" in both.stderr and "Traceback" not in both.stderr
    big = _cli("invoke", "-I", "-H", hosts[0], *_ssh(remote), "--", "wc -c",
               stdin=b"\0" * (STDIN_LIMIT + 1))  # fmt: skip
    assert big.returncode == 2, big
    assert "--stdin" in big.stderr and "MiB" in big.stderr and "Traceback" not in big.stderr
    assert big.stdout == ""  # nothing connected, nothing ran
    exact = _cli("invoke", "-I", "-H", hosts[0], *_ssh(remote), "--", "wc -c",
                 stdin=b"\0" * STDIN_LIMIT)  # fmt: skip
    assert exact.returncode == 0 and exact.stdout.split() == [f"{hosts[0]}:", str(STDIN_LIMIT)]
