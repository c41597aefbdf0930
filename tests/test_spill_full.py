"""Spilling on a full disk (issue 10, item 5), on a real 2 MiB tmpfs mounted for the test (CI
runs as root; elsewhere the mount fails the test, loudly, rather than skipping it).

A write that fails must leave the spill file readable up to the last whole record, everything
appended before the failure must be receivable in order, the failure must be an error record
that reads, and the job's reason must name the full disk, the directory and what to do."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import asyncjobs
from asyncjobs import AsyncJobsError, Buffer, JobManager, JobState
from asyncjobs._core.log import RecordLog
from asyncjobs._core.spill import SpillError, SpillFile

pytestmark = pytest.mark.anyio

ITEMS = 1_000_000  # x 100 bytes: 50 times what the disk holds


def item(i: int) -> str:
    return f"{i:0100d}"  # 100 bytes


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB tmpfs that spill files go to (``TMPDIR`` and ``tempfile.tempdir``, which
    ``tempfile.gettempdir()`` reads), unmounted at the end whatever happened."""
    directory = Path(tempfile.mkdtemp(prefix="ajspill", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)], check=True)
    try:
        monkeypatch.setenv("TMPDIR", str(directory))
        monkeypatch.setattr(tempfile, "tempdir", str(directory))
        yield directory
    finally:
        monkeypatch.undo()
        busy = subprocess.run(["umount", str(directory)], capture_output=True, text=True)
        if busy.returncode != 0:  # a spill file left open: detach it anyway, then say so
            subprocess.run(["umount", "-l", str(directory)], check=False)
        directory.rmdir()
        assert busy.returncode == 0, f"umount {directory}: {busy.stderr.strip()}"


def assert_names_the_full_disk(reason: object, directory: Path) -> None:
    assert isinstance(reason, SpillError), repr(reason)
    assert isinstance(reason, OSError) and isinstance(reason, AsyncJobsError)
    assert reason.errno == errno.ENOSPC
    text = str(reason)
    assert "the disk is full" in text and repr(str(directory)) in text, text
    assert "free space there" in text and "TMPDIR" in text, text


# -- the spill file on its own -----------------------------------------------------------------


def test_a_failed_write_leaves_the_file_as_it_was(full_disk: Path) -> None:
    spill = SpillFile()
    try:
        written, batch = 0, 5000
        while True:
            rows = [("output", item(written + i), 1.0) for i in range(batch)]
            try:
                spill.write(written, rows)
            except OSError as exc:
                failure = exc
                break
            written += batch
        assert failure.errno == errno.ENOSPC
        assert written > 0 and len(spill) == written and spill.spilled_total == written
        assert spill.directory == str(full_disk)
        got = list(spill.read(0, written + batch))  # the index knows nothing of the failed batch
        assert [value for _, _, value, _ in got] == [item(i) for i in range(written)]
        assert [seq for seq, _, _, _ in got] == list(range(written))
        # The file was cut back: the space the failed batch took is free again.
        size = sum(len(pickle.dumps(("output", item(i), 1.0), 5)) for i in range(written))
        assert os.fstat(spill._open().fileno()).st_size == size
        spill.discard_below(written)  # all received: the file is emptied, writes work again
        spill.write(written, [("output", "after", 2.0)])
        assert list(spill.read(written, written + 1)) == [(written, "output", "after", 2.0)]
    finally:
        spill.close()


async def test_the_log_keeps_everything_and_records_the_failure(full_disk: Path) -> None:
    log = RecordLog(
        job_id=3, location="localhost", buffer=Buffer(max_items=1000), name="job 3 ('fill')"
    )
    try:
        appended = 0
        while True:
            try:
                log.append_nowait("output", item(appended))
            except SpillError as exc:
                error = exc
                break
            appended += 1
        assert_names_the_full_disk(error, full_disk)
        assert f"job 3 ('fill') can't spill its records to {str(full_disk)!r}" in str(error)
        assert log.next_seq == appended + 1  # the records, then the error record
        records = log.read()
        assert [r.value for r in records[:-1]] == [item(i) for i in range(appended)]
        last = records[-1]
        assert (last.stream, last.value, last.seq) == ("error", error, appended)
        # Nothing more is taken, except the same failure reported again (by the job's runner).
        with pytest.raises(SpillError, match="the disk is full"):
            log.append_nowait("output", "more")
        with pytest.raises(SpillError):
            await log.append("warning", "more")
        assert log.append_nowait("error", error) is records[-1]
        assert log.next_seq == appended + 1
        assert [r.value for r in log.take({"error"})] == [error]
        assert [r.value for r in log.take({"output"})] == [item(i) for i in range(appended)]
    finally:
        log.release()


# -- jobs --------------------------------------------------------------------------------------


def produce() -> Iterator[str]:
    for i in range(ITEMS):
        yield item(i)


async def check_failed_job(jobs: JobManager, job: asyncjobs.Job, directory: Path) -> None:
    with anyio.fail_after(120):
        await job.wait()
    assert job.state is JobState.FAILED
    assert_names_the_full_disk(job.reason, directory)
    errors = await job.receive_records(streams=["error"])
    assert [r.value for r in errors] == [job.reason]  # one error record, and it reads
    items = await job.receive()
    assert 10_000 <= len(items) < ITEMS
    assert items == [item(i) for i in range(len(items))]  # every one before the failure, in order
    stats = job.statistics().buffer
    assert stats is not None and stats.spilled > 0
    other = await jobs.start_thread(sum, [1, 2, 3])  # other jobs are fine
    assert await other == [6]


async def test_thread_job_fails_clearly_and_keeps_what_it_made(full_disk: Path) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(produce, name="fill")
        await check_failed_job(jobs, job, full_disk)


async def test_command_job_fails_clearly_and_keeps_what_it_made(full_disk: Path) -> None:
    code = f"import sys\nfor i in range({ITEMS}): sys.stdout.write('%0100d\\n' % i)"
    async with JobManager() as jobs:
        job = await jobs.start_command([sys.executable, "-c", code], name="fill")
        await check_failed_job(jobs, job, full_disk)
        assert job.exit_status is None  # it was stopped by the failure, not by its own exit


async def test_process_job_fails_clearly_and_keeps_what_it_made(full_disk: Path) -> None:
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(produce, name="fill")
        await check_failed_job(jobs, job, full_disk)
        again = await jobs.start_process(sum, [4, 5])  # the worker pool goes on
        assert await again == [9]


async def test_a_spill_directory_that_is_gone_fails_the_job_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a full disk but no directory at all: the same guarantees, the cause named."""
    gone = tmp_path / "gone"
    monkeypatch.setattr(tempfile, "tempdir", str(gone))
    async with JobManager(buffer=Buffer(max_items=100)) as jobs:
        job = await jobs.start_thread(produce, name="fill")
        with anyio.fail_after(60):
            await job.wait()
        assert job.state is JobState.FAILED
        reason = job.reason
        assert isinstance(reason, SpillError) and reason.errno == errno.ENOENT
        assert repr(str(gone)) in str(reason) and "TMPDIR" in str(reason), str(reason)
        assert [r.value for r in await job.receive_records(streams=["error"])] == [reason]
        items = await job.receive()
        assert items == [item(i) for i in range(100)]  # the bound: the 101st needed the spill
