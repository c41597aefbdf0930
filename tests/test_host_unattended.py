"""A detached job nobody reads keeps all its output on the job host (the store is the spill)
and runs to its end: ``block`` and ``drop`` hold or discard only when a session asked for them.
Real job host; the CLI as a subprocess, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from asyncjobs import JobState
from asyncjobs._host.client import connect_local
from asyncjobs._host.hostjob import DISCONNECTED_BOUND

N = 5 * DISCONNECTED_BOUND  # far past the bound that used to hold every detached job


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, NO_COLOR="1"),
        check=False,
    )


def test_a_started_job_nobody_reads_runs_to_its_end_with_all_its_output(hostdir: Path) -> None:
    started = cli("start", "--json", "--", f"seq 1 {N}")
    assert started.returncode == 0, started.stderr
    job_id = str(json.loads(started.stdout)["jobs"][0]["id"])
    waited = cli("wait", job_id, "--timeout", "60", "--json")
    [job] = json.loads(waited.stdout)["jobs"]
    assert job["state"] == "Completed", job  # it used to stay Running (seq blocked on its pipe)
    assert cli("get", "--state", "Blocked", "--json").stdout.count('"id"') == 0
    received = cli("receive", job_id)
    assert received.returncode == 0, received.stderr
    assert received.stdout.splitlines() == [str(i) for i in range(1, N + 1)]


@pytest.mark.anyio
async def test_a_detached_session_keeps_everything_unless_told_otherwise(hostdir: Path) -> None:
    async with connect_local(name="plain") as s:
        job = await s.jobs.start_command(f"seq 1 {N}")
    async with connect_local(name="watcher") as w:
        done = await w.jobs.wait(job.id, timeout=60)
        assert [d.state for d in done] == [JobState.COMPLETED]
        assert done[0].next_seq == N and done[0].dropped == 0
    async with connect_local(name="plain", create=False) as s:
        got = await s.jobs.receive(job.id)
        assert got == [str(i) for i in range(1, N + 1)]
        with anyio.fail_after(5):
            sessions = {x.name: x for x in await s.sessions()}
        assert "plain" in sessions
