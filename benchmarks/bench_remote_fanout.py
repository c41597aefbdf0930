"""Fan-out: connect to H hosts and run ``echo hi`` on each, vs raw asyncssh and parallel-ssh.

H sshd test hosts (default 32, ``TestHosts(H, load=True)``), all on this machine.

- asyncjobs: ``job = await jobs.invoke(targets, "echo hi", **ssh_options)`` (default
  ``throttle_limit=32``), ``await job.wait()``, ``await job.receive()``; every child must be
  Completed with ``["hi"]``. Each child opens its own connection and closes it when done.
- asyncssh: ``asyncio.gather`` over the hosts of ``async with asyncssh.connect(...) as conn:
  await conn.run("echo hi", check=True)`` (connect, run, close), same options.
- parallel-ssh (``pip install parallel-ssh``, for this benchmark only; skipped with a note when
  it is missing): ``ParallelSSHClient(addresses, host_config=[HostConfig(port=, user=,
  private_key=, allow_agent=False, identity_auth=False)], num_retries=1)``, ``run_command("echo
  hi")``, ``join()``, every host's stdout read. parallel-ssh cannot check host keys (it has no
  known_hosts support), so it runs without host key checking; asyncjobs and asyncssh verify
  every host key against the test known_hosts. Its connections close when the client is
  deallocated, after the timed part; asyncjobs and asyncssh close theirs inside it.

Per repeat: asyncjobs, asyncssh, parallel-ssh, in that order, on one event loop (parallel-ssh
runs on gevent in between, while the loop is idle). Ratios are per repeat. Controller CPU
(``time.process_time``, this process only; the sshds are not counted) is reported per child.
Goals (issue 4): asyncjobs / asyncssh <= 1.10; asyncjobs / parallel-ssh <= 0.6.

Then a fan-out to 1 host, asyncjobs and asyncssh alternately (5 or --repeats times each): the
first command on a new connection without a 32-way contention, where the +40 ms of Nagle and
delayed ACK (measured-facts pitfall 2) would show.

    .venv/bin/python benchmarks/bench_remote_fanout.py [--quick] [--repeats 5] [--hosts 32]
        [--no-pssh] [--profile]
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
import asyncssh
from _common import header, median, parser, report_pair
from _remote_common import Timer, ms, profile_async, ssh_options, start_hosts

import asyncjobs
from tests.testhosts import Host, TestHosts

GOAL_ASYNCSSH = 1.10
GOAL_PSSH = 0.6
COMMAND = "echo hi"


class Round:
    """One fan-out: wall and controller-CPU seconds; per-host connect and command seconds."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall = wall
        self.cpu = cpu
        self.connect: list[float] = []  # TCP + handshake + auth, per host
        self.command: list[float] = []  # the command on the open connection, per host


async def asyncjobs_round(hosts: Sequence[Host], options: dict[str, Any]) -> Round:
    targets = [h.target for h in hosts]
    async with asyncjobs.JobManager() as jobs:
        with Timer() as t:
            job = await jobs.invoke(targets, COMMAND, **options)
            await job.wait()
            out = await job.receive()
        bad = [c for c in job.children if c.state is not asyncjobs.JobState.COMPLETED]
        assert not bad, [(c.location, c.reason) for c in bad[:3]]
        assert out == ["hi"] * len(targets), out[:5]
        r = Round(t.wall, t.cpu)
        for child in job.children:
            timings = child.timings
            assert isinstance(timings, asyncjobs.RemoteTimings)
            assert timings.connect is not None and timings.auth is not None
            assert timings.channel_open is not None and timings.exit is not None
            r.connect.append(timings.connect + timings.auth)
            r.command.append(timings.channel_open + timings.exit)
        await jobs.remove(job)
    return r


async def asyncssh_round(hosts: Sequence[Host], options: dict[str, Any]) -> Round:
    connects: list[float] = []
    commands: list[float] = []

    async def one(address: str, port: int) -> str:
        with Timer() as c:
            conn = await asyncssh.connect(address, port, **options)
        async with conn:
            with Timer() as run:
                result = await conn.run(COMMAND, check=True)
        connects.append(c.wall)
        commands.append(run.wall)
        return str(result.stdout)

    with Timer() as t:
        out = await asyncio.gather(*(one(h.address, h.port) for h in hosts))
    assert out == ["hi\n"] * len(hosts), out[:5]
    r = Round(t.wall, t.cpu)
    r.connect, r.command = connects, commands
    return r


def load_pssh() -> tuple[Any, Any] | str:
    """(ParallelSSHClient, HostConfig), or why parallel-ssh is not available."""
    try:
        clients = importlib.import_module("pssh.clients")
        config = importlib.import_module("pssh.config")
    except ImportError as exc:
        return (
            f"parallel-ssh is not installed ({exc}); `.venv/bin/pip install parallel-ssh` "
            "for this benchmark only (it is not a dependency of asyncjobs)"
        )
    return clients.ParallelSSHClient, config.HostConfig


def pssh_round(hosts: TestHosts, pssh: tuple[Any, Any]) -> Round:
    client_class, host_config = pssh
    configs = [
        host_config(
            port=h.port,
            user=hosts.username,
            private_key=str(hosts.client_key),
            allow_agent=False,
            identity_auth=False,
        )
        for h in hosts.hosts
    ]
    with Timer() as t:
        client = client_class(
            [h.address for h in hosts.hosts],
            host_config=configs,
            num_retries=1,
            retry_delay=0.2,
            timeout=30,
            pool_size=max(100, hosts.count),
            allow_agent=False,
            identity_auth=False,
        )
        output = client.run_command(COMMAND, stop_on_errors=True)
        client.join(output, timeout=60)
        out = [list(host_output.stdout) for host_output in output]
        codes = [host_output.exit_code for host_output in output]
    assert out == [["hi"]] * hosts.count, out[:5]
    assert codes == [0] * hosts.count, codes[:5]
    del client, output
    gc.collect()  # parallel-ssh disconnects when its clients are deallocated (not timed)
    return Round(t.wall, t.cpu)


