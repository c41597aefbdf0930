"""The local job host (``asyncjobs.connect_local``) against the job table in this process.

Everything runs against a job host of its own: ``ASYNCJOBS_HOST_DIR`` is a fresh directory
(under ``--dir``, default the temp dir), the host is started by the first ``connect_local`` (not
timed) and stopped at the end (SIGTERM to the pid in ``host.lock``), and the directory removed.

1. Start + wait: 200 ``s.jobs.start_command("true")`` one after the other on a session of the
   job host, then ``s.jobs.wait(*jobs)``; each must be COMPLETED with exit 0. Yardstick: 200
   ``JobManager.start_command(["true"])`` in this process, then ``jobs.wait()``, with
   ``process_limit=64`` as the job host's own job table has. The rounds alternate (host,
   in-process, ...) after one warm-up round each; each round's jobs are removed afterwards (not
   timed). Goal (issue 5): host / in-process <= 2.0. The CPU ratio beside it counts this process,
   the job host and every ``true`` (the host's reaped children included, through psutil).
2. Kept output: one job on the job host writes ``--size`` MB (default 200) of 100-byte lines (a
   Python producer writing ~1 MiB blocks); the clock runs from ``start_command`` until
   ``s.jobs.wait(job)`` returns, which is when the job is finished and its last record is in the
   store. Yardstick: the same producer as a command job in this process (default ``spill``
   buffer), read with ``async for line in job.stream()`` (``bench_stream.py``'s asyncjobs side):
   what a line costs in the job table (the job host does not pay it: its commands go from the
   pipes straight into the store). Also printed: the producer writing straight into a file in
   the host's directory (the producer and the page cache alone). MB/s counts the lines' bytes
   (10^6), newlines included. Goal (issue 5, there for 1 GB): >= 100 MB/s.
3. Reattach: a job's 1,000,000 kept 100-byte lines are on the host; its session is
   disconnected. The clock starts; ``connect_local(name, create=False)`` and then (a) every
   record read with ``s.jobs.read(job, seq, limit=50_000)`` page by page (a follower resuming
   from a seq, holding one page at a time), (b) ``s.jobs.receive_records(job, keep=True)``, all
   records at once. (c) is (b) with the job host stopped first: the clock includes starting a
   new host and opening its store. (d) is receive-once, ``s.jobs.receive_records(job)``, of a
   job of its own per repeat: every page a lease, acknowledged when the call returns (issue 10:
   within 1.2x of the receive-once path before acknowledgements; (d)/(b) is printed per pair).
   Goal (issue 5): <= 10 s.

``--profile start|kept|reattach`` then runs that part once more against a job host started in
the foreground under cProfile (``python -m cProfile -m asyncjobs._host.daemon``) and prints
the host's hot spots, then this process's.

    .venv/bin/python benchmarks/bench_host.py [--quick] [--repeats 5] [--jobs 200] [--size MB]
        [--records N] [--only start|kept|reattach] [--backend trio] [--dir DIR]
        [--profile start|kept|reattach]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
from _common import (
    PRODUCER_LINE,
    CpuClock,
    header,
    median,
    parser,
    producer_argv,
    report_pair,
    verdict,
)

import asyncjobs
from asyncjobs import HostSession

GOAL_RATIO = 2.0
GOAL_MBS = 100.0
GOAL_REATTACH = 10.0
HOST_PROCESS_LIMIT = 64  # the job host's JobManager(process_limit=64)
LINE = PRODUCER_LINE  # bytes per line, newline included
PAGE = 50_000  # records per read() in part 3 (the client's own page size)
# -- the job host of this benchmark ----------------------------------------------------------


def host_pid(directory: Path) -> int | None:
    try:
        text = (directory / "host.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_host(directory: Path) -> None:
    """SIGTERM the directory's job host (its pid is in ``host.lock``) and wait until it is gone
    (KILL after 10 s)."""
    pid = host_pid(directory)
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def host_cpu(directory: Path) -> float:
    """CPU seconds of the job host so far, its reaped children (the jobs) included."""
    pid = host_pid(directory)
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


@contextlib.contextmanager
def private_host(parent: Path | None) -> Iterator[Path]:
    """A fresh ``ASYNCJOBS_HOST_DIR`` for this process (and the host it starts); the host is
    stopped and the directory removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="ajb-", dir=parent))
    saved = {k: os.environ.get(k) for k in ("ASYNCJOBS_HOST_DIR", "ASYNCJOBS_HOST_IDLE_EXIT")}
    os.environ["ASYNCJOBS_HOST_DIR"] = str(directory)
    os.environ["ASYNCJOBS_HOST_IDLE_EXIT"] = "120"  # should this script die: gone 2 min later
    try:
        yield directory
    finally:
        stop_host(directory)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(directory, ignore_errors=True)


