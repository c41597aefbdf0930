"""Thread jobs: functions, generators, async functions, streams, stop, limits and buffers."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from anyio.lowlevel import checkpoint

import asyncjobs
from asyncjobs import Buffer, JobFailed, JobManager, JobState, JobStopped, StateChange
from tests.conftest import eventually

pytestmark = pytest.mark.anyio


def add(a: int, b: int = 0) -> int:
    return a + b


def gen_until(started: threading.Event, go: threading.Event) -> Iterator[int]:
    yield 1
    started.set()
    assert go.wait(10)
    yield 2


def boom() -> None:
    asyncjobs.emit("about to fail", "warning")
    raise ValueError("bad input 42")


async def async_double(x: int) -> int:
    await checkpoint()
    return 2 * x


async def async_gen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_function_result_and_kwargs() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(add, 2, b=3, name="adder")
        assert await job == [5]
        assert job.state is JobState.COMPLETED and job.kind == "ThreadJob"
        assert job.command == "add" and job.name == "adder" and job.location == "localhost"
        assert job.started_at is not None and job.finished_at is not None
        assert job.exit_status is None and job.reason is None


async def test_none_result_is_no_item() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(lambda: None)
        assert await job == []


async def test_generator_items_stream_while_it_runs() -> None:
    started, go = threading.Event(), threading.Event()
    async with JobManager() as jobs:
        job = await jobs.start_thread(gen_until, started, go)
        await anyio.to_thread.run_sync(started.wait, 10)
        assert job.state is JobState.RUNNING
        assert await job.receive() == [1]
        assert job.has_more_data
        go.set()
        assert [x async for x in job.stream()] == [2]
        assert job.state is JobState.COMPLETED and not job.has_more_data


async def test_async_function_and_async_generator() -> None:
    async with JobManager() as jobs:
        assert await (await jobs.start_thread(async_double, 21)) == [42]
        assert await (await jobs.start_thread(async_gen, 4)) == [0, 1, 2, 3]


def chatty() -> str:
    asyncjobs.emit("v", "verbose")
    asyncjobs.emit(1)
    asyncjobs.progress("copy", current=1, total=4)
    asyncjobs.emit("w", "warning")
    asyncjobs.emit("i", "information")
    asyncjobs.emit("d", "debug")
    asyncjobs.emit("e", "error")
    return "done"


async def test_records_of_all_streams_in_the_order_produced() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(chatty)
        await job.wait()
        records = await job.receive_records(keep=True)
        assert [r.stream for r in records] == [
            "verbose",
            "output",
            "progress",
            "warning",
            "information",
            "debug",
            "error",
            "output",
        ]
        assert [r.seq for r in records] == list(range(8))
        assert records[2].value == asyncjobs.Progress("copy", None, 25.0, 1, 4)
        assert all(r.job_id == job.id and r.location == "localhost" for r in records)
        assert [r.value for r in await job.receive_records(streams=["warning", "error"])] == [
            "w",
            "e",
        ]
        assert await job.receive() == [1, "done"]
        assert [r.stream for r in await job.receive_records()] == [
            "verbose",
            "progress",
            "information",
            "debug",
        ]
        assert not job.has_more_data


async def test_failure_is_an_error_record_and_a_state() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(boom, name="b")
        other = await jobs.start_thread(add, 1)
        with pytest.raises(JobFailed, match=r"job 1 \('b'\) failed: bad input 42") as info:
            await job
        assert isinstance(info.value.__cause__, ValueError)
        assert isinstance(job.reason, ValueError) and info.value.reason is job.reason
        records = await job.receive_records()
        assert [r.stream for r in records] == ["warning", "error"]
        assert records[1].value is job.reason
        assert await other == [1]


async def test_keep_then_receive_then_empty() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(async_gen, 2)
        await job.wait()
        assert await job.receive(keep=True) == [0, 1]
        assert job.has_more_data
        assert await job.receive(keep=True) == [0, 1]
        assert await job.receive() == [0, 1]
        assert await job.receive() == []
        assert not job.has_more_data


def cooperative(ready: threading.Event) -> str:
    ready.set()
    while not asyncjobs.stop_requested():
        time.sleep(0.005)
    return "noticed"


async def test_stop_requested_lets_a_function_stop() -> None:
    ready = threading.Event()
    async with JobManager() as jobs:
        job = await jobs.start_thread(cooperative, ready)
        await anyio.to_thread.run_sync(ready.wait, 10)
        await job.stop()
        assert job.state is JobState.STOPPED
        with pytest.raises(JobStopped, match="was stopped"):
            await job
        assert await job.receive() == ["noticed"]  # what it produced is still there
        await job.stop()  # stopping a finished job does nothing


def endless(closed: threading.Event) -> Iterator[int]:
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        closed.set()


async def test_generator_is_stopped_at_its_next_yield() -> None:
    closed = threading.Event()
    async with JobManager() as jobs:
        job = await jobs.start_thread(endless, closed, buffer=Buffer(max_items=5, mode="block"))
        async for item in job.stream():
            if item == 3:
                break
        await job.stop()
        assert job.state is JobState.STOPPED and closed.is_set()
        changes = [c async for c in job.state_changes()]
        assert [(c.previous, c.state) for c in changes] == [
            (JobState.NOT_STARTED, JobState.RUNNING),
            (JobState.RUNNING, JobState.STOPPING),
            (JobState.STOPPING, JobState.STOPPED),
        ]


async def test_block_mode_holds_a_thread_producer() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(async_gen, 100, buffer=Buffer(max_items=5, mode="block"))
        await eventually(lambda: job.statistics().buffer.blocked_producers != 0, timeout=10)
        stats = job.statistics().buffer
        assert stats.items == 5 and job.state is JobState.RUNNING
        assert [x async for x in job.stream()] == list(range(100))
        assert job.statistics().buffer.high_water == 5


async def test_drop_mode_counts_what_it_dropped() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(async_gen, 100, buffer=Buffer(max_items=10, mode="drop"))
        await job.wait()
        assert job.dropped == 90
        assert await job.receive() == list(range(90, 100))


async def test_spill_mode_loses_nothing_with_no_consumer() -> None:
    async with JobManager(buffer=Buffer(max_items=50, max_bytes=None)) as jobs:
        job = await jobs.start_thread(async_gen, 5000)
        await job.wait()
        stats = job.statistics().buffer
        assert stats.in_memory <= 50 and stats.spilled >= 4950
        assert await job.receive() == list(range(5000))


def in_slot(active: list[int], peak: list[int], lock: threading.Lock, go: threading.Event) -> None:
    with lock:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
    go.wait(10)
    with lock:
        active[0] -= 1


async def test_thread_limit_queues_jobs_in_not_started() -> None:
    active, peak, lock, go = [0], [0], threading.Lock(), threading.Event()
    async with JobManager(thread_limit=2) as jobs:
        started = [await jobs.start_thread(in_slot, active, peak, lock, go) for _ in range(4)]
        assert [j.state for j in started] == [JobState.RUNNING] * 2 + [JobState.NOT_STARTED] * 2
        assert jobs.statistics().threads_in_use == 2
        await eventually(lambda: active[0] >= 2, timeout=10)
        go.set()
        assert len(await jobs.wait(*started, timeout=10)) == 4
    assert peak[0] == 2


async def test_stop_of_a_queued_job_never_runs_it() -> None:
    go, ran = threading.Event(), threading.Event()
    async with JobManager(thread_limit=1) as jobs:
        blocker = await jobs.start_thread(go.wait, 10)
        queued = await jobs.start_thread(ran.set)
        assert queued.state is JobState.NOT_STARTED
        await queued.stop()
        assert queued.state is JobState.STOPPED and queued.started_at is None
        go.set()
        await blocker.wait()
    assert not ran.is_set()
    assert [c async for c in queued.state_changes()] == [
        StateChange(JobState.NOT_STARTED, JobState.STOPPED)
    ]


async def test_consumer_cancelled_mid_stream_loses_nothing() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(async_gen, 10)
        await job.wait()
        got: list[int] = []
        with anyio.CancelScope() as scope:
            async for item in job.stream():
                got.append(item)
                if len(got) == 3:
                    scope.cancel()
                await checkpoint()
        assert got == [0, 1, 2]
        assert await job.receive() == list(range(3, 10))


async def test_two_concurrent_streams_never_get_the_same_item() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(async_gen, 2000)
        seen: list[list[int]] = [[], []]

        async def consume(i: int) -> None:
            async for item in job.stream():
                seen[i].append(item)
                await checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, 0)
            tg.start_soon(consume, 1)
    assert sorted(seen[0] + seen[1]) == list(range(2000))


async def test_emit_outside_a_job_says_where_to_call_it() -> None:
    with pytest.raises(asyncjobs.AsyncJobsError, match=r"emit\(\) was called outside a job"):
        asyncjobs.emit(1)
    with pytest.raises(asyncjobs.AsyncJobsError, match="outside a job"):
        asyncjobs.stop_requested()
    await checkpoint()


async def test_emit_to_an_unknown_stream_fails_the_job_clearly() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(asyncjobs.emit, 1, "outptu")
        await job.wait()
        assert job.state is JobState.FAILED
        assert "unknown stream" in str(job.reason)


async def test_repr_and_no_public_constructor() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(add, 1, name="build")
        await job.wait()
        assert repr(job) == "<asyncjobs.Job 1 'build' ThreadJob COMPLETED>"
    with pytest.raises(TypeError, match="no public constructor"):
        asyncjobs.Job(id=1)  # type: ignore[call-arg]


def emit_forever() -> None:
    while True:
        asyncjobs.emit("x")
        if asyncjobs.stop_requested():
            return


async def test_stop_frees_a_producer_held_by_block_mode() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(emit_forever, buffer=Buffer(max_items=3, mode="block"))
        await eventually(lambda: job.statistics().buffer.blocked_producers != 0, timeout=10)
        with anyio.fail_after(10):
            await job.stop()
        assert job.state is JobState.STOPPED
        assert len(await job.receive()) >= 3


async def test_leaving_the_manager_frees_a_blocked_producer() -> None:
    with anyio.fail_after(10):
        async with JobManager() as jobs:
            job = await jobs.start_thread(emit_forever, buffer=Buffer(max_items=3, mode="block"))
            while job.statistics().buffer.blocked_producers == 0:
                await anyio.sleep(0.005)
    assert job.state is JobState.STOPPED
