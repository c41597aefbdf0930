"""The job table: get/wait/stop/remove, limits, statistics, bad input, and leaving it."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.abc
import pytest

import asyncjobs
from asyncjobs import AsyncJobsError, JobArgumentError, JobManager, JobState, JobStateError
from asyncjobs._core.clock import REAL, FakeClock

pytestmark = pytest.mark.anyio


def value(x: object) -> object:
    return x


def fail() -> None:
    raise RuntimeError("nope")


def wait_for(event: threading.Event) -> None:
    event.wait(10)


def until_stopped(entered: threading.Event, left: threading.Event) -> None:
    entered.set()
    while not asyncjobs.stop_requested():
        time.sleep(0.002)
    time.sleep(0.05)  # the manager must wait for this, not abandon the thread
    left.set()


async def test_get_filters_combine() -> None:
    go = threading.Event()
    async with JobManager() as jobs:
        a = await jobs.start_thread(value, 1, name="build-a")
        b = await jobs.start_thread(value, 2, name="build-b")
        t = await jobs.start_thread(wait_for, go, name="test")
        await jobs.wait(a, b)
        assert jobs.get() == [a, b, t]
        assert jobs.get(name="build-*") == [a, b]
        assert jobs.get(name="BUILD-*") == []  # wildcards are case-sensitive, like fnmatchcase
        assert jobs.get(id=2) == [b] and jobs.get(id=[1, 3]) == [a, t]
        assert jobs.get(state=JobState.RUNNING) == [t]
        assert jobs.get(state="Completed") == [a, b] and jobs.get(state="completed") == [a, b]
        assert jobs.get(state=[JobState.RUNNING, "COMPLETED"]) == [a, b, t]
        assert jobs.get(kind="ThreadJob", location="localhost", name="*-b") == [b]
        assert jobs.get(kind="BackgroundJob") == []
        assert jobs.get(has_more_data=True) == [a, b, t]
        await a.receive()
        assert jobs.get(has_more_data=False) == [a]
        assert jobs.get(include_children=True) == [a, b, t]
        assert jobs[2] is b and len(jobs) == 3 and b in jobs
        with pytest.raises(AsyncJobsError, match="unknown job state 'Runing'"):
            jobs.get(state="Runing")
        go.set()


async def test_unknown_id_is_a_clear_key_error() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(value, 1)
        with pytest.raises(KeyError, match="no job with id 99"):
            jobs[99]
        with pytest.raises(KeyError, match="no job with id 99"):
            await jobs.stop(99)
        with pytest.raises(AsyncJobsError, match=r"must be an asyncjobs\.Job, got str"):
            await jobs.wait("1")  # type: ignore[arg-type]
        assert await job == [1]  # other jobs untouched


async def test_wait_all_any_timeout_and_poll() -> None:
    go = threading.Event()
    async with JobManager() as jobs:
        quick = await jobs.start_thread(value, 1)
        slow = await jobs.start_thread(wait_for, go)
        assert await jobs.wait(quick, slow, any=True, timeout=10) == [quick]
        assert await jobs.wait(slow, timeout=0) == []
        assert await jobs.wait(quick, slow, timeout=0.05) == [quick]
        go.set()
        assert await jobs.wait() == [quick, slow]
        assert await slow.wait(timeout=0) is True


async def test_stop_and_remove() -> None:
    entered, left = threading.Event(), threading.Event()
    async with JobManager() as jobs:
        done = await jobs.start_thread(value, 1)
        running = await jobs.start_thread(until_stopped, entered, left)
        await done.wait()
        with pytest.raises(
            JobStateError, match=r"job 2 \('Job2'\) is RUNNING; stop it first"
        ) as info:
            await jobs.remove(running)
        assert info.value.from_state is JobState.RUNNING
        assert running.state is JobState.RUNNING and await done.receive(keep=True) == [1]
        await jobs.remove(done)
        assert jobs.get() == [running]
        await jobs.remove(running.id, force=True)
        assert running.state is JobState.STOPPED and left.is_set()
        assert jobs.get() == []
        with pytest.raises(KeyError):
            await jobs.remove(done)


async def test_a_failing_job_leaves_the_others_alone() -> None:
    async with JobManager() as jobs:
        started = [await jobs.start_thread(fail if i == 3 else value, i) for i in range(6)]
        await jobs.wait()
        states = [j.state for j in started]
        assert states.count(JobState.FAILED) == 1 and states[3] is JobState.FAILED
        assert [await j.receive() for j in started if j.state is JobState.COMPLETED] == [
            [0],
            [1],
            [2],
            [4],
            [5],
        ]


async def test_leaving_stops_running_jobs_and_waits_for_their_threads() -> None:
    entered, left = threading.Event(), threading.Event()
    async with JobManager() as jobs:
        job = await jobs.start_thread(until_stopped, entered, left)
        await anyio.to_thread.run_sync(entered.wait, 10)
    assert left.is_set()  # no thread work outlives the manager
    assert job.state is JobState.STOPPED


async def test_leaving_with_an_error_still_stops_jobs() -> None:
    entered, left = threading.Event(), threading.Event()
    with pytest.raises(ZeroDivisionError):  # noqa: PT012 - the error must cross the manager
        async with JobManager() as jobs:
            job = await jobs.start_thread(until_stopped, entered, left)
            await anyio.to_thread.run_sync(entered.wait, 10)
            1 / 0  # noqa: B018
    assert left.is_set() and job.state is JobState.STOPPED


async def test_jobs_stay_readable_after_the_manager_closed() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(value, "kept")
        await job.wait()
    assert await job == ["kept"]


async def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(JobArgumentError, match="thread_limit must be a positive int, got 0"):
        JobManager(thread_limit=0)
    with pytest.raises(JobArgumentError, match="process_limit must be a positive int, got 'x'"):
        JobManager(process_limit="x")  # type: ignore[arg-type]
    manager = JobManager()
    with pytest.raises(AsyncJobsError, match="not open; start jobs inside 'async with"):
        await manager.start_thread(value, 1)
    async with manager as jobs:
        with pytest.raises(JobArgumentError, match="needs a callable first, got int"):
            await jobs.start_thread(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):  # JobArgumentError is a TypeError too
            await jobs.start_thread(value, 1, name=5)  # type: ignore[arg-type]
        with pytest.raises(JobArgumentError, match=r"buffer must be an asyncjobs\.Buffer"):
            await jobs.start_thread(value, 1, buffer={"max_items": 3})  # type: ignore[arg-type]
        assert jobs.get() == []
    with pytest.raises(AsyncJobsError, match="entered once"):
        async with manager:
            pass


async def test_statistics_and_repr() -> None:
    go = threading.Event()
    manager = JobManager(thread_limit=3, process_limit=2)
    assert repr(manager) == (
        "<asyncjobs.JobManager not entered jobs=0 running=0 thread_limit=3 process_limit=2>"
    )
    async with manager as jobs:
        await (await jobs.start_thread(value, 1)).wait()
        await jobs.start_thread(wait_for, go)
        stats = jobs.statistics()
        assert stats.jobs == 2 and stats.by_state == {"COMPLETED": 1, "RUNNING": 1}
        assert (stats.threads_in_use, stats.thread_limit, stats.process_limit) == (1, 3, 2)
        assert repr(jobs) == (
            "<asyncjobs.JobManager open jobs=2 running=1 thread_limit=3 process_limit=2>"
        )
        job_stats = jobs[1].statistics()
        assert job_stats.id == 1 and job_stats.state is JobState.COMPLETED
        assert job_stats.buffer.items == 1 and job_stats.duration is not None
        go.set()
    assert repr(manager).startswith("<asyncjobs.JobManager closed jobs=2 running=0")


async def test_ids_are_small_and_instance_ids_unique() -> None:
    async with JobManager() as jobs:
        made = [await jobs.start_thread(value, i) for i in range(5)]
        assert [j.id for j in made] == [1, 2, 3, 4, 5]
        assert len({j.instance_id for j in made}) == 5
        assert [j.name for j in made] == [f"Job{i}" for i in range(1, 6)]


async def test_a_failing_enter_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker pool is entered before the task group: if the group fails to start, the pool
    is closed again (an AsyncExitStack unwinds what was entered), not leaked."""
    real = anyio.create_task_group

    def broken() -> anyio.abc.TaskGroup:
        monkeypatch.setattr(anyio, "create_task_group", real)  # only the manager's own call
        raise OSError("no task group today")

    monkeypatch.setattr(anyio, "create_task_group", broken)
    jobs = JobManager()
    with pytest.raises(OSError, match="no task group today"):
        await jobs.__aenter__()
    assert jobs._workers is not None
    assert repr(jobs._workers).startswith("<asyncjobs.WorkerPool closed ")


async def test_the_fake_clock_passes_time_at_once() -> None:
    clock = FakeClock()
    started = time.monotonic()
    await clock.sleep(30)
    with clock.move_on_after(60) as scope:
        await anyio.sleep(60)
    assert scope.cancelled_caught and time.monotonic() - started < 1
    assert (clock.now(), clock.waited) == (90.0, [30, 60])
    assert REAL.now() == pytest.approx(anyio.current_time(), abs=1)
    with REAL.move_on_after(0.01) as scope:
        await REAL.sleep(5)
    assert scope.cancelled_caught
