"""The job host on a remote machine, through real sshd: runtime install, bridge, detached
jobs that outlive the connection, reattach by session name (issue 5 over SSH)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import JobState
from asyncjobs._host.runtime import build_runtime
from tests.conftest import eventually
from tests.testhosts import TestHosts

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

STATE = "$HOME/.local/state/asyncjobs $HOME/.cache/asyncjobs"


def _kill_job_hosts(hosts: TestHosts) -> None:
    for pid in hosts.pgrep(None, "asyncjobs._host.daemon"):
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


@pytest.fixture
def remote(ssh_hosts: TestHosts) -> Iterator[TestHosts]:
    """The test hosts with no job host running and no job host state: each test starts
    clean, and the job host it started is stopped (by pid) afterwards."""
    _kill_job_hosts(ssh_hosts)
    subprocess.run(
        ["su", "-s", "/bin/sh", ssh_hosts.username, "-c", f"rm -rf {STATE}"], check=False
    )
    yield ssh_hosts
    _kill_job_hosts(ssh_hosts)


@pytest.fixture
def options(remote: TestHosts) -> dict[str, Any]:
    return dict(remote.ssh_options())


async def test_detached_remote_job_is_received_after_reconnecting(
    remote: TestHosts, options: dict[str, Any]
) -> None:
    host = remote.hosts[0]
    async with asyncjobs.connect(host.address, host.port, name="nightly", **options) as s:
        job = await s.jobs.start_command("sleep 0.3; seq 1 2000", name="build")
        assert job.state is JobState.RUNNING and job.name == "build"
        await s.disconnect()  # leave it running there; this connection goes away
    [info] = await asyncjobs.get_sessions(host.address, host.port, **options)
    assert (info.name, info.state, info.job_count) == ("nightly", "Disconnected", 1)
    # ...later, from another process:
    code = f"""
        import anyio, asyncjobs
        async def main():
            async with asyncjobs.connect({host.address!r}, {host.port}, name="nightly",
                                         **{options!r}) as s:
                await s.jobs.wait({job.id}, timeout=30)
                lines = await s.jobs.receive({job.id}, keep=True)
                print(len(lines), lines[0], lines[-1])
        anyio.run(main, backend="asyncio")
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2000", "1", "2000"]


async def test_runtime_is_installed_once_and_hash_checked(
    remote: TestHosts, options: dict[str, Any]
) -> None:
    host = remote.hosts[1]
    runtime = build_runtime()
    path = f"$HOME/.cache/asyncjobs/{runtime.name}"
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        assert await s.invoke(f"ls {path} 2>/dev/null || echo none") == ["none"]
        await s.jobs.get()  # first use: installs
        [stat1] = await s.invoke(f"stat -c %Y.%s {path}")
        [digest] = await s.invoke(f"sha256sum {path} | cut -d' ' -f1")
        assert digest == runtime.sha256
        assert stat1.endswith(f".{len(runtime.data)}")
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        await s.jobs.get()  # found, not sent again
        assert await s.invoke(f"stat -c %Y.%s {path}") == [stat1]
        await s.invoke(f"printf x >> {path}")  # damaged: replaced on next use
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        await s.jobs.get()
        [digest] = await s.invoke(f"sha256sum {path} | cut -d' ' -f1")
        assert digest == runtime.sha256


async def test_two_controllers_follow_one_remote_job(
    remote: TestHosts, options: dict[str, Any]
) -> None:
    host = remote.hosts[2]
    async with (
        asyncjobs.connect(host.address, host.port, name="a", **options) as a,
        asyncjobs.connect(host.address, host.port, name="b", **options) as b,
    ):
        job = await a.jobs.start_command("seq 1 300")
        await a.jobs.wait(job, timeout=30)
        first = await a.jobs.read(job.id, 0)
        second = await b.jobs.read(job.id, 0)  # keep reads: nobody steals from anybody
        assert (
            [r.value for r in first] == [r.value for r in second] == [str(i) for i in range(1, 301)]
        )
        assert await b.jobs.receive(job.id) == [str(i) for i in range(1, 301)]
        assert await a.jobs.receive(job.id) == []  # receive-once is global, as in PowerShell


async def test_stop_and_remove_remote_host_jobs(remote: TestHosts, options: dict[str, Any]) -> None:
    host = remote.hosts[0]
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        job = await s.jobs.start_command("sh -c 'sleep 1000; :' stopme; echo never")
        with anyio.fail_after(15):
            info = await s.jobs.stop(job)
        assert info.state is JobState.STOPPED
        await s.jobs.remove(job)
        assert await s.jobs.get() == []
        assert await s.invoke("pgrep -u $(id -u) -f 'stop[m]e' || echo gone") == ["gone"]


async def test_a_named_session_job_is_disconnected_then_resumes_losing_nothing(
    remote: TestHosts, options: dict[str, Any]
) -> None:
    """sshd dies mid-stream: the local child becomes DISCONNECTED (the command goes on in the
    host's job host); sshd comes back: the child reconnects and resumes from the last record it
    holds — every line once, in order."""
    host = remote.hosts[0]
    session = await asyncjobs.connect(host.address, host.port, name="resilient", **options)
    try:
        async with asyncjobs.JobManager() as jobs:
            job = await jobs.invoke(
                [session], "i=0; while [ $i -lt 400 ]; do echo $i; i=$((i+1)); sleep 0.005; done"
            )
            child = job.children[0]
            got: list[str] = []
            changes: list[JobState] = []

            async def watch() -> None:
                changes.extend([change.state async for change in child.state_changes()])

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async for line in child.stream():
                    got.append(line)
                    if len(got) == 50:
                        remote.cut_link(0)  # the network to the host is gone
                        await eventually(lambda: child.state is JobState.DISCONNECTED, timeout=20)
                        assert job.state is JobState.DISCONNECTED
                        remote.restart(0)  # and back
            assert got == [str(i) for i in range(400)]
            assert child.state is JobState.COMPLETED and child.exit_status == 0
            assert JobState.DISCONNECTED in changes
            assert changes[-2:] == [JobState.RUNNING, JobState.COMPLETED]
    finally:
        await session.close()
