"""Controller memory per idle SSH session: ``asyncjobs.connect()`` vs ``asyncssh.connect()``.

H sshd test hosts (default 4, ``load=True``); N sessions (default 200) spread round-robin over
them. Each measurement runs in a fresh Python process (this script re-runs itself with
``--part``), so that one side's heap cannot hide the other's growth; the parts alternate within
each repeat (asyncjobs, asyncssh, asyncjobs, asyncssh, ...).

In the child: import everything, open and close 4 connections (warm-up: key loading, cipher
code, the loop's caches), ``gc.collect()``, read ``VmRSS`` from ``/proc/self/status``; open N
sessions (``await asyncjobs.connect(address, port, **ssh_options)`` or ``await
asyncssh.connect(...)``, 20 at a time), let them sit idle for 0.5 s, ``gc.collect()``, read
``VmRSS`` again; the growth / N is the memory per idle session. Then every session is closed.

Goal (issue 4): <= 32 KiB per idle asyncjobs session. The asyncssh figure is printed beside.

    .venv/bin/python benchmarks/bench_remote_memory.py [--quick] [--repeats 5] [--sessions N]
        [--hosts H] [--tracemalloc]

``--tracemalloc`` adds one more asyncjobs child that traces Python allocations and prints where
the sessions' memory went (the top allocation sites, by size).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
import anyio
import asyncssh
from _common import flush, header, median, parser, rss_mb
from _remote_common import report_goal, ssh_options, start_hosts

import asyncjobs
from tests.testhosts import TestHosts

GOAL_KIB = 32.0
BATCH = 20
PARTS = ("asyncjobs", "asyncssh")


# -- the child --------------------------------------------------------------------------------


async def _open(part: str, address: str, port: int, options: dict[str, Any]) -> Any:
    if part == "asyncjobs":
        return await asyncjobs.connect(address, port, **options)
    return await asyncssh.connect(address, port, **options)


async def _open_into(
    out: list[Any], k: int, part: str, host: list[Any], options: dict[str, Any]
) -> None:
    out[k] = await _open(part, host[0], host[1], options)


async def _close(part: str, session: Any) -> None:
    if part == "asyncjobs":
        assert isinstance(session, asyncjobs.Session)
        await session.close()
    else:
        assert isinstance(session, asyncssh.SSHClientConnection)
        session.close()
        await session.wait_closed()


async def child_async(part: str, spec: dict[str, Any], trace: bool) -> dict[str, Any]:
    hosts: list[list[Any]] = spec["hosts"]
    options: dict[str, Any] = spec["options"]
    n: int = spec["sessions"]
    for i in range(4):  # warm-up
        address, port = hosts[i % len(hosts)]
        await _close(part, await _open(part, address, port, options))
    await anyio.sleep(0.2)
    gc.collect()
    before = rss_mb()
    if trace:
        import tracemalloc

        tracemalloc.start(12)
        snap0 = tracemalloc.take_snapshot()
    sessions: list[Any] = []
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        batch: list[Any] = [None] * min(BATCH, n - start)

        async with anyio.create_task_group() as tg:
            for k in range(len(batch)):
                tg.start_soon(_open_into, batch, k, part, hosts[(start + k) % len(hosts)], options)
        sessions.extend(batch)
    opened = time.perf_counter() - t0
    await anyio.sleep(0.5)
    gc.collect()
    after = rss_mb()
    top: list[str] = []
    if trace:
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = snap1.compare_to(snap0, "traceback")
        for stat in stats[:8]:
            frames = [  # the most recent call first, each called from the next
                f"{f.filename.rsplit('site-packages/', 1)[-1].rsplit('/work/main/', 1)[-1]}"
                f":{f.lineno}"
                for f in reversed(stat.traceback)
                if "asyncjobs" in f.filename or "asyncssh" in f.filename
            ][:4]
            top.append(f"{stat.size_diff / n:8.0f} B/session  {' <- '.join(frames) or '?'}")
        total = sum(s.size_diff for s in stats)
        ours = sum(s.size_diff for s in stats if "asyncjobs" in s.traceback[-1].filename)
        top.append(
            f"Python allocations in all: {total / n / 1024:.1f} KiB per session, "
            f"{ours / n:.0f} B of it made by asyncjobs' own lines"
        )
    assert len(sessions) == n and all(s is not None for s in sessions)
    for start in range(0, n, 50):
        async with anyio.create_task_group() as tg:
            for s in sessions[start : start + 50]:
                tg.start_soon(_close, part, s)
    return {
        "part": part,
        "before_mib": before,
        "after_mib": after,
        "kib_per_session": (after - before) * 1024 / n,
        "open_seconds": opened,
        "top": top,
    }


def child(part: str, spec_json: str, trace: bool) -> None:
    spec = json.loads(spec_json)
    result = anyio.run(child_async, part, spec, trace, backend="asyncio")
    print(json.dumps(result))


# -- the parent -------------------------------------------------------------------------------


def run_part(part: str, spec: dict[str, Any], *, trace: bool = False) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--part", part, "--spec", json.dumps(spec)]
    if trace:
        argv.append("--tracemalloc")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"part {part} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main_parent(hosts: TestHosts, n: int, repeats: int, trace: bool) -> None:
    spec = {
        "hosts": [[h.address, h.port] for h in hosts.hosts],
        "options": ssh_options(hosts),
        "sessions": n,
    }
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PARTS}
    for i in range(repeats):
        line = f"  repeat {i + 1}/{repeats}:"
        for part in PARTS:
            r = run_part(part, spec)
            results[part].append(r)
            line += (
                f"  {part} {r['kib_per_session']:6.1f} KiB/session "
                f"(RSS {r['before_mib']:.1f} -> {r['after_mib']:.1f} MiB, "
                f"opened in {r['open_seconds']:.2f} s)"
            )
        print(line)
        flush()
    print(f"-- {n} idle sessions over {hosts.count} hosts, RSS growth after gc.collect() / {n}")
    ours = [r["kib_per_session"] for r in results["asyncjobs"]]
    theirs = [r["kib_per_session"] for r in results["asyncssh"]]
    print(
        f"  asyncjobs.connect  median {median(ours):6.1f} KiB per session   "
        f"runs {[round(x, 1) for x in ours]}"
    )
    print(
        f"  asyncssh.connect   median {median(theirs):6.1f} KiB per session   "
        f"runs {[round(x, 1) for x in theirs]}"
    )
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"  asyncjobs - asyncssh per repeat: median {median(diffs):+.1f} KiB   "
        f"runs {[round(x, 1) for x in diffs]}"
    )
    report_goal("asyncjobs per idle session", median(ours), GOAL_KIB, unit=" KiB")
    if trace:
        r = run_part("asyncjobs", spec, trace=True)
        print("-- tracemalloc (asyncjobs child): where the sessions' Python memory went")
        for row in r["top"]:
            print(f"  {row}")


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--sessions", type=int, default=None, help="idle sessions (default 200)")
    p.add_argument("--hosts", type=int, default=4, help="sshd test hosts (default 4)")
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace one asyncjobs child's Python allocations",
    )
    p.add_argument("--part", choices=PARTS, default=None, help="(internal) run one child")
    p.add_argument("--spec", default=None, help="(internal) the child's hosts and options")
    args = p.parse_args()
    if args.part is not None:
        child(args.part, args.spec, args.tracemalloc)
        return
    n = args.sessions or (50 if args.quick else 200)
    header("bench_remote_memory: controller memory per idle SSH session", "asyncio")
    with start_hosts(args.hosts, load=True) as hosts:
        main_parent(hosts, n, args.repeats, args.tracemalloc)


if __name__ == "__main__":
    main()
