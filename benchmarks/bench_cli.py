"""The command line: start-up, ``asyncjobs get`` over 10,000 stored jobs, ``invoke`` to 32 hosts.

Every run is a fresh process, as a user runs the command (``.venv/bin/asyncjobs`` if installed,
else ``python -m asyncjobs``); wall time from ``subprocess.run`` to exit, output read from a
pipe. The CPU column is the child's user + system time (``RUSAGE_CHILDREN``), which a loaded
machine disturbs less than wall time.

1. ``asyncjobs --help``: goal median < 150 ms. References: ``python -c pass`` and ``python -c
   'import asyncjobs'`` (what any entry point into the package pays before the command line's
   own code runs).
2. ``asyncjobs get`` with 10,000 jobs in the store of a private job host (written straight into
   the store through ``asyncjobs._host.store`` before the host starts; the host is started by the
   first ``get``, which is not timed): goal median < 300 ms. Also ``get --json``, and the job
   host's own answer to ``session.jobs.get()`` in-process, for comparison.
3. ``asyncjobs invoke -H <32 hosts> -- echo hello`` vs the same fan-out through the Python API
   (``JobManager.invoke``, its records streamed and printed) in a fresh ``python`` process,
   alternately: goal median ratio <= 1.2. The API's in-process time (warm, no start-up) is
   printed too.

    .venv/bin/python benchmarks/bench_cli.py [--quick] [--repeats 15] [--hosts 32] [--jobs 10000]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
from _common import header, median, parser, verdict
from _remote_common import ssh_options, start_hosts

from tests.testhosts import TestHosts

GOAL_HELP_MS = 150.0
GOAL_GET_MS = 300.0
GOAL_INVOKE_RATIO = 1.2
COMMAND = "echo hello"
API_SCRIPT = """
import json, sys, anyio, asyncjobs
options, targets = json.loads(sys.argv[1]), sys.argv[2].split(",")
async def main():
    async with asyncjobs.JobManager() as jobs:
        job = await jobs.invoke(targets, sys.argv[3], throttle_limit=32, **options)
        async for record in job.stream_records(streams=None):
            print(f"{record.location}: {record.value}")
        await job.wait()
        assert all(c.state.value == "Completed" for c in job.children)
