"""Streaming a command's output: ``async for line in job.stream()`` vs reading the pipe raw.

The producer is one Python process writing ``--size`` MB (default 1000 MB = 1 GB) of 100-byte
lines (99 bytes + newline) to ``sys.stdout.buffer``, a precomputed ~1 MiB block at a time.
asyncjobs: ``start_command(producer_argv(nbytes))`` (``_common.LINE_PRODUCER``) and
``async for line in job.stream()`` (default ``spill`` buffer), counting lines and bytes.
``--reader records`` reads ``job.stream_records()`` instead; ``--reader receive`` waits for the
job and takes its lines in bulk with ``receive()``, ``--reader keep`` with ``receive(keep=True)``
(the bulk readers need a ``spill`` or ``drop`` buffer: ``block`` would hold the job forever).
Yardstick (asyncio): the same producer via ``asyncio.create_subprocess_exec(..., stdout=PIPE)`` and
``await proc.stdout.readline()`` until EOF. On trio: ``anyio.open_process`` and
``BufferedByteReceiveStream.receive_until(b"\\n")`` until EOF.
Both report MB/s (10^6 bytes, newlines counted); the ratio is yardstick MB/s / asyncjobs MB/s.
No goal.

    .venv/bin/python benchmarks/bench_stream.py [--quick] [--repeats 5] [--size MB] [--backend trio]
        [--buffer spill|block|drop] [--reader stream|records|receive|keep] [--timeout 1200]
"""

from __future__ import annotations

import asyncio
import time

import anyio
from _common import PRODUCER_LINE, header, median, parser, producer_argv, report_pair
from anyio.streams.buffered import BufferedByteReceiveStream

import asyncjobs

LINE = PRODUCER_LINE

READERS = {
    "stream": "async for line in job.stream()",
    "records": "async for record in job.stream_records()",
    "receive": "await job.wait(); await job.receive()",
    "keep": "await job.wait(); await job.receive(keep=True)",
}


