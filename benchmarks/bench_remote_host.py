"""A job host on the far side of SSH: ``session.jobs.start_command("true")`` vs ``session.invoke``.

One sshd test host (``TestHosts(1, load=True)``), one named session (``asyncjobs.connect(...,
name="bench")``) for the whole run. The first use of ``session.jobs`` installs the runtime on
the host (if needed), starts the remote job host and opens the bridge: that is timed once and
reported, not counted. Then, alternately on the same session (A, B, A, B, ...), N commands one
after the other (default 50):

(a) ``await session.jobs.start_command("true")``: the round trip of starting a job on the remote
    job host (the request crosses the bridge; the host spawns ``true`` and answers once it runs);
(b) (a) then ``await session.jobs.wait(job)``: the job run to completion on the host, its end
    stored, which is what ``invoke`` gives (but the job and its records stay on the host);
yardstick: ``await session.invoke("true")``: the command on a channel of the same connection.

Each round's jobs are removed afterwards (not timed). Ratios are host-job / invoke per pair,
medians over the repeats. Issue 5 asks only to report them (no goal). The remote job host is
stopped at the end (SIGTERM, by pid).

    .venv/bin/python benchmarks/bench_remote_host.py [--quick] [--repeats 5] [--commands N]
"""

from __future__ import annotations

import subprocess
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
import anyio
from _common import header, median, parser, report_pair
from _remote_common import Timer, ms, ssh_options, start_hosts

import asyncjobs
from tests.testhosts import TestHosts


async def start_round(s: asyncjobs.Session, n: int, wait: bool) -> float:
    """Seconds for n ``jobs.start_command("true")`` (and ``jobs.wait`` of each if ``wait``)."""
    started = []
    with Timer() as t:
        for _ in range(n):
            job = await s.jobs.start_command("true")
            if wait:
                [done] = await s.jobs.wait(job)
                assert done.state is asyncjobs.JobState.COMPLETED, (done.state, done.reason)
            started.append(job)
    for job in started:
        await s.jobs.remove(job, force=True)
    return t.wall


async def invoke_round(s: asyncjobs.Session, n: int) -> float:
    """Seconds for n ``session.invoke("true")``."""
    with Timer() as t:
        for _ in range(n):
            assert await s.invoke("true") == []
    return t.wall


def stop_job_hosts(hosts: TestHosts) -> None:
    for pid in hosts.pgrep(None, "asyncjobs._host.daemon"):
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


async def main_async(hosts: TestHosts, n: int, repeats: int) -> None:
    host = hosts.hosts[0]
    options: dict[str, Any] = ssh_options(hosts)
    async with asyncjobs.connect(host.address, host.port, name="bench", **options) as s:
        with Timer() as first:
            job = await s.jobs.start_command("true")
        print(
            f"  first session.jobs call (runtime check/install, job host start, bridge): "
            f"{first.wall * 1000:.0f} ms",
            flush=True,
        )
        await s.jobs.wait(job)
        await s.jobs.remove(job)
        await invoke_round(s, 5)  # warm-up of both sides
        await start_round(s, 5, wait=True)
        runs: dict[str, list[float]] = {"start": [], "run": [], "invoke": []}
        for i in range(repeats):
            runs["start"].append(await start_round(s, n, wait=False))
            runs["invoke"].append(await invoke_round(s, n))
            runs["run"].append(await start_round(s, n, wait=True))
            print(
                f"  repeat {i + 1}/{repeats}: jobs.start_command {runs['start'][-1] * 1000:7.1f} ms"
                f"   + wait {runs['run'][-1] * 1000:7.1f} ms"
                f"   invoke {runs['invoke'][-1] * 1000:7.1f} ms",
                flush=True,
            )
    yardstick = 'session.invoke("true") on the same session, one after the other'
    for key, title in (
        ("start", '(a) session.jobs.start_command("true")'),
        ("run", '(b) session.jobs.start_command("true") + session.jobs.wait(job)'),
    ):
        print(f"-- {title}")
        report_pair(
            f"{n} commands",
            ms(runs[key]),
            ms(runs["invoke"]),
            unit="ms",
            yardstick=yardstick,
            goal=None,
        )
        print(
            f"  per command: {median(runs[key]) / n * 1000:.2f} ms, "
            f"invoke {median(runs['invoke']) / n * 1000:.2f} ms"
        )


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--commands", type=int, default=None, help="commands per round (50)")
    args = p.parse_args()
    n = args.commands or (10 if args.quick else 50)
    header("bench_remote_host: jobs on a remote job host vs session.invoke", "asyncio")
    with start_hosts(1, load=True) as hosts:
        stop_job_hosts(hosts)
        try:
            anyio.run(main_async, hosts, n, args.repeats, backend="asyncio")
        finally:
            stop_job_hosts(hosts)


if __name__ == "__main__":
    main()