def main_loop(hosts: TestHosts, repeats: int, use_pssh: bool) -> None:
    options = ssh_options(hosts)
    pssh: tuple[Any, Any] | str = load_pssh() if use_pssh else "skipped (--no-pssh)"
    n = hosts.count
    every = hosts.hosts
    single_ours: list[Round] = []
    single_raw: list[Round] = []
    ours: list[Round] = []
    raw: list[Round] = []
    theirs: list[Round] = []
    with asyncio.Runner() as runner:
        runner.run(asyncjobs_round(every, options))  # warm-up: imports, keys, sshd caches
        runner.run(asyncssh_round(every, options))
        if not isinstance(pssh, str):
            pssh_round(hosts, pssh)
        for i in range(repeats):
            ours.append(runner.run(asyncjobs_round(every, options)))
            raw.append(runner.run(asyncssh_round(every, options)))
            line = (
                f"  repeat {i + 1}/{repeats}: asyncjobs {ours[-1].wall * 1000:7.1f} ms   "
                f"asyncssh {raw[-1].wall * 1000:7.1f} ms ({ours[-1].wall / raw[-1].wall:.2f})"
            )
            if not isinstance(pssh, str):
                theirs.append(pssh_round(hosts, pssh))
                line += (
                    f"   parallel-ssh {theirs[-1].wall * 1000:7.1f} ms "
                    f"({ours[-1].wall / theirs[-1].wall:.2f})"
                )
            print(line, flush=True)
        # One host, one child: the first command on a new connection without the contention of
        # a 32-way fan-out, where Nagle's +40 ms (measured-facts pitfall 2) would show.
        for _ in range(max(5, repeats)):
            single_ours.append(runner.run(asyncjobs_round(every[:1], options)))
            single_raw.append(runner.run(asyncssh_round(every[:1], options)))
    print(f"-- fan-out: connect + `{COMMAND}` + close on {n} hosts")
    report_pair(
        f"{n} hosts",
        ms([r.wall for r in ours]),
        ms([r.wall for r in raw]),
        unit="ms",
        yardstick="asyncio.gather(asyncssh.connect + conn.run('echo hi') + close)",
        goal=GOAL_ASYNCSSH,
    )
    if isinstance(pssh, str):
        print(f"-- parallel-ssh: not measured: {pssh}")
    else:
        print(f"-- vs parallel-ssh {_dist_version('parallel-ssh')} (no host key checking)")
        report_pair(
            f"{n} hosts",
            ms([r.wall for r in ours]),
            ms([r.wall for r in theirs]),
            unit="ms",
            yardstick="ParallelSSHClient.run_command('echo hi') + join + read stdout",
            goal=GOAL_PSSH,
        )
    print("-- controller CPU per fan-out child (time.process_time delta / hosts)")
    sides = [("asyncjobs", ours), ("asyncssh", raw)]
    if theirs:
        sides.append(("parallel-ssh", theirs))
    for label, rounds in sides:
        print(
            f"  {label:12s} {median([r.cpu for r in rounds]) / n * 1000:6.2f} ms per child   "
            f"runs {[round(r.cpu / n * 1000, 2) for r in rounds]}"
        )
    print(f"-- per-host phases in the {n}-host fan-out (median over hosts and repeats)")
    for label, rounds in (("asyncjobs", ours), ("asyncssh", raw)):
        connect = [x for r in rounds for x in r.connect]
        command = [x for r in rounds for x in r.command]
        print(
            f"  {label:12s} connect+auth {median(connect) * 1000:6.1f} ms   "
            f"echo hi (channel open to exit) {median(command) * 1000:6.1f} ms"
        )
    print(
        "-- fan-out to 1 host (no contention): the first command on a new connection "
        "(Nagle + delayed ACK, measured-facts pitfall 2, would add ~40 ms)"
    )
    for label, rounds in (("asyncjobs", single_ours), ("asyncssh", single_raw)):
        command = [x for r in rounds for x in r.command]
        slow = sum(x >= 0.035 for x in command)
        print(
            f"  {label:12s} whole fan-out {median([r.wall for r in rounds]) * 1000:6.1f} ms   "
            f"connect+auth {median([x for r in rounds for x in r.connect]) * 1000:6.1f} ms   "
            f"echo hi {median(command) * 1000:6.1f} ms   (>= 35 ms: {slow} of {len(command)})"
        )


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def profile(hosts: TestHosts) -> None:
    options = ssh_options(hosts)

    def run(body: Callable[[], Awaitable[Any]]) -> None:
        asyncio.run(_call(body))

    async def fanout() -> None:
        await asyncjobs_round(hosts.hosts, options)

    run(fanout)  # warm-up
    profile_async(f"asyncjobs fan-out to {hosts.count} hosts", run, fanout)


async def _call(body: Callable[[], Awaitable[Any]]) -> Any:
    return await body()


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--hosts", type=int, default=None, help="sshd test hosts (default 32)")
    p.add_argument("--no-pssh", action="store_true", help="skip parallel-ssh")
    p.add_argument(
        "--profile", action="store_true", help="then profile one asyncjobs fan-out with cProfile"
    )
    args = p.parse_args()
    count = args.hosts or (8 if args.quick else 32)
    header("bench_remote_fanout: connect + echo hi to many hosts", "asyncio")
    with start_hosts(count, load=True) as hosts:
        main_loop(hosts, args.repeats, not args.no_pssh)
        if args.profile:
            profile(hosts)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