anyio.run(main, backend="asyncio")
"""


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "asyncjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncjobs"]


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (which must exit 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]}... exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


Runs = list[tuple[float, float]]


def series(argv: Sequence[str], repeats: int, env: dict[str, str] | None = None) -> Runs:
    return [timed(argv, env) for _ in range(repeats)]


def report(what: str, runs: Runs, goal_ms: float | None = None) -> str:
    """Median wall time (the goal is on it), its range, and the median CPU time."""
    ms = [wall * 1000 for wall, _ in runs]
    cpu = median([c * 1000 for _, c in runs]) if runs[0][1] >= 0 else float("nan")
    line = (
        f"  {what:<40} median {median(ms):7.1f} ms   min {min(ms):6.1f}   max {max(ms):6.1f}"
        f"   CPU {cpu:6.1f} ms"
    )
    result = ""
    if goal_ms is not None:
        result = verdict(median(ms), goal_ms)
        line += f"   goal < {goal_ms:g} ms: {result}"
    print(line, flush=True)
    return result


# -- 1. start-up ------------------------------------------------------------------------------


def bench_help(repeats: int) -> str:
    print("-- start-up: asyncjobs --help")
    timed([*cli_argv(), "--help"])  # warm the page cache
    report("python -c pass", series([sys.executable, "-c", "pass"], repeats))
    report(
        "python -c 'import asyncjobs'", series([sys.executable, "-c", "import asyncjobs"], repeats)
    )
    return report("asyncjobs --help", series([*cli_argv(), "--help"], repeats), GOAL_HELP_MS)


# -- 2. get over a big store ------------------------------------------------------------------


def fill_store(directory: Path, count: int) -> None:
    """``count`` finished jobs, written through the store before any host opens it."""
    from asyncjobs._host.directory import STORE, ensure_private_dir
    from asyncjobs._host.store import Store

    ensure_private_dir(directory)
    now = time.time()
    with Store.open(directory / STORE) as store:
        for i in range(count):
            row = store.new_job(
                session="cli",
                kind="BackgroundJob",
                command=f"make -C /src/project{i % 97} test",
                location=os.uname().nodename,
                instance_id=str(uuid.uuid4()),
            )
            failed = i % 10 == 0
            store.update_job(
                row.id,
                state="Failed" if failed else "Completed",
                exit_status=2 if failed else 0,
                started_at=now,
                finished_at=now + 1.0,
            )


def stop_host(directory: Path) -> None:
    try:
        pid = int((directory / "host.lock").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)


def bench_get(repeats: int, count: int) -> str:
    print(f"-- asyncjobs get, {count:,} jobs in the store")
    directory = Path(tempfile.mkdtemp(prefix="ajb", dir="/tmp"))
    env = dict(os.environ, ASYNCJOBS_HOST_DIR=str(directory), ASYNCJOBS_HOST_IDLE_EXIT="120")
    try:
        t0 = time.perf_counter()
        fill_store(directory, count)
        print(f"  store filled in {time.perf_counter() - t0:.1f} s")
        first = subprocess.run([*cli_argv(), "get"], capture_output=True, env=env, check=True)
        rows = first.stdout.count(b"\n") - 2
        assert rows == count, f"get listed {rows} jobs, not {count}"
        result = report("asyncjobs get", series([*cli_argv(), "get"], repeats, env), GOAL_GET_MS)
        report("asyncjobs get --json", series([*cli_argv(), "get", "--json"], repeats, env))
        report("job host answering session.jobs.get()", _api_get(env, min(repeats, 5)))
        return result
    finally:
        stop_host(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _api_get(env: dict[str, str], repeats: int) -> Runs:
    code = (
        "import time, anyio\n"
        "from asyncjobs._host.client import connect_local\n"
        "async def main():\n"
        "    async with connect_local(None, create=False) as s:\n"
        f"        for _ in range({repeats}):\n"
        "            t = time.perf_counter(); await s.jobs.get(); print(time.perf_counter() - t)\n"
        "anyio.run(main, backend='asyncio')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    return [(float(x), -1.0) for x in out.stdout.split()]  # in-process: no CPU figure


# -- 3. invoke vs the Python API ----------------------------------------------------------------


def cli_ssh_flags(hosts: TestHosts) -> list[str]:
    return [
        "-l", hosts.username, "-i", str(hosts.client_key),
        "--known-hosts", str(hosts.known_hosts), "-F", "none",
    ]  # fmt: skip


def bench_invoke(repeats: int, count: int) -> str:
    print(f"-- asyncjobs invoke to {count} hosts vs JobManager.invoke in a fresh python")
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    with start_hosts(count) as hosts:
        addresses = ",".join(f"{h.address}:{h.port}" for h in hosts.hosts)
        options = ssh_options(hosts)
        # --no-persist: this compares connecting from the CLI with the API (bench_warm.py
        # measures invoke on the job host's held connections).
        cli = [*cli_argv(), "invoke", "--no-persist", "-H", addresses, *cli_ssh_flags(hosts)]
        cli += ["--", COMMAND]
        api = [sys.executable, "-c", API_SCRIPT, json.dumps(options), ",".join(hosts.targets)]
        api.append(COMMAND)
        timed(cli, env)  # warm-up: the page cache, sshd's first connections
        timed(api, env)
        ours: Runs = []
        theirs: Runs = []
        for _ in range(repeats):  # alternately, so that a noisy minute hits both
            ours.append(timed(cli, env))
            theirs.append(timed(api, env))
        report("asyncjobs invoke (CLI)", ours)
        report("JobManager.invoke (python script)", theirs)
        ratios = [a[0] / b[0] for a, b in zip(ours, theirs, strict=True)]
        ratio = median(ratios)
        cpu_ratio = median([a[1] / b[1] for a, b in zip(ours, theirs, strict=True)])
        result = verdict(ratio, GOAL_INVOKE_RATIO)
        print(
            f"  ratio CLI/API (median of per-pair ratios) {ratio:.3f}   runs "
            f"[{', '.join(f'{r:.2f}' for r in ratios)}]   goal <= {GOAL_INVOKE_RATIO}: {result}"
        )
        print(f"  CPU ratio CLI/API (median of per-pair ratios) {cpu_ratio:.3f}")
        print(f"  JobManager.invoke in-process, warm: {_in_process(hosts, repeats):.1f} ms median")
    return result


def _in_process(hosts: TestHosts, repeats: int) -> float:
    import anyio

    import asyncjobs

    options = ssh_options(hosts)
    walls: list[float] = []

    async def main() -> None:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            async with asyncjobs.JobManager() as jobs:
                job = await jobs.invoke(hosts.targets, COMMAND, **options)
                async for _record in job.stream_records(streams=None):
                    pass
                await job.wait()
            walls.append(time.perf_counter() - t0)

    anyio.run(main, backend="asyncio")
    return median(walls[1:]) * 1000


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--hosts", type=int, default=32, help="hosts for invoke (default 32)")
    p.add_argument("--jobs", type=int, default=10_000, help="jobs in the store (default 10,000)")
    p.set_defaults(repeats=15)
    args = p.parse_args()
    repeats, hosts, jobs = args.repeats, args.hosts, args.jobs
    if args.quick:
        repeats, hosts, jobs = 3, 4, 1_000
    header("asyncjobs command line")
    results = {
        "help": bench_help(repeats),
        "get": bench_get(repeats, jobs),
        "invoke": bench_invoke(max(3, repeats // 3), hosts),
    }
    print("== " + "   ".join(f"{name}: {result}" for name, result in results.items()))


if __name__ == "__main__":
    main()
