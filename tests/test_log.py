"""The record log on its own: seq order, receive-once vs keep, and the three buffer modes,
with the real temp-file spill."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest
from anyio.lowlevel import checkpoint

from asyncjobs import Buffer, JobStateError, Record
from asyncjobs._core.job import Job
from asyncjobs._core.log import RecordLog
from asyncjobs._core.models import STREAMS

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


# -- batches of lines (what one pipe read brings) ----------------------------------------------


def lines(start: int, stop: int, width: int = 3) -> list[str]:
    return [f"l{i:0{width}d}" for i in range(start, stop)]


def leaf(log: RecordLog) -> Job:
    """A job around ``log``, running (``finish(job)`` ends it)."""
    job = Job._leaf(
        id=7, name="t", kind="BackgroundJob", command="t", location="localhost", log=log
    )
    job._mark_running()
    return job


def seen(records: list[Record]) -> list[tuple[int, str, object]]:
    return [(r.seq, r.stream, r.value) for r in records]


def fill_both(script: list[tuple[str, list[str]]], **buffer: object) -> tuple[RecordLog, RecordLog]:
    """The same appends, line by line into one log and in batches into another."""
    one, batched = make(**buffer), make(**buffer)
    for stream, values in script:
        for value in values:
            one.append_nowait(stream, value)  # type: ignore[arg-type]
        assert batched.append_lines_nowait(stream, values) == len(values)  # type: ignore[arg-type]
    return one, batched


def same_state(one: RecordLog, batched: RecordLog) -> None:
    """Two logs that hold the same records, counted the same (memory layout aside)."""
    a, b = one.statistics(), batched.statistics()
    assert (a.items, a.bytes, a.dropped, a.next_seq) == (b.items, b.bytes, b.dropped, b.next_seq)
    # Drop mode: line by line, the log held more at some moment than a batch ever makes it.
    assert b.high_water == a.high_water if a.mode != "drop" else b.high_water <= a.high_water
    assert seen(one.read()) == seen(batched.read())
    assert one.first_seq == batched.first_seq
    assert [one.pending({s}) for s in STREAMS] == [batched.pending({s}) for s in STREAMS]


SCRIPT = [
    ("output", lines(0, 40)),
    ("error", ["e0"]),
    ("output", lines(40, 41)),
    ("warning", ["w0", "w1", "w2"]),
    ("output", lines(41, 141, width=40)),
    ("error", lines(141, 150)),
]


@pytest.mark.parametrize(
    "buffer",
    [
        {},
        {"max_items": 7, "max_bytes": None},
        {"max_items": None, "max_bytes": 900},
        {"max_items": 7, "max_bytes": None, "mode": "drop"},
        {"max_items": None, "max_bytes": 900, "mode": "drop"},
        {"max_items": 50, "max_bytes": 3000, "mode": "drop"},
    ],
)
async def test_a_batch_counts_as_its_lines(buffer: dict[str, object]) -> None:
    one, batched = fill_both(SCRIPT, **buffer)
    same_state(one, batched)
    # Receive part of a stream by acks, then more batches, then everything.
    for record in one.peek({"output"}, limit=3):
        assert one.ack(record, release=False)
    for record in batched.peek({"output"}, limit=3):
        assert batched.ack(record, release=False)
    one.release_received()
    batched.release_received()
    same_state(one, batched)
    for stream, values in SCRIPT:
        for value in values:
            one.append_nowait(stream, value)  # type: ignore[arg-type]
        batched.append_lines_nowait(stream, values)  # type: ignore[arg-type]
    same_state(one, batched)
    assert seen(one.take({"error"})) == seen(batched.take({"error"}))
    same_state(one, batched)
    held = [r.value for r in one.peek()]
    assert one.take_values() == batched.take_values() == held
    assert seen(batched.take()) == []
    same_state(one, batched)


async def test_drop_mode_drops_part_of_a_batch_and_counts_exactly() -> None:
    log = make(max_items=10, max_bytes=None, mode="drop")
    assert log.append_lines_nowait("output", lines(0, 25)) == 25
    assert log.dropped == 15 and log.statistics().items == 10
    assert log.first_seq == 15
    assert seen(log.peek()) == [(i, "output", f"l{i:03d}") for i in range(15, 25)]
    # A reader holding the batch skips what is dropped under it.
    log2 = make(max_items=10, max_bytes=None, mode="drop")
    job = leaf(log2)
    log2.append_lines_nowait("output", lines(0, 10))
    items = job.stream()
    assert await items.__anext__() == "l000"
    log2.append_lines_nowait("output", lines(10, 15))  # drops l001 .. l004 (l000 is received)
    assert log2.dropped == 4
    assert [await items.__anext__() for _ in range(10)] == lines(5, 15)
    assert log2.unreceived == 0 and log2.statistics().bytes == 0


async def test_block_mode_takes_what_fits_of_a_batch() -> None:
    log = make(max_items=10, max_bytes=None, mode="block")
    assert log.append_lines_nowait("output", lines(0, 4)) == 4
    assert log.append_lines_nowait("output", lines(4, 30)) == 6  # as many as one per line would
    assert log.append_lines_nowait("output", lines(10, 30)) == 0
    by_bytes = make(max_items=None, max_bytes=5 * 53, mode="block")  # 53 bytes a line
    assert by_bytes.append_lines_nowait("output", lines(0, 9)) == 5
    assert by_bytes.statistics().bytes == 5 * 53
    done = anyio.Event()

    async def producer() -> None:
        await log.append_lines("output", lines(10, 30))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        assert log.statistics().blocked_producers == 1 and not done.is_set()
        assert log.take_values() == lines(0, 10)
        await anyio.wait_all_tasks_blocked()
        assert log.statistics().next_seq == 20 and not done.is_set()
        got = []
        async for value in leaf(log).stream():  # frees room line by line
            got.append(value)
            if len(got) == 20:
                break
        await done.wait()
    assert got == lines(10, 30)


async def test_spilled_batches_read_back_whole_and_in_part() -> None:
    log = make(max_items=100, max_bytes=None)
    for start in range(0, 1000, 50):
        log.append_lines_nowait("output", lines(start, start + 50))
        log.append_nowait("error", f"e{start}")
    stats = log.statistics()
    assert stats.in_memory <= 100 and stats.spilled >= 800 and stats.items == 1020
    assert log._spill is not None and len(log._spill._seqs) < 50  # one index row per batch
    middle = log.read(75, limit=30)  # from inside a spilled batch, across an error record
    assert [r.seq for r in middle] == list(range(75, 105))
    assert [r.value for r in middle if r.stream == "error"] == ["e50"]
    assert log.read(75, streams={"error"}, limit=2)[0].value == "e50"
    job = leaf(log)
    items = job.stream()
    assert [await items.__anext__() for _ in range(120)] == lines(0, 120)
    assert log.pending({"output"}) == 880
    assert await job.receive() == lines(120, 1000)
    errors = await job.receive_records(streams=["error"])
    assert [r.value for r in errors] == [f"e{i}" for i in range(0, 1000, 50)]
    assert [r.seq for r in errors] == [50 + 51 * i for i in range(20)]
    assert log.unreceived == 0 and log.statistics().bytes == 0


async def test_a_cancelled_stream_consumer_loses_nothing_and_repeats_nothing() -> None:
    log = make()
    job = leaf(log)
    for start in range(0, 2100, 700):  # three pipe reads' worth
        log.append_lines_nowait("output", lines(start, start + 700, width=4))
    got: list[str] = []
    with anyio.CancelScope() as scope:
        async for value in job.stream():
            got.append(value)
            if len(got) == 100:
                scope.cancel()  # lands at the stream's next checkpoint, between its batches
    assert 100 <= len(got) < 2100 and got == lines(0, len(got), width=4)
    assert log.pending({"output"}) == 2100 - len(got)  # the rest is unreceived
    with anyio.move_on_after(0.1):  # cancelled while waiting for more, after the rest
        async for value in job.stream():
            got.append(value)  # noqa: PERF401 - keep what came before the cancel
    assert got == lines(0, 2100, width=4) and log.unreceived == 0
    log.append_lines_nowait("output", lines(2100, 2200, width=4))
    async for value in job.stream():
        got.append(value)
        if value == "l2150":
            break  # breaking out in the middle of a batch
    assert got == lines(0, 2151, width=4)
    assert await job.receive(keep=True) == lines(2151, 2200, width=4)
    job._complete()
    assert [value async for value in job.stream()] == lines(2151, 2200, width=4)
    assert log.unreceived == 0 and log.statistics().bytes == 0


async def test_keep_and_receive_once_readers_interleave_over_batches() -> None:
    log = make()
    job = leaf(log)
    log.append_lines_nowait("output", lines(0, 10))
    log.append_lines_nowait("error", lines(10, 12))
    log.append_lines_nowait("output", lines(12, 20))
    a, b = job.stream(), job.stream()
    assert [await a.__anext__() for _ in range(3)] == lines(0, 3)
    assert await job.receive(keep=True) == [*lines(3, 10), *lines(12, 20)]
    assert [await b.__anext__() for _ in range(2)] == lines(3, 5)  # b starts where a got to
    assert await a.__anext__() == "l005"  # a skips what b took
    assert [r.value for r in job.read_records(4)] == ["l004", "l005", *lines(6, 20)]
    assert seen(await job.receive_records(keep=True, streams=["error"])) == [
        (10, "error", "l010"),
        (11, "error", "l011"),
    ]
    assert await job.receive() == [*lines(6, 10), *lines(12, 20)]  # receive-once: the rest
    job._complete()
    assert [v async for v in a] == [] and [v async for v in b] == []
    assert [r.value for r in await job.receive_records()] == ["l010", "l011"]


async def test_mixed_streams_keep_seq_order() -> None:
    log = make(max_items=20, max_bytes=None)  # spills, too
    job = leaf(log)
    expected: list[tuple[int, str, object]] = []
    seq = 0
    for round_ in range(10):
        for stream, values in (
            ("output", lines(seq, seq + 7)),
            ("error", lines(seq + 7, seq + 8)),
            ("verbose", lines(seq + 8, seq + 11)),
        ):
            log.append_lines_nowait(stream, values)  # type: ignore[arg-type]
            expected += [(seq + i, stream, v) for i, v in enumerate(values)]
            seq += len(values)
        log.append_nowait("progress", round_)
        expected.append((seq, "progress", round_))
        seq += 1
    job._complete()
    assert seen(job.read_records()) == expected
    records = [r async for r in job.stream_records(streams=["output", "verbose"])]
    assert seen(records) == [e for e in expected if e[1] in ("output", "verbose")]
    assert {r.time for r in records[:7]} == {records[0].time}  # one time per batch
    assert seen(await job.receive_records()) == [
        e for e in expected if e[1] in ("error", "progress")
    ]
    assert not job.has_more_data
