"""The job host's store (``asyncjobs._host.store``, SQLite in WAL mode) against the issue's goals.

1. Small appends: 200,000 records of 20 bytes (output and error mixed) appended in batches of
   100 — the host appends what a job produced since its last flush — then the same in batches of
   1 and of 1,000 (reported, no goal). Goal: >= 100,000 records/s with batches of 100.
2. A job's 1 GB of 100-byte lines: ``--size`` MB (default 1,000) of 100-byte values appended in
   batches of 655 lines (one 64 KiB pipe read), each batch one transaction. MB/s counts value
   bytes (10^6). Goal: >= 100 MB/s. Also reported: the p99 and worst time of one ``append``
   (every ~8 MiB the writer checkpoints the WAL, fsyncs included, inside an append).
3. Reattach: a store holding one job with 1,000,000 kept 100-byte records (nine in ten
   ``output``, one ``error``) is closed; the clock starts, the store is opened afresh, every
   record is read with ``read()`` (keep) in pages of 10,000 and each value decoded as UTF-8.
   Goal: <= 10 s. The same with ``take()`` (receive-once) pages is reported beside it.

Wall-clock rates decide PASS/MISS; CPU-time rates (this process, ``time.process_time``) are
printed too, since other programs on a loaded machine slow the wall clock but hardly the CPU
time. The files live in a fresh directory under ``--dir`` (default: the temp dir), removed after.

    .venv/bin/python benchmarks/bench_store.py [--quick] [--repeats 3] [--size MB] [--dir DIR]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import header, median, parser

from asyncjobs._host.store import Store

LINE = b"x" * 99 + b"\n"
PIPE_READ = 65536 // len(LINE)  # 655 lines
PAGE = 10_000


def new_job(store: Store) -> int:
    return store.new_job(
        session="bench", kind="BackgroundJob", command="bench", location="here", instance_id="b"
    ).id


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """``fn()``'s result, wall seconds and CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def small_appends(directory: Path, total: int, batch: int) -> tuple[float, float]:
    """Records/s (wall, CPU) appending ``total`` 20-byte records ``batch`` at a time."""
    with Store.open(directory / f"small-{batch}.db") as store:
        job = new_job(store)
        value = b"y" * 20

        def run() -> int:
            for _ in range(total // batch):
                now = time.time()
                store.append(job, [("error" if j % 10 == 0 else "output", value, now)
                                   for j in range(batch)])  # fmt: skip
            return (total // batch) * batch

        n, wall, cpu = timed(run)
        assert store.job(job).next_seq == n  # type: ignore[union-attr]
    return n / wall, n / cpu


def gigabyte(directory: Path, nbytes: int) -> tuple[float, float, int, list[float]]:
    """MB/s (wall, CPU), the database's size after storing ``nbytes`` of lines, and the sorted
    seconds each ``append`` took (the event loop's stall, when the host appends from it)."""
    path = directory / "gigabyte.db"
    with Store.open(path) as store:
        job = new_job(store)
        stalls: list[float] = []

        def run() -> int:
            batches = nbytes // len(LINE) // PIPE_READ
            clock = time.perf_counter
            for _ in range(batches):
                t0 = clock()
                store.append(job, [("output", LINE, time.time())] * PIPE_READ)
                stalls.append(clock() - t0)
            return batches * PIPE_READ * len(LINE)

        stored, wall, cpu = timed(run)
        assert store.job(job).next_seq * len(LINE) == stored  # type: ignore[union-attr]
        size = store.statistics().file_bytes
    path.unlink()
    return stored / 1e6 / wall, stored / 1e6 / cpu, size, sorted(stalls)


def make_kept(path: Path, records: int) -> int:
    with Store.open(path) as store:
        job = new_job(store)
        for first in range(0, records, 1000):
            now = time.time()
            store.append(job, [("error" if (first + j) % 10 == 9 else "output", LINE, now)
                               for j in range(min(1000, records - first))])  # fmt: skip
    return job


def reattach(path: Path, job: int, records: int, *, take: bool) -> tuple[float, float]:
    """Seconds (wall, CPU) to open the store and receive every record in pages of 10,000."""

    def run() -> int:
        got = 0
        with Store.open(path) as store:
            seq = 0
            while True:
                page = store.take(job, limit=PAGE) if take else store.read(job, seq, limit=PAGE)
                if not page:
                    break
                for record in page:
                    record.value.decode()
                got += len(page)
                seq = page[-1].seq + 1
        return got

    got, wall, cpu = timed(run)
    assert got == records, (got, records)
    return wall, cpu


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.set_defaults(repeats=3)
    p.add_argument("--size", type=int, default=1000, help="MB of lines for part 2 (default 1000)")
    p.add_argument("--dir", type=Path, default=None, help="where the store files go")
    args = p.parse_args()
    small, kept, size = 200_000, 1_000_000, args.size * 1_000_000
    if args.quick:
        small, kept, size = 20_000, 100_000, 20_000_000
    header("store: appends, 1 GB of lines, reattach and receive")
    directory = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        print(f"  files in {directory}")
        for batch in (100, 1, 1000):
            n = small if batch > 1 else small // 10
            runs = [small_appends(directory, n, batch) for _ in range(args.repeats)]
            wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
            goal = f"goal >= 100,000: {verdict(wall >= 100_000)}" if batch == 100 else "(no goal)"
            print(f"  append, batches of {batch:>4}: {wall:>10,.0f} records/s "
                  f"(CPU time: {cpu:,.0f}/s)   {goal}")  # fmt: skip
        mbs, mbs_cpu, file_bytes, stalls = gigabyte(directory, size)
        p99, worst = stalls[len(stalls) * 99 // 100] * 1e3, stalls[-1] * 1e3
        print(f"  {size / 1e6:,.0f} MB of 100-byte lines in batches of {PIPE_READ}: {mbs:.1f} MB/s "
              f"(CPU time: {mbs_cpu:.1f} MB/s; database {file_bytes / 1e6:,.0f} MB; one append: "
              f"p99 {p99:.1f} ms, max {worst:.0f} ms)   "
              f"goal >= 100 MB/s: {verdict(mbs >= 100)}")  # fmt: skip
        path = directory / "kept.db"
        job = make_kept(path, kept)
        runs = [reattach(path, job, kept, take=False) for _ in range(args.repeats)]
        wall, cpu = median([r[0] for r in runs]), median([r[1] for r in runs])
        print(f"  reattach + read() {kept:,} kept records: {wall:.2f} s (CPU time {cpu:.2f} s) "
              f"  goal <= 10 s: {verdict(wall <= 10)}")  # fmt: skip
        wall, cpu = reattach(path, job, kept, take=True)
        print(
            f"  reattach + take() {kept:,} records: {wall:.2f} s (CPU time {cpu:.2f} s)   (no goal)"
        )
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