# -- 1. start + wait -------------------------------------------------------------------------


async def host_round(s: HostSession, directory: Path, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds for n ``true`` jobs started and waited for on the job host."""
    host_before = host_cpu(directory)
    with CpuClock() as cpu:
        t0 = time.perf_counter()
        started = [await s.jobs.start_command("true") for _ in range(n)]
        done = await s.jobs.wait(*started)
        elapsed = time.perf_counter() - t0
    used = cpu.seconds + host_cpu(directory) - host_before
    assert len(done) == n, f"only {len(done)} of {n} jobs finished"
    bad = [j for j in done if j.state is not asyncjobs.JobState.COMPLETED or j.exit_status != 0]
    assert not bad, bad[:3]
    for job in started:
        await s.jobs.remove(job)
    return elapsed, used


async def local_round(jobs: asyncjobs.JobManager, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds for n ``true`` jobs started and waited for in this process."""
    with CpuClock(children=True) as cpu:
        t0 = time.perf_counter()
        started = [await jobs.start_command(["true"]) for _ in range(n)]
        done = await jobs.wait()
        elapsed = time.perf_counter() - t0
    assert len(done) == n, f"only {len(done)} of {n} jobs finished"
    bad = [j for j in started if j.state is not asyncjobs.JobState.COMPLETED or j.exit_status]
    assert not bad, [(j, j.reason) for j in bad[:3]]
    for job in started:
        await jobs.remove(job)
    return elapsed, cpu.seconds


async def part_start(directory: Path, n: int, repeats: int) -> None:
    print(f"-- 1. start + wait {n} `true` jobs: job host vs in-process", flush=True)
    async with (
        asyncjobs.connect_local(name="bench") as s,
        asyncjobs.JobManager(process_limit=HOST_PROCESS_LIMIT) as jobs,
    ):
        await host_round(s, directory, min(n, 32))  # warm-up: the host's imports and caches
        await local_round(jobs, min(n, 32))
        ours: list[float] = []
        theirs: list[float] = []
        cpu_ours: list[float] = []
        cpu_theirs: list[float] = []
        for i in range(repeats):
            wall, cpu = await host_round(s, directory, n)
            ours.append(wall * 1000)
            cpu_ours.append(cpu * 1000)
            wall, cpu = await local_round(jobs, n)
            theirs.append(wall * 1000)
            cpu_theirs.append(cpu * 1000)
            print(
                f"  repeat {i + 1}/{repeats}: job host {ours[-1]:8.1f} ms   "
                f"in-process {theirs[-1]:8.1f} ms   ratio {ours[-1] / theirs[-1]:.2f}",
                flush=True,
            )
    report_pair(
        f"{n} jobs",
        ours,
        theirs,
        unit="ms",
        yardstick=(
            f"JobManager(process_limit={HOST_PROCESS_LIMIT}).start_command(['true']) x {n} "
            "+ jobs.wait(), in this process"
        ),
        goal=GOAL_RATIO,
        cpu=(cpu_ours, cpu_theirs),
    )
    print(
        f"  per job: job host {median(ours) / n:.2f} ms, in-process {median(theirs) / n:.2f} ms",
        flush=True,
    )


# -- 2. kept output --------------------------------------------------------------------------


async def kept_round(s: HostSession, nbytes: int) -> float:
    """MB/s from ``start_command`` until the job is finished and its records are stored."""
    t0 = time.perf_counter()
    job = await s.jobs.start_command(producer_argv(nbytes))
    [done] = await s.jobs.wait(job)
    elapsed = time.perf_counter() - t0
    assert done.state is asyncjobs.JobState.COMPLETED, (done.state, done.reason)
    assert done.next_seq == nbytes // LINE, (done.next_seq, nbytes // LINE)
    await s.jobs.remove(job)
    return nbytes / 1e6 / elapsed


async def stream_round(jobs: asyncjobs.JobManager, nbytes: int) -> float:
    """MB/s of the same producer as a command job in this process, read with ``stream()``."""
    t0 = time.perf_counter()
    job = await jobs.start_command(producer_argv(nbytes))
    lines = sum([1 async for _ in job.stream()])
    await job.wait()
    elapsed = time.perf_counter() - t0
    assert lines == nbytes // LINE and job.state is asyncjobs.JobState.COMPLETED
    await jobs.remove(job)
    return nbytes / 1e6 / elapsed


async def file_round(directory: Path, nbytes: int) -> float:
    """MB/s of the same producer writing into a file of the host's directory."""
    path = directory / "producer.out"
    t0 = time.perf_counter()
    with path.open("wb") as out:
        await anyio.run_process(producer_argv(nbytes), stdout=out)
    elapsed = time.perf_counter() - t0
    assert path.stat().st_size == nbytes
    path.unlink()
    return nbytes / 1e6 / elapsed


async def part_kept(directory: Path, nbytes: int, repeats: int) -> None:
    mb = nbytes / 1e6
    print(
        f"-- 2. a job writing {mb:,.0f} MB of {LINE}-byte lines, kept on the job host", flush=True
    )
    async with asyncjobs.connect_local(name="kept") as s, asyncjobs.JobManager() as jobs:
        warm = min(nbytes, 10_000_000)
        await kept_round(s, warm)
        await stream_round(jobs, warm)
        ours: list[float] = []
        theirs: list[float] = []
        files: list[float] = []
        for i in range(repeats):
            ours.append(await kept_round(s, nbytes))
            theirs.append(await stream_round(jobs, nbytes))
            files.append(await file_round(directory, nbytes))
            print(
                f"  repeat {i + 1}/{repeats}: job host {ours[-1]:8.1f} MB/s   "
                f"in-process stream() {theirs[-1]:8.1f} MB/s   "
                f"producer > file {files[-1]:8.1f} MB/s",
                flush=True,
            )
    report_pair(
        "throughput",
        ours,
        theirs,
        unit="MB/s",
        yardstick="the same producer as a command job in this process, read with job.stream()",
        goal=None,
        lower_is_better=False,
    )
    rate = median(ours)
    print(
        f"  the producer alone, writing into a file: median {median(files):,.0f} MB/s\n"
        f"  kept on the job host: {rate:.1f} MB/s = {rate * 1e6 / LINE:,.0f} records/s   "
        f"goal >= {GOAL_MBS:g} MB/s: {'PASS' if rate >= GOAL_MBS else 'MISS'}",
        flush=True,
    )


# -- 3. reattach and receive -----------------------------------------------------------------


async def reattach_read(name: str, job: int, records: int) -> float:
    """Seconds to reattach and read every record page by page (one page held at a time)."""
    t0 = time.perf_counter()
    async with asyncjobs.connect_local(name, create=False) as s:
        seq = got = 0
        while page := await s.jobs.read(job, seq, limit=PAGE):
            got += len(page)
            seq = page[-1].seq + 1
    elapsed = time.perf_counter() - t0
    assert got == records, (got, records)
    return elapsed


async def reattach_receive(name: str, job: int, records: int) -> float:
    """Seconds to reattach and ``receive_records(keep=True)`` every record at once."""
    t0 = time.perf_counter()
    async with asyncjobs.connect_local(name, create=False) as s:
        got = await s.jobs.receive_records(job, keep=True)
    elapsed = time.perf_counter() - t0
    assert len(got) == records and got[-1].seq == records - 1, (len(got), records)
    del got
    return elapsed


async def reattach_take(name: str, job: int, records: int) -> float:
    """Seconds to reattach and ``receive_records(job)`` every record: receive-once, every
    page a lease the controller acknowledges once the call hands the records over."""
    t0 = time.perf_counter()
    async with asyncjobs.connect_local(name, create=False) as s:
        got = await s.jobs.receive_records(job)
    elapsed = time.perf_counter() - t0
    assert len(got) == records and got[-1].seq == records - 1, (len(got), records)
    del got
    return elapsed


async def make_kept(name: str, records: int) -> int:
    """A finished job holding ``records`` lines on the host; its session left disconnected."""
    async with asyncjobs.connect_local(name) as s:
        job = await s.jobs.start_command(producer_argv(records * LINE))
        [done] = await s.jobs.wait(job)
        assert done.next_seq == records, (done.next_seq, records)
    return job.id


async def part_reattach(directory: Path, records: int, repeats: int) -> None:
    print(f"-- 3. reattach and receive {records:,} kept records", flush=True)
    job = await make_kept("kept-records", records)
    await reattach_read("kept-records", job, records)  # warm-up (page cache, host caches)
    runs: dict[str, list[float]] = {"read": [], "receive": [], "cold": [], "take": []}
    ratios: list[float] = []
    for i in range(repeats):
        once = await make_kept(f"once-{i}", records)  # receive-once consumes: one per repeat
        runs["read"].append(await reattach_read("kept-records", job, records))
        runs["receive"].append(await reattach_receive("kept-records", job, records))
        runs["take"].append(await reattach_take(f"once-{i}", once, records))
        ratios.append(runs["take"][-1] / runs["receive"][-1])
        await anyio.to_thread.run_sync(stop_host, directory)
        runs["cold"].append(await reattach_receive("kept-records", job, records))
        print(
            f"  repeat {i + 1}/{repeats}: read() pages {runs['read'][-1]:6.2f} s   "
            f"receive_records(keep=True) {runs['receive'][-1]:6.2f} s   "
            f"receive_records() {runs['take'][-1]:6.2f} s   "
            f"after a host restart {runs['cold'][-1]:6.2f} s",
            flush=True,
        )
    labels = {
        "read": f"(a) reattach + read(job, seq, limit={PAGE:,}) pages",
        "receive": "(b) reattach + receive_records(keep=True)",
        "cold": "(c) host stopped, then (b): a new host opens the store",
        "take": "(d) reattach + receive_records() (receive-once, acknowledged)",
    }
    for key, label in labels.items():
        value = median(runs[key])
        print(
            f"  {label}: median {value:.2f} s ({records / value:,.0f} records/s)   "
            f"goal <= {GOAL_REATTACH:g} s: {verdict(value, GOAL_REATTACH)}"
        )
    print(
        f"  (d) / (b), the cost of acknowledged receive-once over keep, per-pair median "
        f"{median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
    )


# -- profile ---------------------------------------------------------------------------------


async def wait_for_socket(directory: Path, proc: subprocess.Popen[bytes]) -> None:
    with anyio.fail_after(30):
        while not (directory / "host.sock").exists():
            assert proc.poll() is None, "the profiled job host exited"
            await anyio.sleep(0.02)


def profile(
    part: str, n: int, nbytes: int, records: int, parent: Path | None, backend: str
) -> None:
    """One round of ``part`` against a job host run in the foreground under cProfile."""
    import cProfile
    import pstats

    with private_host(parent) as directory:
        job = 0
        if part == "reattach":  # the records are made by an ordinary host, not profiled
            job = anyio.run(make_kept, "kept-records", records, backend=backend)
            stop_host(directory)
        out = directory / "host.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "asyncjobs._host.daemon"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        mine = cProfile.Profile()

        async def run() -> None:
            await wait_for_socket(directory, proc)
            rounds: dict[str, Callable[[], Awaitable[Any]]] = {
                "start": lambda: profiled_start(directory, n),
                "kept": lambda: profiled_kept(nbytes),
                "reattach": lambda: reattach_receive("kept-records", job, records),
            }
            mine.enable()
            try:
                await rounds[part]()
            finally:
                mine.disable()

        try:
            anyio.run(run, backend=backend)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        print(f"== cProfile of the job host ({part})")
        host = pstats.Stats(str(out))
        host.sort_stats("tottime").print_stats(25)
        host.sort_stats("cumulative").print_stats("asyncjobs", 25)
        print(f"== cProfile of this process, the controller ({part})")
        pstats.Stats(mine).sort_stats("tottime").print_stats(15)


async def profiled_start(directory: Path, n: int) -> None:
    async with asyncjobs.connect_local(name="bench") as s:
        await host_round(s, directory, n)


async def profiled_kept(nbytes: int) -> None:
    async with asyncjobs.connect_local(name="kept") as s:
        print(f"  {await kept_round(s, nbytes):.1f} MB/s under cProfile")


# -- main ------------------------------------------------------------------------------------


async def main_async(
    directory: Path, n: int, nbytes: int, records: int, repeats: int, parts: set[str]
) -> None:
    if "start" in parts:
        await part_start(directory, n, repeats)
    if "kept" in parts:
        await part_kept(directory, nbytes, repeats)
    if "reattach" in parts:
        await part_reattach(directory, records, repeats)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--jobs", type=int, default=None, help="jobs per round in part 1 (200)")
    p.add_argument("--size", type=int, default=None, help="MB the job writes in part 2 (200)")
    p.add_argument("--records", type=int, default=None, help="kept records in part 3 (1000000)")
    p.add_argument("--dir", type=Path, default=None, help="where the job host's directory goes")
    p.add_argument(
        "--only",
        choices=("start", "kept", "reattach"),
        action="append",
        help="run only this part (may be given more than once)",
    )
    p.add_argument(
        "--profile",
        choices=("start", "kept", "reattach"),
        default=None,
        help="then profile one round of that part (the job host under cProfile)",
    )
    args = p.parse_args()
    n = args.jobs or (50 if args.quick else 200)
    size_mb = args.size or (20 if args.quick else 200)
    nbytes = size_mb * 1_000_000 // LINE * LINE
    records = args.records or (100_000 if args.quick else 1_000_000)
    parts = set(args.only or ("start", "kept", "reattach"))
    header("bench_host: the local job host vs the job table in-process", args.backend)
    if args.repeats > 0:
        with private_host(args.dir) as directory:
            print(f"  job host directory {directory}")
            anyio.run(
                main_async, directory, n, nbytes, records, args.repeats, parts,
                backend=args.backend,
            )  # fmt: skip
    if args.profile:
        profile(args.profile, n, nbytes, records, args.dir, args.backend)


if __name__ == "__main__":
    main()
