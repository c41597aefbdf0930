"""Command jobs vs raw asyncio subprocesses: the cost of a job around a short program.

asyncjobs: ``JobManager(process_limit=16)``, ``start_command(["true"])`` N times (jobs beyond the
limit wait in NOT_STARTED), then ``jobs.wait()`` for all; each must be COMPLETED with exit 0. One
manager stays open for all rounds; each round's jobs are removed after it (not timed).
Yardstick (asyncio): N tasks, each ``asyncio.create_subprocess_exec("true", stdout=PIPE,
stderr=PIPE)`` + ``communicate()`` under an ``asyncio.Semaphore(16)``. On trio the yardstick is
``anyio.run_process(["true"])`` (pipes captured) under an ``anyio.Semaphore(16)``.

Goal (issue 13): asyncjobs / yardstick <= 1.0, wall and CPU.

    .venv/bin/python benchmarks/bench_commands.py [--quick] [--repeats 5] [--backend trio]
"""

from __future__ import annotations

import asyncio
import shutil
import time

import anyio
from _common import CpuClock, alternate, header, median, parser, report_pair

import asyncjobs

GOAL = 1.0  # issue 13: at parity with raw asyncio or better


async def asyncjobs_round(
    jobs: asyncjobs.JobManager, n: int, argv: list[str]
) -> tuple[float, float]:
    """One round on an open manager: (wall, CPU) seconds, the CPU of the commands included.
    The round's jobs are removed afterwards (not timed)."""
    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        started = [await jobs.start_command(argv) for _ in range(n)]
        done = await jobs.wait()
        elapsed = time.perf_counter() - t0
    assert len(done) == n, f"only {len(done)} of {n} jobs finished"
    bad = [j for j in started if j.state is not asyncjobs.JobState.COMPLETED]
    assert not bad, [(j, j.reason) for j in bad[:3]]
    assert all(j.exit_status == 0 for j in started)
    for job in started:
        await jobs.remove(job)
    return elapsed, cpu.seconds


async def asyncio_round(n: int, limit: int, argv: list[str]) -> tuple[float, float]:
    sem = asyncio.Semaphore(limit)
    codes: list[int | None] = []

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            await proc.communicate()
            codes.append(proc.returncode)

    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        elapsed = time.perf_counter() - t0
    assert codes == [0] * n, codes[:5]
    return elapsed, cpu.seconds


async def anyio_round(n: int, limit: int, argv: list[str]) -> tuple[float, float]:
    sem = anyio.Semaphore(limit)
    codes: list[int | None] = []

    async def one() -> None:
        async with sem:
            result = await anyio.run_process(argv, check=False)
            codes.append(result.returncode)

    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        elapsed = time.perf_counter() - t0
    assert codes == [0] * n, codes[:5]
    return elapsed, cpu.seconds


async def main_async(n: int, repeats: int, limit: int, backend: str) -> float:
    true = shutil.which("true") or "/bin/true"
    argv = [true]
    yardstick = asyncio_round if backend == "asyncio" else anyio_round
    what = (
        f"asyncio.create_subprocess_exec('true', stdout=PIPE, stderr=PIPE) + communicate(), "
        f"asyncio.Semaphore({limit})"
        if backend == "asyncio"
        else f"anyio.run_process(['true']) on trio, anyio.Semaphore({limit})"
    )
    async with asyncjobs.JobManager(process_limit=limit) as jobs:
        await anyio.sleep(1.0)  # let whatever the manager starts on entry settle
        await asyncjobs_round(jobs, min(n, 32), argv)  # warm-up: imports, child watcher, caches
        await yardstick(min(n, 32), limit, argv)
        pairs = await alternate(
            lambda: asyncjobs_round(jobs, n, argv),
            lambda: yardstick(n, limit, argv),
            repeats,
            yardstick="yardstick",
        )
    print(f"  {n} command jobs {argv}, process_limit={limit}")
    ratio = report_pair(
        f"{n} commands",
        pairs.ours,
        pairs.theirs,
        unit="ms",
        yardstick=what,
        goal=GOAL,
        cpu=(pairs.cpu_ours, pairs.cpu_theirs),
    )
    ours, theirs = median(pairs.ours) / 1000, median(pairs.theirs) / 1000
    print(
        f"  per command: asyncjobs {ours / n * 1000:.2f} ms, "
        f"yardstick {theirs / n * 1000:.2f} ms; "
        f"rate {n / ours:,.0f}/s vs {n / theirs:,.0f}/s"
    )
    return ratio


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--jobs", type=int, default=None, help="commands per round (default 300)")
    p.add_argument("--limit", type=int, default=16, help="process_limit / semaphore (default 16)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile one asyncjobs round with cProfile and print the hot spots",
    )
    args = p.parse_args()
    n = args.jobs or (50 if args.quick else 300)
    header("bench_commands: command jobs vs raw subprocesses", args.backend)
    anyio.run(main_async, n, args.repeats, args.limit, args.backend, backend=args.backend)
    if args.profile:
        profile(n, args.limit, args.backend)


def profile(n: int, limit: int, backend: str) -> None:
    import cProfile
    import pstats

    argv = [shutil.which("true") or "/bin/true"]

    async def rounds() -> None:
        async with asyncjobs.JobManager(process_limit=limit) as jobs:
            await anyio.sleep(1.0)
            await asyncjobs_round(jobs, min(n, 32), argv)
            with cProfile.Profile() as prof:
                await asyncjobs_round(jobs, n, argv)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats("asyncjobs", 30)

    print(f"== cProfile of one asyncjobs round ({n} commands, {backend})")
    anyio.run(rounds, backend=backend)


if __name__ == "__main__":
    main()
