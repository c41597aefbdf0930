"""The record log on its own: seq order, receive-once vs keep, and the three buffer modes,
with the real temp-file spill."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest
from anyio.lowlevel import checkpoint

from asyncjobs import Buffer, JobStateError
from asyncjobs._core.log import RecordLog

pytestmark = pytest.mark.anyio


_made: list[RecordLog] = []


@pytest.fixture(autouse=True)
def _release_logs() -> Iterator[None]:
    """Logs own their spill file; the manager releases them, here the test does."""
    yield
    while _made:
        _made.pop().release()


def make(**kw: object) -> RecordLog:
    log = RecordLog(job_id=7, location="localhost", buffer=Buffer(**kw), name="job 7 ('t')")  # type: ignore[arg-type]
    _made.append(log)
    return log


async def test_one_seq_across_streams_and_keep_reads() -> None:
    log = make()
    log.append_nowait("output", "a")
    log.append_nowait("error", "e")
    log.append_nowait("output", "b")
    records = log.read()
    assert [(r.seq, r.stream, r.value) for r in records] == [
        (0, "output", "a"),
        (1, "error", "e"),
        (2, "output", "b"),
    ]
    assert {r.job_id for r in records} == {7} and {r.location for r in records} == {"localhost"}
    assert log.read(1) == records[1:]
    assert log.peek() == records  # keep: nothing moved
    assert log.unreceived == 3


async def test_take_by_stream_leaves_other_streams() -> None:
    log = make()
    for i in range(3):
        log.append_nowait("output", i)
        log.append_nowait("warning", f"w{i}")
    assert [r.value for r in log.take({"output"})] == [0, 1, 2]
    assert log.take({"output"}) == []
    assert log.pending({"warning"}) == 3
    assert [r.value for r in log.take({"warning"})] == ["w0", "w1", "w2"]
    assert log.unreceived == 0
    assert log.read() == []  # received records are released
    assert log.first_seq == 6


async def test_ack_hands_each_record_over_once() -> None:
    log = make()
    first = log.append_nowait("output", 1)
    log.append_nowait("output", 2)
    assert log.ack(first) is True
    assert log.ack(first) is False
    assert [r.value for r in log.take({"output"})] == [2]


async def test_spill_keeps_memory_bounded_and_loses_nothing() -> None:
    log = make(max_items=10, max_bytes=None, mode="spill")
    lock = threading.Lock()  # cannot be pickled: it must stay in memory, not vanish
    for i in range(1000):
        log.append_nowait("error" if i % 7 == 0 else "output", lock if i == 500 else i)
        assert log.statistics().in_memory <= 10
    stats = log.statistics()
    assert stats.spilled >= 990 and stats.items == 1000 and stats.high_water == 1000
    middle = log.read(498, limit=4)
    assert [r.seq for r in middle] == [498, 499, 500, 501]
    assert middle[2].value is lock
    outputs = log.take({"output"})
    assert [r.value for r in outputs] == [i if i != 500 else lock for i in range(1000) if i % 7]
    errors = log.take({"error"})
    assert [r.value for r in errors] == list(range(0, 1000, 7))
    assert log.read() == [] and log.unreceived == 0


async def test_spill_by_bytes() -> None:
    log = make(max_items=None, max_bytes=10_000, mode="spill")
    for _ in range(100):
        log.append_nowait("output", "x" * 1000)
    assert log.statistics().in_memory <= 10
    assert len(log.take({"output"})) == 100


async def test_spill_file_is_reused_after_everything_is_received() -> None:
    log = make(max_items=4, max_bytes=None)
    for round_ in range(3):
        for i in range(20):
            log.append_nowait("output", (round_, i))
        assert [r.value for r in log.take({"output"})] == [(round_, i) for i in range(20)]
    assert log.statistics().spilled >= 48


async def test_block_mode_holds_the_producer_until_received() -> None:
    log = make(max_items=3, max_bytes=None, mode="block")
    for i in range(3):
        await log.append("output", i)
    with pytest.raises(anyio.WouldBlock):
        log.append_nowait("output", 99)
    done = anyio.Event()

    async def producer() -> None:
        await log.append("output", 3)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        assert log.statistics().blocked_producers == 1
        assert [r.value for r in log.take({"output"})] == [0, 1, 2]
        await done.wait()
    assert [r.value for r in log.take({"output"})] == [3]


async def test_block_mode_counts_unreceived_streams_not_received_ones() -> None:
    # stream() consumes only "output": received output records must not count against the bound.
    log = make(max_items=2, max_bytes=None, mode="block")
    await log.append("error", "e")
    for i in range(10):
        await log.append("output", i)
        (record,) = log.peek({"output"})
        assert log.ack(record)
    assert log.unreceived == 1


async def test_drop_mode_discards_oldest_and_counts() -> None:
    log = make(max_items=10, max_bytes=None, mode="drop")
    for i in range(100):
        log.append_nowait("output", i)
    assert log.dropped == 90 and log.statistics().dropped == 90
    assert [r.value for r in log.take({"output"})] == list(range(90, 100))
    assert log.first_seq == 100


async def test_drop_mode_receive_then_more() -> None:
    log = make(max_items=2, max_bytes=None, mode="drop")
    log.append_nowait("output", 0)
    assert [r.value for r in log.take({"output"})] == [0]
    for i in range(1, 4):
        log.append_nowait("output", i)
    assert log.dropped == 1
    assert [r.value for r in log.peek({"output"})] == [2, 3]


async def test_end_wakes_readers_and_refuses_appends() -> None:
    log = make()
    woke = anyio.Event()

    async def reader() -> None:
        await log.changed().wait()
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        log.end()
    assert woke.is_set() and log.ended
    with pytest.raises(JobStateError, match=r"job 7 \('t'\) is finished"):
        log.append_nowait("output", 1)


async def test_block_producer_released_when_log_ends() -> None:
    log = make(max_items=1, max_bytes=None, mode="block")
    await log.append("output", 0)
    with pytest.RaisesGroup(JobStateError):
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.append, "output", 1)
            await anyio.wait_all_tasks_blocked()
            log.end()


async def test_release_keeps_memory_readable_and_names_the_lost_part() -> None:
    log = make(max_items=4, max_bytes=None)
    for i in range(10):
        log.append_nowait("output", i)
    log.release()
    with pytest.raises(JobStateError, match="released when its JobManager closed"):
        log.read()
    small = make()
    small.append_nowait("output", 1)
    small.release()
    assert [r.value for r in small.read()] == [1]
    await checkpoint()


async def test_unknown_stream_is_refused() -> None:
    from asyncjobs._core.log import stream_set

    with pytest.raises(ValueError, match="unknown stream"):
        stream_set(["outptu"])
    assert stream_set("error") == {"error"}


def test_buffer_validation_names_field_and_value() -> None:
    with pytest.raises(ValueError, match=r"Buffer.max_items must be a positive int or None, got 0"):
        Buffer(max_items=0)
    with pytest.raises(
        ValueError, match=r"Buffer\.mode must be 'spill', 'block' or 'drop', got 'keep'"
    ):
        Buffer(mode="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both are None"):
        Buffer(max_items=None, max_bytes=None)


async def test_repr_and_statistics() -> None:
    log = make(max_items=5, max_bytes=None, mode="drop")
    log.append_nowait("output", "x")
    assert repr(log) == "<RecordLog job 7 ('t') drop next_seq=1 unreceived=1 in_memory=1>"
    stats = log.statistics()
    assert (stats.mode, stats.items, stats.next_seq, stats.high_water) == ("drop", 1, 1, 1)
