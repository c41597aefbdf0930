"""Memory: does the job table give memory back, and does a spill buffer bound a job's output?

(a) RSS (VmRSS) with the manager open and no job yet; then 10,000 thread jobs started in batches,
    each awaited, received and removed (``jobs.remove``); ``gc.collect()``; RSS again.
    Goal: back within 30 MiB of the start. Yardstick: the same 10,000 calls made with
    ``anyio.to_thread.run_sync`` in the same batches (what the thread calls alone leave behind).
(b) One thread job whose generator yields 1,000,000 20-byte strings into the default ``spill``
    buffer with no consumer; the peak RSS growth while it runs (VmHWM after resetting it, and a
    5 ms sampler thread). Goal: under 64 MiB. Then everything is received and the count and order
    are checked. Yardstick: the same generator drained into a plain list in a worker thread (what
    holding everything in memory costs).

Every measurement runs in a fresh Python process (this script re-runs itself with ``--part``), so
that one part's heap does not hide the other's growth; the parts alternate within each repeat.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--repeats 5] [--backend trio]
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
from _common import flush, header, hwm_mb, median, parser, reset_hwm, rss_mb, verdict

import asyncjobs

GOAL_A_MB = 30.0
GOAL_B_MB = 64.0
PARTS = ("a-asyncjobs", "a-yardstick", "b-asyncjobs", "b-yardstick")


def work(i: int) -> int:
    return i


def item(i: int) -> str:
    return f"item-{i:015d}"  # 20 characters


def produce(n: int) -> Iterator[str]:
    for i in range(n):
        yield item(i)


class PeakSampler:
    """A thread sampling VmRSS every ``interval`` seconds; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peak = rss_mb()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_mb())


# -- part (a) ---------------------------------------------------------------------------------


async def part_a_asyncjobs(n: int, batch: int) -> dict[str, Any]:
    gc.collect()
    before_manager = rss_mb()
    t0 = time.perf_counter()
    async with asyncjobs.JobManager() as jobs:
        gc.collect()
        start = rss_mb()
        with PeakSampler() as sampler:
            done = 0
            while done < n:
                size = min(batch, n - done)
                batch_jobs = [await jobs.start_thread(work, done + k) for k in range(size)]
                await jobs.wait()
                for k, job in enumerate(batch_jobs):
                    got = await job.receive()
                    assert got == [done + k], (done + k, got)
                    await jobs.remove(job)
                done += size
                assert len(jobs) == 0, len(jobs)
            del batch_jobs, job
        gc.collect()
        end = rss_mb()
    gc.collect()
    after_manager = rss_mb()
    return {
        "start": start,
        "end": end,
        "peak": sampler.peak,
        "before_manager": before_manager,
        "after_manager": after_manager,
        "seconds": time.perf_counter() - t0,
    }


async def part_a_yardstick(n: int, batch: int) -> dict[str, Any]:
    gc.collect()
    start = rss_mb()
    t0 = time.perf_counter()
    limiter = anyio.CapacityLimiter(asyncjobs.JobManager().thread_limit)
    with PeakSampler() as sampler:
        done = 0
        while done < n:
            size = min(batch, n - done)
            results: list[int] = []

            async def one(i: int, results: list[int] = results) -> None:
                results.append(await anyio.to_thread.run_sync(work, i, limiter=limiter))

            async with anyio.create_task_group() as tg:
                for k in range(size):
                    tg.start_soon(one, done + k)
            assert sorted(results) == list(range(done, done + size))
            done += size
        del results
    gc.collect()
    end = rss_mb()
    return {"start": start, "end": end, "peak": sampler.peak, "seconds": time.perf_counter() - t0}


# -- part (b) ---------------------------------------------------------------------------------


async def part_b_asyncjobs(n: int) -> dict[str, Any]:
    async with asyncjobs.JobManager() as jobs:
        gc.collect()
        start = rss_mb()
        hwm_ok = reset_hwm()
        t0 = time.perf_counter()
        with PeakSampler() as sampler:
            job = await jobs.start_thread(produce, n)
            await job.wait()
        produced = time.perf_counter() - t0
        peak = max(sampler.peak, hwm_mb() if hwm_ok else 0.0)
        buffer = job.statistics().buffer
        assert job.state is asyncjobs.JobState.COMPLETED, (job.state, job.reason)
        t1 = time.perf_counter()
        got = await job.receive()
        received = time.perf_counter() - t1
        count_ok = len(got) == n
        order_ok = count_ok and all(v == item(i) for i, v in enumerate(got))
        after_receive = rss_mb()
        del got
    return {
        "start": start,
        "peak": peak,
        "produce_seconds": produced,
        "receive_seconds": received,
        "after_receive": after_receive,
        "count_ok": count_ok,
        "order_ok": order_ok,
        "in_memory": buffer.in_memory if buffer is not None else -1,
        "spilled": buffer.spilled if buffer is not None else -1,
        "hwm": hwm_ok,
    }


async def part_b_yardstick(n: int) -> dict[str, Any]:
    gc.collect()
    start = rss_mb()
    hwm_ok = reset_hwm()
    t0 = time.perf_counter()
    with PeakSampler() as sampler:
        held = await anyio.to_thread.run_sync(list, produce(n))
    produced = time.perf_counter() - t0
    peak = max(sampler.peak, hwm_mb() if hwm_ok else 0.0)
    assert len(held) == n
    del held
    return {"start": start, "peak": peak, "produce_seconds": produced, "hwm": hwm_ok}


