"""Parent jobs: state derived from children, reads in child order, stop and remove through the
parent. (Fan-out with ``invoke`` builds on exactly this; here the children are thread jobs.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest

from asyncjobs import JobFailed, JobManager, JobState, JobStateError, StateChange

pytestmark = pytest.mark.anyio


def items(tag: str, n: int, go: threading.Event) -> Iterator[str]:
    assert go.wait(10)
    for i in range(n):
        yield f"{tag}{i}"


def fail_after_one(go: threading.Event) -> Iterator[str]:
    assert go.wait(10)
    yield "c0"
    raise OSError("disk full")


async def test_parent_state_follows_children_and_reads_in_child_order() -> None:
    go = threading.Event()
    async with JobManager() as jobs:
        children = [
            await jobs.start_thread(items, "a", 3, go),
            await jobs.start_thread(items, "b", 2, go),
        ]
        parent = jobs._add_parent("fan", "RemoteJob", "items", children)
        assert parent.state is JobState.RUNNING and parent.children == tuple(children)
        assert all(c.parent is parent for c in children)
        assert jobs.get() == [parent]
        assert jobs.get(include_children=True) == [parent, *children]
        assert jobs[children[1].id] is children[1]
        go.set()
        await parent.wait()
        assert parent.state is JobState.COMPLETED and parent.has_more_data
        assert await parent.receive(keep=True) == ["a0", "a1", "a2", "b0", "b1"]
        assert await parent == ["a0", "a1", "a2", "b0", "b1"]
        assert not parent.has_more_data
        assert [c async for c in parent.state_changes()] == [
            StateChange(JobState.RUNNING, JobState.COMPLETED)
        ]
        assert parent.started_at is not None and parent.finished_at is not None


async def test_a_failed_child_fails_the_parent_after_all_finished() -> None:
    go = threading.Event()
    async with JobManager() as jobs:
        ok = await jobs.start_thread(items, "a", 1, go)
        bad = await jobs.start_thread(fail_after_one, go)
        parent = jobs._add_parent(None, "RemoteJob", "mixed", [ok, bad])
        go.set()
        with pytest.raises(JobFailed, match="disk full") as info:
            await parent
        assert parent.state is JobState.FAILED and ok.state is JobState.COMPLETED
        assert isinstance(info.value.__cause__, OSError) and parent.reason is bad.reason
        assert await parent.receive() == ["a0", "c0"]  # what each produced is still there
        errors = await parent.receive_records(streams=["error"])
        assert [(r.job_id, type(r.value)) for r in errors] == [(bad.id, OSError)]


async def test_stream_merges_children_and_stop_stops_them_all() -> None:
    go = threading.Event()
    async with JobManager() as jobs:
        a = await jobs.start_thread(items, "a", 2, go)
        b = await jobs.start_thread(items, "b", 2, go)
        parent = jobs._add_parent(None, "RemoteJob", "x", [a, b])
        go.set()
        got = sorted([x async for x in parent.stream()])
        assert got == ["a0", "a1", "b0", "b1"]
        waiter = await jobs.start_thread(threading.Event().wait, 0.01)
        blocked = threading.Event()
        c = await jobs.start_thread(blocked.wait, 10)
        d = await jobs.start_thread(blocked.wait, 10)
        second = jobs._add_parent(None, "RemoteJob", "y", [c, d])
        async with anyio.create_task_group() as tg:
            tg.start_soon(second.stop)
            await anyio.wait_all_tasks_blocked()
            blocked.set()  # the threads can't be killed: they end when they return
        assert second.state is JobState.STOPPED
        assert {c.state, d.state} == {JobState.STOPPED}
        await waiter.wait()


async def test_children_are_removed_through_their_parent() -> None:
    go = threading.Event()
    go.set()
    async with JobManager() as jobs:
        a = await jobs.start_thread(items, "a", 1, go)
        parent = jobs._add_parent(None, "RemoteJob", "x", [a])
        await parent.wait()
        with pytest.raises(JobStateError, match=r"is a child of job 2 .*remove the parent"):
            await jobs.remove(a)
        await jobs.remove(parent)
        assert jobs.get(include_children=True) == []
