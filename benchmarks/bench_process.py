"""Process jobs vs ``concurrent.futures.ProcessPoolExecutor``, and fresh-process jobs vs a bare
Python start-up.

(1) Reused workers: ``JobManager(process_limit=N)``, ``start_process(square, i)`` for i < 500,
    then ``jobs.wait()`` and ``receive()`` of each (one item, ``i * i``). Yardstick:
    ``ProcessPoolExecutor(N)``, ``submit(square, i)`` for the same 500 calls, then ``result()``
    of each. Both warm: a warm-up round runs on each first, and both stay open across repeats.
    Goal (issue): asyncjobs / yardstick <= 1.5.
(2) Fresh processes: ``start_process(square, i, isolated=True)``, one job at a time (latency per
    job), next to ``subprocess.run([python, "-I", "-S", "-c", "pass"])``. No goal.

    .venv/bin/python benchmarks/bench_process.py [--quick] [--repeats 5] [--workers N]
"""

from __future__ import annotations

import operator
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
from _common import CpuClock, alternate, header, median, parser, report_pair

import asyncjobs

GOAL = 1.5


def square(x: int) -> int:
    return x * x


async def asyncjobs_round(jobs: asyncjobs.JobManager, n: int) -> tuple[float, float]:
    """One round on an open manager: (wall, CPU) seconds, the workers' CPU included. The round's
    jobs are removed afterwards (not timed)."""
    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        started = [await jobs.start_process(square, i) for i in range(n)]
        done = await jobs.wait()
        results: list[Any] = []
        for job in started:
            results.extend(await job.receive())
        elapsed = time.perf_counter() - t0
    assert len(done) == n, f"only {len(done)} of {n} jobs finished"
    bad = [j for j in started if j.state is not asyncjobs.JobState.COMPLETED]
    assert not bad, [(j, j.reason) for j in bad[:3]]
    assert results == [i * i for i in range(n)], results[:5]
    for job in started:
        await jobs.remove(job)
    return elapsed, cpu.seconds


def pool_round(pool: ProcessPoolExecutor, n: int) -> tuple[float, float]:
    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        futures = [pool.submit(square, i) for i in range(n)]
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
    assert results == [i * i for i in range(n)], results[:5]
    return elapsed, cpu.seconds


def bare_python(*flags_and_code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *flags_and_code], check=True)
    return time.perf_counter() - t0


async def isolated_job(jobs: asyncjobs.JobManager, i: int, *, stdlib: bool = False) -> float:
    """One fresh-process job, start to result. ``square`` lives in this script, so the child
    re-runs it as ``__mp_main__`` (importing asyncjobs there); ``operator.mul`` needs nothing."""
    t0 = time.perf_counter()
    if stdlib:
        job = await jobs.start_process(operator.mul, i, i, isolated=True)
    else:
        job = await jobs.start_process(square, i, isolated=True)
    result = await job
    elapsed = time.perf_counter() - t0
    assert result == [i * i], result
    await jobs.remove(job)
    return elapsed


async def main_async(n: int, repeats: int, workers: int, n_isolated: int) -> None:
    with ProcessPoolExecutor(workers) as pool:
        async with asyncjobs.JobManager(process_limit=workers) as jobs:
            await reused(jobs, pool, n, repeats, workers)
            await fresh(jobs, n_isolated, repeats)


