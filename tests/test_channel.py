"""``CommandChannel`` fed by hand: how a remote command's packets become records, whatever
their boundaries (the end-to-end behaviour is tested against real sshd in test_remote.py)."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import asyncssh
import pytest

import asyncjobs
from asyncjobs import Buffer
from asyncjobs._core.log import RecordLog
from asyncjobs._ssh.channel import MARK, CommandChannel, CommandProgress

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


def channel(lines: bool, buffer: Buffer | None = None) -> tuple[CommandChannel, RecordLog]:
    log = RecordLog(job_id=1, location="h", buffer=buffer or Buffer())
    return CommandChannel(log, CommandProgress(), lines), log


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 40)
        out.append(data[i : i + n])
        i += n
    return out


async def test_marker_and_lines_survive_any_packet_boundaries() -> None:
    rng = random.Random(3)
    body = b"".join(f"line {i}\n".encode() for i in range(50)) + b"\xff\xfe\nlast"
    for _ in range(50):
        chan, log = channel(lines=True)
        for piece in pieces(MARK + b"4242\n" + body, rng):
            chan.data_received(piece, None)
        chan.data_received(b"oops\n", asyncssh.EXTENDED_DATA_STDERR)
        chan.connection_lost(None)
        await chan.drain()
        assert chan._progress.pgid == 4242
        assert chan._progress.pgid_known.is_set()
        values = [r.value for r in log.read(0, streams=("output",))]
        assert values == [f"line {i}" for i in range(50)] + [b"\xff\xfe", "last"]
        assert [r.value for r in log.read(0, streams=("error",))] == ["oops"]


async def test_raw_chunks_of_one_loop_iteration_become_one_item() -> None:
    chan, log = channel(lines=False)
    chan.data_received(MARK + b"7\nab", None)
    chan.data_received(b"cd", None)
    chan.data_received(b"\x00\xff", None)
    assert log.next_seq == 0  # joined at the end of this loop iteration
    await anyio.lowlevel.checkpoint()
    assert [r.value for r in log.read(0)] == [b"abcd\x00\xff"]
    chan.data_received(b"tail", None)
    chan.connection_lost(None)
    await chan.drain()
    assert [r.value for r in log.read(0)] == [b"abcd\x00\xff", b"tail"]


async def test_output_without_a_marker_is_kept_whole() -> None:
    # Not a POSIX shell on the far side: no marker; stop then just closes the channel.
    chan, log = channel(lines=True)
    chan.data_received(b"hello", None)
    chan.connection_lost(None)
    await chan.drain()
    assert chan._progress.pgid is None and chan._progress.pgid_known.is_set()
    assert [r.value for r in log.read(0)] == ["hello"]


async def test_a_full_block_buffer_backlogs_in_order_until_received() -> None:
    chan, log = channel(lines=True, buffer=Buffer(max_items=2, max_bytes=None, mode="block"))
    chan.data_received(MARK + b"1\n" + b"".join(b"%d\n" % i for i in range(10)), None)
    chan.connection_lost(None)
    got: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(chan.drain)
        while len(got) < 10:
            changed = log.changed()  # taken before looking: no wake-up is missed
            assert log.unreceived <= 2  # the bound holds: the rest waits in the backlog
            records = log.take(streams=("output",))
            if not records:
                with anyio.fail_after(5):
                    await changed.wait()
            got += [r.value for r in records]
    assert got == [str(i) for i in range(10)]


async def test_a_garbled_marker_is_taken_off_without_an_error() -> None:
    chan, log = channel(lines=True)
    chan.data_received(MARK + b"not-a-pid\nreal output\n", None)
    chan.connection_lost(None)
    await chan.drain()
    assert chan._progress.pgid is None and chan._progress.pgid_known.is_set()
    assert [r.value for r in log.read(0)] == ["real output"]


async def test_an_append_that_fails_fails_the_drain_not_asyncssh() -> None:
    # An ended log refuses records; any such error must surface in the job's task.
    chan, log = channel(lines=True)
    log.end()
    chan.data_received(MARK + b"1\nafter the end\n", None)  # must not raise here
    with pytest.raises(asyncjobs.JobStateError, match="takes no more records"):
        await chan.drain()