class Round:
    """One streaming run: bytes and lines read, seconds taken, whether it read everything."""

    def __init__(self, nbytes: int) -> None:
        self.expected = nbytes
        self.lines = 0
        self.bytes = 0
        self.seconds = 0.0
        self.dropped = 0
        self.t0 = time.perf_counter()

    def done(self) -> Round:
        self.seconds = time.perf_counter() - self.t0
        return self

    @property
    def complete(self) -> bool:
        return (self.lines, self.bytes) == (self.expected // LINE, self.expected)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


async def asyncjobs_round(
    jobs: asyncjobs.JobManager, nbytes: int, timeout: float, reader: str = "stream"
) -> Round:
    r = Round(nbytes)
    job = await jobs.start_command(producer_argv(nbytes))
    with anyio.move_on_after(timeout):
        if reader == "stream":
            async for line in job.stream():
                r.lines += 1
                r.bytes += len(line) + 1
        elif reader == "records":
            async for record in job.stream_records():
                r.lines += 1
                r.bytes += len(record.value) + 1
        else:
            await job.wait()
            lines = await job.receive(keep=reader == "keep")
            r.lines = len(lines)
            r.bytes = sum(map(len, lines)) + len(lines)
        await job.wait()
    r.done()
    r.dropped = job.dropped
    if r.complete:
        assert job.state is asyncjobs.JobState.COMPLETED, (job.state, job.reason)
    await jobs.remove(job, force=True)  # stops the producer if the round timed out
    return r


async def asyncio_round(nbytes: int, timeout: float) -> Round:
    r = Round(nbytes)
    proc = await asyncio.create_subprocess_exec(
        *producer_argv(nbytes), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        with anyio.move_on_after(timeout):
            while line := await proc.stdout.readline():
                r.lines += 1
                r.bytes += len(line)
            await proc.wait()
        r.done()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    if r.complete:
        assert proc.returncode == 0, proc.returncode
    return r


async def anyio_round(nbytes: int, timeout: float) -> Round:
    r = Round(nbytes)
    async with await anyio.open_process(producer_argv(nbytes), stderr=None) as proc:
        assert proc.stdout is not None
        reader = BufferedByteReceiveStream(proc.stdout)
        with anyio.move_on_after(timeout):
            while r.bytes < nbytes:
                try:
                    line = await reader.receive_until(b"\n", 1 << 16)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    break
                r.lines += 1
                r.bytes += len(line) + 1
            await proc.wait()
        r.done()
        if proc.returncode is None:
            proc.kill()
    if r.complete:
        assert proc.returncode == 0, proc.returncode
    return r


def manager(mode: str) -> asyncjobs.JobManager:
    """The job table, with the default buffer (``spill``) or a ``block`` or ``drop`` one of the
    default bounds (``--buffer``)."""
    if mode != "spill":
        return asyncjobs.JobManager(buffer=asyncjobs.Buffer(mode=mode))  # type: ignore[arg-type]
    return asyncjobs.JobManager()


async def main_async(
    nbytes: int, repeats: int, backend: str, timeout: float, mode: str, reader: str
) -> None:
    yardstick = asyncio_round if backend == "asyncio" else anyio_round
    what = (
        "asyncio.create_subprocess_exec(stdout=PIPE) + await proc.stdout.readline() loop"
        if backend == "asyncio"
        else "anyio.open_process + BufferedByteReceiveStream.receive_until(b'\\n') on trio"
    )
    mb = nbytes / 1e6
    async with manager(mode) as jobs:
        warm = min(nbytes, 10 * 1_000_000)  # 10 MB warm-up on each side
        await asyncjobs_round(jobs, warm, timeout, reader)
        await yardstick(warm, timeout)
        ours: list[float] = []
        theirs: list[float] = []
        incomplete = 0
        for i in range(repeats):
            a = await asyncjobs_round(jobs, nbytes, timeout, reader)
            b = await yardstick(nbytes, timeout)
            ours.append(a.mb_per_s)
            theirs.append(b.mb_per_s)
            note = ""
            for who, r in (("asyncjobs", a), ("raw pipe", b)):
                if not r.complete:
                    incomplete += not r.dropped
                    read = r.bytes / 1e6
                    if r.dropped:  # a drop buffer that nobody read while it ran
                        note += f"  [{who}: {r.dropped:,} lines dropped]"
                    else:
                        note += (
                            f"  [{who} stopped at the {timeout:g} s timeout after {read:,.0f} MB]"
                        )
            print(
                f"  repeat {i + 1}/{repeats}: asyncjobs {ours[-1]:8.1f} MB/s   "
                f"raw pipe {theirs[-1]:8.1f} MB/s   ratio {theirs[-1] / ours[-1]:.2f}{note}",
                flush=True,
            )
    print(
        f"  {mb:,.0f} MB of {LINE}-byte lines ({nbytes // LINE:,} lines) from one command, "
        f"{mode} buffer, read by {READERS[reader]}"
    )
    report_pair(
        "throughput",
        ours,
        theirs,
        unit="MB/s",
        yardstick=what,
        goal=None,
        lower_is_better=False,
    )
    print(
        f"  lines/s: asyncjobs {median(ours) * 1e6 / LINE:,.0f}, "
        f"raw pipe {median(theirs) * 1e6 / LINE:,.0f}"
    )
    if incomplete:
        print(
            f"  NOTE: {incomplete} run(s) hit the {timeout:g} s timeout; their MB/s is the rate "
            "over what they read (an upper bound when the rate falls as the backlog grows)"
        )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--size", type=int, default=None, help="MB to stream (default 1000 = 1 GB)")
    p.add_argument(
        "--buffer",
        choices=("spill", "block", "drop"),
        default="spill",
        help="the job's buffer mode (default spill, the library's default)",
    )
    p.add_argument(
        "--reader",
        choices=tuple(READERS),
        default="stream",
        help="how asyncjobs reads: stream() (default), stream_records(), or receive() in bulk "
        "after the job, without or with keep=True",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds per run before it is stopped and its partial rate reported (1200)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile one asyncjobs round with cProfile and print the hot spots",
    )
    args = p.parse_args()
    if args.buffer == "block" and args.reader in ("receive", "keep"):
        p.error("--buffer block holds the job until someone receives: use a streaming --reader")
    size_mb = args.size or (20 if args.quick else 1000)
    nbytes = size_mb * 1_000_000 // LINE * LINE
    header(f"bench_stream: {size_mb} MB of lines through job.stream() vs a raw pipe", args.backend)
    if args.repeats > 0:
        anyio.run(
            main_async,
            nbytes,
            args.repeats,
            args.backend,
            args.timeout,
            args.buffer,
            args.reader,
            backend=args.backend,
        )
    if args.profile:
        profile(nbytes, args.backend, args.timeout, args.buffer, args.reader)


def profile(nbytes: int, backend: str, timeout: float, mode: str, reader: str) -> None:
    import cProfile
    import pstats

    async def rounds() -> None:
        async with manager(mode) as jobs:
            with cProfile.Profile() as prof:
                await asyncjobs_round(jobs, nbytes, timeout, reader)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats("asyncjobs", 30)

    print(f"== cProfile of one asyncjobs round ({nbytes / 1e6:,.0f} MB, {backend})")
    anyio.run(rounds, backend=backend)


if __name__ == "__main__":
    main()