async def reused(
    jobs: asyncjobs.JobManager, pool: ProcessPoolExecutor, n: int, repeats: int, workers: int
) -> None:
    # Warm-up: every worker of both sides started and has run a call.
    await asyncjobs_round(jobs, max(n // 5, 4 * workers))
    await anyio.to_thread.run_sync(pool_round, pool, max(n // 5, 4 * workers))
    pairs = await alternate(
        lambda: asyncjobs_round(jobs, n),
        lambda: anyio.to_thread.run_sync(pool_round, pool, n),
        repeats,
        yardstick="ProcessPoolExecutor",
    )
    print(f"(1) {n} process jobs of square(i) on {workers} reused workers")
    report_pair(
        f"{n} calls",
        pairs.ours,
        pairs.theirs,
        unit="ms",
        yardstick=f"ProcessPoolExecutor({workers}): {n} x submit(square, i), then result()",
        goal=GOAL,
        cpu=(pairs.cpu_ours, pairs.cpu_theirs),
    )
    ours, theirs = median(pairs.ours) / 1000, median(pairs.theirs) / 1000
    print(
        f"  per call: asyncjobs {ours / n * 1e6:.0f} us, "
        f"ProcessPoolExecutor {theirs / n * 1e6:.0f} us; "
        f"rate {n / ours:,.0f}/s vs {n / theirs:,.0f}/s"
    )


async def fresh(jobs: asyncjobs.JobManager, n_isolated: int, repeats: int) -> None:
    bare = ("-I", "-S", "-c", "pass")
    imports = ("-c", "import asyncjobs")
    await isolated_job(jobs, -1)  # warm-up (page cache, .pyc files)
    await isolated_job(jobs, -1, stdlib=True)
    await anyio.to_thread.run_sync(bare_python, *bare)
    ours: list[float] = []
    ours_stdlib: list[float] = []
    theirs: list[float] = []
    importing: list[float] = []
    for r in range(repeats):
        for i in range(n_isolated):
            ours.append(await isolated_job(jobs, i))
            theirs.append(await anyio.to_thread.run_sync(bare_python, *bare))
            ours_stdlib.append(await isolated_job(jobs, i, stdlib=True))
            importing.append(await anyio.to_thread.run_sync(bare_python, *imports))
        print(
            f"  repeat {r + 1}/{repeats}: isolated job median "
            f"{median(ours[-n_isolated:]) * 1000:.1f} ms (operator.mul "
            f"{median(ours_stdlib[-n_isolated:]) * 1000:.1f} ms)   python -I -S -c pass "
            f"{median(theirs[-n_isolated:]) * 1000:.1f} ms",
            flush=True,
        )
    print(f"(2) fresh-process jobs (isolated=True), one at a time, {len(ours)} jobs")
    report_pair(
        "per job",
        [x * 1000 for x in ours],
        [x * 1000 for x in theirs],
        unit="ms",
        yardstick=f"subprocess.run([{sys.executable!r}, '-I', '-S', '-c', 'pass'])",
        goal=None,
    )
    print(
        f"  the same with operator.mul (no __main__ to re-run in the child): median "
        f"{median(ours_stdlib) * 1000:.1f} ms; `python -c 'import asyncjobs'`: median "
        f"{median(importing) * 1000:.1f} ms"
    )


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--jobs", type=int, default=None, help="calls per round (default 500)")
    p.add_argument("--workers", type=int, default=2, help="process_limit and pool size (2)")
    p.add_argument(
        "--isolated-jobs", type=int, default=None, help="fresh-process jobs per repeat (10)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile one reused-worker round with cProfile and print the hot spots",
    )
    args = p.parse_args()
    n = args.jobs or (50 if args.quick else 500)
    n_isolated = args.isolated_jobs or (2 if args.quick else 10)
    header(f"bench_process: process jobs vs ProcessPoolExecutor({args.workers})", args.backend)
    anyio.run(main_async, n, args.repeats, args.workers, n_isolated, backend=args.backend)
    if args.profile:
        profile(n, args.workers, args.backend)


def profile(n: int, workers: int, backend: str) -> None:
    import cProfile
    import pstats

    async def rounds() -> None:
        async with asyncjobs.JobManager(process_limit=workers) as jobs:
            await asyncjobs_round(jobs, max(n // 5, 4 * workers))
            with cProfile.Profile() as prof:
                await asyncjobs_round(jobs, n)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats("asyncjobs", 30)

    print(f"== cProfile of one asyncjobs round ({n} process jobs, {backend})")
    anyio.run(rounds, backend=backend)


if __name__ == "__main__":
    main()
