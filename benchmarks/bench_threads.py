"""Thread jobs vs ``anyio.to_thread.run_sync``: the cost of a job around a thread call.

asyncjobs: ``start_thread(noop)`` N times (each returns once the job runs or waits in
NOT_STARTED), then ``jobs.wait()`` for all, then ``receive()`` from each. One manager stays open
for all rounds (its workers warm, as the yardstick's); each round's jobs are removed after it.
Yardstick: N ``anyio.to_thread.run_sync(noop, limiter=...)`` calls started concurrently in a task
group, under a ``CapacityLimiter`` of the manager's ``thread_limit``; each result is kept.

Goal (issue): asyncjobs / yardstick <= 2.0.

    .venv/bin/python benchmarks/bench_threads.py [--quick] [--repeats 5] [--backend trio]
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
from _common import CpuClock, alternate, header, median, parser, report_pair

import asyncjobs

GOAL = 2.0


def noop() -> object:
    return None


async def asyncjobs_round(
    jobs: asyncjobs.JobManager, n: int, *, wait_args: bool
) -> tuple[float, float]:
    """One round on an open manager: (wall, CPU) seconds. The round's jobs are removed
    afterwards (not timed)."""
    with CpuClock() as cpu:
        t0 = time.perf_counter()
        started = [await jobs.start_thread(noop) for _ in range(n)]
        done = await (jobs.wait(*started) if wait_args else jobs.wait())
        received: list[Any] = []
        for job in started:
            received.extend(await job.receive())
        elapsed = time.perf_counter() - t0
    assert len(done) == n, f"only {len(done)} of {n} jobs finished"
    assert all(j.state is asyncjobs.JobState.COMPLETED for j in started)
    assert received == [], received  # noop returns None: no output item
    for job in started:
        await jobs.remove(job)
    return elapsed, cpu.seconds


async def yardstick_round(n: int, limit: int) -> tuple[float, float]:
    limiter = anyio.CapacityLimiter(limit)
    results: list[object] = []

    async def one() -> None:
        results.append(await anyio.to_thread.run_sync(noop, limiter=limiter))

    with CpuClock() as cpu:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        elapsed = time.perf_counter() - t0
    assert len(results) == n
    return elapsed, cpu.seconds


async def main_async(n: int, repeats: int, limit: int, wait_args: bool) -> float:
    async with asyncjobs.JobManager(thread_limit=limit) as jobs:
        return await compare(jobs, n, repeats, limit, wait_args)


async def compare(
    jobs: asyncjobs.JobManager, n: int, repeats: int, limit: int, wait_args: bool
) -> float:
    # Warm-up: both sides create their worker threads (anyio keeps idle workers per loop).
    await asyncjobs_round(jobs, min(n, 200), wait_args=wait_args)
    await yardstick_round(min(n, 200), limit)
    pairs = await alternate(
        lambda: asyncjobs_round(jobs, n, wait_args=wait_args),
        lambda: yardstick_round(n, limit),
        repeats,
        yardstick="to_thread",
    )
    how = f"jobs.wait(*{n} jobs)" if wait_args else "jobs.wait()"
    print(f"  {n} no-op thread jobs, thread_limit={limit}, waited with {how}")
    ratio = report_pair(
        f"{n} jobs",
        pairs.ours,
        pairs.theirs,
        unit="ms",
        yardstick=f"{n} x anyio.to_thread.run_sync(noop) in a task group, CapacityLimiter({limit})",
        goal=GOAL,
        cpu=(pairs.cpu_ours, pairs.cpu_theirs),
    )
    ours, theirs = median(pairs.ours) / 1000, median(pairs.theirs) / 1000
    print(
        f"  per job: asyncjobs {ours / n * 1e6:.1f} us, "
        f"to_thread {theirs / n * 1e6:.1f} us; "
        f"rate {n / ours:,.0f}/s vs {n / theirs:,.0f}/s"
    )
    return ratio


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--jobs", type=int, default=None, help="jobs per round (default 2000)")
    p.add_argument(
        "--thread-limit",
        type=int,
        default=None,
        help="the manager's thread_limit and the yardstick's limiter (default: the manager's)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile one asyncjobs round with cProfile and print the hot spots",
    )
    p.add_argument(
        "--wait-args",
        action="store_true",
        help="wait with jobs.wait(*jobs) (each job resolved in the table) instead of jobs.wait()",
    )
    args = p.parse_args()
    n = args.jobs or (200 if args.quick else 2000)
    limit = args.thread_limit or asyncjobs.JobManager().thread_limit
    header("bench_threads: thread jobs vs anyio.to_thread.run_sync", args.backend)
    anyio.run(main_async, n, args.repeats, limit, args.wait_args, backend=args.backend)
    if args.profile:
        profile(n, limit, args.wait_args, args.backend)


def profile(n: int, limit: int, wait_args: bool, backend: str) -> None:
    import cProfile
    import pstats

    async def rounds() -> None:
        async with asyncjobs.JobManager(thread_limit=limit) as jobs:
            await asyncjobs_round(jobs, min(n, 200), wait_args=wait_args)  # warm-up
            with cProfile.Profile() as prof:
                await asyncjobs_round(jobs, n, wait_args=wait_args)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats("asyncjobs", 30)

    print(f"== cProfile of one asyncjobs round ({n} jobs, {backend})")
    anyio.run(rounds, backend=backend)


if __name__ == "__main__":
    main()
