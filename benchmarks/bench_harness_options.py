"""What the harness options of ``invoke`` cost (issue 15): each beside a plain ``invoke``.

H sshd test hosts (default 32, ``TestHosts(H, load=True)``), all on this machine. The command
prints one JSON line (``echo '{"ops": 1}'``). Per repeat, in a rotating order so that no side
always runs first: plain ``invoke``, ``output="json"``, ``clock=True``, ``probe=True``, and
``clock=True, probe=True``; each a whole fan-out (connect, command, close) timed on the wall
and on the controller's CPU (``time.process_time``: this process only, the sshds not counted).
Every option is reported as a pair against the plain invoke of the same repeat: medians, and
the median of per-repeat ratios (option / plain).

Then the per-host price on one open connection: ``check_host`` (the probe and clock script in
one channel) against ``session.invoke("true")`` (one plain exec round trip), alternately: the
issue's bound is one extra round trip per host.

    .venv/bin/python benchmarks/bench_harness_options.py [--quick] [--repeats 5] [--hosts 32]
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
from _common import header, median, parser, report_pair
from _remote_common import Timer, loadavg, ms, ssh_options, start_hosts

import asyncjobs
from asyncjobs._remote.clock import check_host
from tests.testhosts import TestHosts

COMMAND = "echo '{\"ops\": 1}'"
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    'output="json"': {"output": "json"},
    "clock=True": {"clock": True},
    "probe=True": {"probe": True},
    "clock+probe": {"clock": True, "probe": True},
}


async def fanout(targets: Sequence[str], options: dict[str, Any], extra: dict[str, Any]) -> Timer:
    async with asyncjobs.JobManager() as jobs:
        with Timer() as t:
            job = await jobs.invoke(targets, COMMAND, **options, **extra)
            out = await job
        assert len(out) == len(targets), out[:3]
        if extra.get("output") == "json":
            assert out[0] == {"ops": 1}, out[:3]
        for child in job.children:
            assert (child.clock is not None) == bool(extra.get("clock"))
            assert (child.host_info is not None) == bool(extra.get("probe"))
    return t


async def one_host(hosts: TestHosts, repeats: int) -> tuple[list[float], list[float]]:
    host = hosts.hosts[0]
    checks: list[float] = []
    plain: list[float] = []
    async with asyncjobs.connect(host.address, host.port, **ssh_options(hosts)) as session:
        await session.invoke("true")
        for _ in range(repeats):
            with Timer() as t:
                await session.invoke("true")
            plain.append(t.wall)
            with Timer() as t:
                await check_host(session, probe=True, clock=True)
            checks.append(t.wall)
    return checks, plain


def main() -> None:
    p = parser("the cost of invoke's harness options", backends=False)
    p.add_argument("--hosts", type=int, default=32, help="sshd test hosts (default 32)")
    args = p.parse_args()
    n = 4 if args.quick else args.hosts
    repeats = 2 if args.quick else args.repeats
    header(f"harness options on {n} hosts")
    with start_hosts(n) as hosts:
        options = ssh_options(hosts)
        targets = hosts.targets
        names = list(OPTIONS)
        walls: dict[str, list[float]] = {k: [] for k in names}
        cpus: dict[str, list[float]] = {k: [] for k in names}
        with asyncio.Runner() as runner:
            runner.run(fanout(targets, options, {"clock": True, "probe": True}))  # warm-up
            for i in range(repeats):
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    t = runner.run(fanout(targets, options, OPTIONS[name]))
                    walls[name].append(t.wall)
                    cpus[name].append(t.cpu)
                line = "  ".join(f"{k} {walls[k][-1] * 1000:.0f}" for k in names)
                print(f"  repeat {i + 1}/{repeats} (ms): {line}   load {loadavg()}", flush=True)
            checks, plain = runner.run(one_host(hosts, max(repeats * 4, 10)))
    print(f"-- each option vs a plain invoke of `{COMMAND}` on {n} hosts (connect, run, close)")
    for name in names[1:]:
        print(f"- {name}")
        report_pair(
            f"{n} hosts",
            ms(walls[name]),
            ms(walls["plain"]),
            unit="ms",
            yardstick="the same invoke without the option",
            goal=None,
            cpu=(ms(cpus[name]), ms(cpus["plain"])),
        )
    print("-- per host, on one open connection: the probe + clock channel vs one exec round trip")
    print(
        f"  check_host(probe, clock): median {median(checks) * 1000:.2f} ms   "
        f"session.invoke('true'): median {median(plain) * 1000:.2f} ms   "
        f"ratio {median([a / b for a, b in zip(checks, plain, strict=True)]):.2f}"
    )


if __name__ == "__main__":
    main()