# -- driver -----------------------------------------------------------------------------------


def run_part(part: str, args: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--part", part, "--backend", args.backend]
    if args.quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"part {part} failed ({out.returncode}):\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def child(args: Any) -> None:
    n_a = 1_000 if args.quick else 10_000
    n_b = 50_000 if args.quick else 1_000_000
    batch = 500
    part: str = args.part
    result: dict[str, Any]
    if part == "a-asyncjobs":
        result = anyio.run(part_a_asyncjobs, n_a, batch, backend=args.backend)
    elif part == "a-yardstick":
        result = anyio.run(part_a_yardstick, n_a, batch, backend=args.backend)
    elif part == "b-asyncjobs":
        result = anyio.run(part_b_asyncjobs, n_b, backend=args.backend)
    else:
        result = anyio.run(part_b_yardstick, n_b, backend=args.backend)
    result.update(n_a=n_a, n_b=n_b, batch=batch)
    print(json.dumps(result))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--part", choices=PARTS, help=argparse_hidden())
    args = p.parse_args()
    if args.part:
        child(args)
        return
    header(
        "bench_memory: RSS after 10,000 removed jobs; spill buffer under 1,000,000 items",
        args.backend,
    )
    runs: dict[str, list[dict[str, Any]]] = {part: [] for part in PARTS}
    for i in range(args.repeats):
        for part in PARTS:
            runs[part].append(run_part(part, args))
        a, ay, b, by = (runs[part][-1] for part in PARTS)
        print(
            f"  repeat {i + 1}/{args.repeats}: (a) +{a['end'] - a['start']:.1f} MiB "
            f"(to_thread +{ay['end'] - ay['start']:.1f})   (b) peak "
            f"+{b['peak'] - b['start']:.1f} MiB (list +{by['peak'] - by['start']:.1f}), "
            f"{b['n_b'] / b['produce_seconds']:,.0f} items/s",
        )
        flush()
    a_runs, ay_runs = runs["a-asyncjobs"], runs["a-yardstick"]
    b_runs, by_runs = runs["b-asyncjobs"], runs["b-yardstick"]
    n_a, n_b = a_runs[0]["n_a"], b_runs[0]["n_b"]

    growth_a = median([r["end"] - r["start"] for r in a_runs])
    print(f"(a) {n_a:,} thread jobs in batches of {a_runs[0]['batch']}: received and removed")
    a_start, a_peak = median([r["start"] for r in a_runs]), median([r["peak"] for r in a_runs])
    a_end = median([r["end"] for r in a_runs])
    print(
        f"  asyncjobs  RSS start {a_start:.1f} MiB, peak {a_peak:.1f}, after gc {a_end:.1f}"
        f" -> growth median {growth_a:+.1f} MiB   runs "
        f"{[round(r['end'] - r['start'], 1) for r in a_runs]}"
    )
    print(
        f"             (RSS before the manager {median([r['before_manager'] for r in a_runs]):.1f}"
        f" MiB, after it closed {median([r['after_manager'] for r in a_runs]):.1f} MiB; "
        f"{n_a / median([r['seconds'] for r in a_runs]):,.0f} jobs/s)"
    )
    growth_ay = median([r["end"] - r["start"] for r in ay_runs])
    print(
        f"  yardstick  {n_a:,} anyio.to_thread.run_sync calls, same batches: growth median "
        f"{growth_ay:+.1f} MiB (peak {median([r['peak'] - r['start'] for r in ay_runs]):+.1f})"
    )
    print(f"  goal: growth <= {GOAL_A_MB:g} MiB: {verdict(growth_a, GOAL_A_MB)}")

    growth_b = median([r["peak"] - r["start"] for r in b_runs])
    growth_by = median([r["peak"] - r["start"] for r in by_runs])
    ok = all(r["count_ok"] and r["order_ok"] for r in b_runs)
    print(f"(b) {n_b:,} 20-byte strings from one generator thread job, default spill buffer")
    print(
        f"  asyncjobs  peak RSS growth while producing: median {growth_b:+.1f} MiB   runs "
        f"{[round(r['peak'] - r['start'], 1) for r in b_runs]}   "
        f"({n_b / median([r['produce_seconds'] for r in b_runs]):,.0f} items/s; "
        f"{b_runs[0]['spilled']:,} spilled, {b_runs[0]['in_memory']:,} in memory at the end)"
    )
    receive_s = median([r["receive_seconds"] for r in b_runs])
    print(
        f"             receive() of all {n_b:,}: {receive_s:.2f}"
        f" s; count and order {'verified' if ok else 'WRONG'}; RSS after receiving (the caller now"
        f" holds the list) +{median([r['after_receive'] - r['start'] for r in b_runs]):.1f} MiB"
    )
    list_rate = n_b / median([r["produce_seconds"] for r in by_runs])
    print(
        f"  yardstick  the same items drained into a list in a thread: peak growth median "
        f"{growth_by:+.1f} MiB ({list_rate:,.0f} items/s)"
    )
    if growth_by > 0:
        print(f"  ratio (asyncjobs/list): {growth_b / growth_by:.2f}")
    print(
        f"  goal: peak growth < {GOAL_B_MB:g} MiB: "
        f"{'PASS' if growth_b < GOAL_B_MB and ok else 'MISS'}"
        + ("" if ok else " (received items were wrong)")
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
