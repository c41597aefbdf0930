"""The job host on a full disk (issue 10, item 6), its directory on a real tmpfs of a few MiB
mounted for the test (CI runs as root; unmounted in a ``finally``): a job whose output can't
be stored fails with a reason naming the full store, the host goes on serving what is stored,
and a host that can't start says why to the controller, not only in a log on the full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from asyncjobs import AsyncJobsError, JobState
from asyncjobs._host.client import connect_local
from tests.conftest import host_pid, pid_alive

pytestmark = pytest.mark.anyio


def _stop_host(directory: Path) -> None:
    pid = host_pid(directory)
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def small_hostdir(hostdir: Path) -> Iterator[Path]:
    """``hostdir`` on a 6 MiB tmpfs of its own."""
    assert os.getuid() == 0, "mounting a tmpfs needs root (CI runs as root)"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(hostdir)], check=True
    )
    try:
        yield hostdir
    finally:
        _stop_host(hostdir)
        log = hostdir / "host.log"
        if log.exists():
            print(log.read_text())
        subprocess.run(["umount", "-l", str(hostdir)], check=False)


def _fill(directory: Path) -> None:
    """Take every free block of ``directory``'s file system."""
    with open(directory / "ballast", "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass


async def test_a_job_whose_output_cannot_be_stored_fails_and_the_host_serves_on(
    small_hostdir: Path,
) -> None:
    async with connect_local(name="full") as s:
        small = await s.jobs.start_command("echo kept; echo also kept")
        await s.jobs.wait(small, timeout=30)
        pid = host_pid(small_hostdir)
        big = await s.jobs.start_command(
            "yes 'a line of output that fills the disk' | head -c 50000000"
        )
        [done] = await s.jobs.wait(big, timeout=60)
        assert done.state is JobState.FAILED, done
        assert done.reason is not None
        assert "can't be stored" in done.reason and "full" in done.reason, done.reason
        assert str(small_hostdir / "store.sqlite") in done.reason  # the path
        assert "Free space" in done.reason  # and what to do
        # The host goes on: the same process, reads of what is stored, the job table.
        assert host_pid(small_hostdir) == pid and pid is not None and pid_alive(pid)
        assert [r.value for r in await s.jobs.read(small)] == ["kept", "also kept"]
        stored = await s.jobs.read(big, 0, limit=5)
        assert [r.value for r in stored] == ["a line of output that fills the disk"] * 5
        assert {j.id for j in await s.jobs.get()} >= {small.id, big.id}
    async with connect_local(name="full", create=False) as s:  # and reattaching
        assert (await s.jobs.job(big)).state is JobState.FAILED
        assert [r.value for r in await s.jobs.read(small)] == ["kept", "also kept"]


async def test_a_host_that_cannot_start_says_why(small_hostdir: Path) -> None:
    _fill(small_hostdir)  # nothing of the host exists yet: no store, no log
    with anyio.fail_after(30), pytest.raises(AsyncJobsError) as caught:
        async with connect_local(name="x"):
            pass
    message = str(caught.value)
    assert "could not start" in message, message
    assert "No space left" in message and str(small_hostdir) in message, message
    assert "bytes free" in message  # the hint: free space or move ASYNCJOBS_HOST_DIR
