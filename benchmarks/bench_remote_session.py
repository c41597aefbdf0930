"""Commands on one open SSH session: ``session.invoke("true")`` vs asyncssh's ``conn.run("true")``.

One sshd test host (``TestHosts(1, load=True)``: MaxSessions 1000), both sides on a fresh
connection per round, host keys verified, the same client key.

(a) Sequential: ``asyncjobs.connect(...)`` then ``await session.invoke("true")`` N times (default
    100) vs ``asyncssh.connect(...)`` then ``await conn.run("true")`` N times. The first command
    on each new connection is timed on its own and not counted in the N (measured-facts
    pitfall 2: sshd's first command on a new connection can cost +40 ms of Nagle/delayed ACK).
(b) Concurrent: M ``true`` at once (default 200) on one session,
    ``asyncio.gather(*(session.invoke("true") for _ in range(M)))``, vs
    ``asyncio.gather(*(conn.run("true") for _ in range(M)))`` on one connection. The raw side
    opens all M channels at once (the load hosts allow 1000); a session uses at most
    ``max_channels`` (default 10, one kept for stop: 9 commands at a time), so (b) is reported
    twice: the default session, and ``max_channels=M + 1`` (M at a time, what raw gets).
    Also the JobManager form with the matched session: ``jobs.invoke([session], "true")`` M
    times, then ``jobs.wait()``.

Every asyncjobs round is followed by its own raw round (A, B, A, B, ...); ratios are
asyncjobs / asyncssh per pair, medians over the repeats. Controller CPU (``process_time``) is
printed beside (the sshds' CPU is not in it). Goals (issue 4): (a) <= 1.15, (b) <= 1.15.

    .venv/bin/python benchmarks/bench_remote_session.py [--quick] [--repeats 5] [--sequential N]
        [--concurrent M] [--profile]
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
import anyio
import asyncssh
from _common import header, median, parser, report_pair
from _remote_common import Timer, ms, profile_async, ssh_options, start_hosts

import asyncjobs
from tests.testhosts import Host, TestHosts

GOAL_SEQUENTIAL = 1.15
GOAL_CONCURRENT = 1.15
#: connect()'s default max_channels (sshd's default MaxSessions)
DEFAULT_CHANNELS: int = inspect.signature(asyncjobs.connect).parameters["max_channels"].default


class Round:
    """One round: the first command's seconds, then wall and controller CPU of the rest."""

    def __init__(self, first: float, wall: float, cpu: float) -> None:
        self.first = first
        self.wall = wall
        self.cpu = cpu


# -- sequential -------------------------------------------------------------------------------


async def asyncjobs_sequential(host: Host, options: dict[str, Any], n: int) -> Round:
    async with asyncjobs.connect(host.address, host.port, **options) as session:
        with Timer() as first:
            assert await session.invoke("true") == []
        with Timer() as t:
            for _ in range(n):
                await session.invoke("true")
    return Round(first.wall, t.wall, t.cpu)


async def asyncssh_sequential(host: Host, options: dict[str, Any], n: int) -> Round:
    async with asyncssh.connect(host.address, host.port, **options) as conn:
        with Timer() as first:
            assert (await conn.run("true", check=True)).exit_status == 0
        with Timer() as t:
            for _ in range(n):
                await conn.run("true", check=True)
    return Round(first.wall, t.wall, t.cpu)


# -- concurrent -------------------------------------------------------------------------------


async def asyncjobs_gather(host: Host, options: dict[str, Any], m: int, channels: int) -> Round:
    async with asyncjobs.connect(
        host.address, host.port, max_channels=channels, **options
    ) as session:
        with Timer() as first:
            await session.invoke("true")  # the first command on the connection, not counted
        with Timer() as t:
            results = await asyncio.gather(*(session.invoke("true") for _ in range(m)))
    assert results == [[]] * m
    return Round(first.wall, t.wall, t.cpu)


async def asyncjobs_manager(host: Host, options: dict[str, Any], m: int, channels: int) -> Round:
    async with (
        asyncjobs.connect(host.address, host.port, max_channels=channels, **options) as session,
        asyncjobs.JobManager() as jobs,
    ):
        with Timer() as first:
            await session.invoke("true")
        with Timer() as t:
            started = [await jobs.invoke([session], "true") for _ in range(m)]
            done = await jobs.wait()
        assert len(done) == m, f"only {len(done)} of {m} jobs finished"
        bad = [j for j in started if j.state is not asyncjobs.JobState.COMPLETED]
        assert not bad, [(j, j.children[0].reason) for j in bad[:3]]
    return Round(first.wall, t.wall, t.cpu)


async def asyncssh_gather(host: Host, options: dict[str, Any], m: int) -> Round:
    async with asyncssh.connect(host.address, host.port, **options) as conn:
        with Timer() as first:
            await conn.run("true", check=True)
        with Timer() as t:
            results = await asyncio.gather(*(conn.run("true", check=True) for _ in range(m)))
    assert all(r.exit_status == 0 for r in results)
    return Round(first.wall, t.wall, t.cpu)


# -- driver -----------------------------------------------------------------------------------


class Pair:
    """The asyncjobs and raw rounds of one comparison, across the repeats."""

    def __init__(self, title: str, yardstick: str, goal: float | None) -> None:
        self.title = title
        self.yardstick = yardstick
        self.goal = goal
        self.ours: list[Round] = []
        self.theirs: list[Round] = []

    async def step(
        self, ours: Callable[[], Awaitable[Round]], theirs: Callable[[], Awaitable[Round]]
    ) -> None:
        self.ours.append(await ours())
        self.theirs.append(await theirs())

    def last(self) -> str:
        a, b = self.ours[-1], self.theirs[-1]
        return f"{a.wall * 1000:7.1f} vs {b.wall * 1000:7.1f} ms ({a.wall / b.wall:.2f})"

    def report(self, count: int) -> float:
        print(f"-- {self.title}")
        ratio = report_pair(
            f"{count} x true",
            ms([r.wall for r in self.ours]),
            ms([r.wall for r in self.theirs]),
            unit="ms",
            yardstick=self.yardstick,
            goal=self.goal,
        )
        wall_a = median([r.wall for r in self.ours]) / count
        wall_b = median([r.wall for r in self.theirs]) / count
        cpu_a = median([r.cpu for r in self.ours]) / count
        cpu_b = median([r.cpu for r in self.theirs]) / count
        print(
            f"  per command: asyncjobs {wall_a * 1000:.2f} ms ({1 / wall_a:,.0f}/s), "
            f"asyncssh {wall_b * 1000:.2f} ms ({1 / wall_b:,.0f}/s); controller CPU per command: "
            f"asyncjobs {cpu_a * 1000:.3f} ms, asyncssh {cpu_b * 1000:.3f} ms "
            f"(+{(cpu_a - cpu_b) * 1e6:.0f} us)"
        )
        return ratio


async def main_async(hosts: TestHosts, n: int, m: int, repeats: int) -> None:
    host = hosts.hosts[0]
    options = ssh_options(hosts)
    matched = m + 1  # one channel is kept for stop(): m + 1 lets m commands run at once
    seq = Pair(
        f"(a) {n} sequential `true` on one session",
        'asyncssh conn.run("true", check=True) sequentially on one connection',
        GOAL_SEQUENTIAL,
    )
    default = Pair(
        f"(b) {m} concurrent `true` on one session, default max_channels={DEFAULT_CHANNELS} "
        f"({DEFAULT_CHANNELS - 1} at a time)",
        f'asyncio.gather({m} x conn.run("true")) on one connection ({m} channels at once)',
        GOAL_CONCURRENT,
    )
    match = Pair(
        f"(b) {m} concurrent `true` on one session, max_channels={matched} ({m} at a time, as raw)",
        f'asyncio.gather({m} x conn.run("true")) on one connection',
        GOAL_CONCURRENT,
    )
    manager = Pair(
        f"(b') {m} x JobManager.invoke([session], 'true') then jobs.wait(), max_channels={matched}",
        f'asyncio.gather({m} x conn.run("true")) on one connection',
        GOAL_CONCURRENT,
    )
    # Warm-up (imports, key loading, the sshd's page cache): one small round of each kind.
    await asyncjobs_sequential(host, options, 5)
    await asyncssh_sequential(host, options, 5)
    await asyncjobs_gather(host, options, 20, 21)
    await asyncssh_gather(host, options, 20)
    for i in range(repeats):
        await seq.step(
            lambda: asyncjobs_sequential(host, options, n),
            lambda: asyncssh_sequential(host, options, n),
        )
        await default.step(
            lambda: asyncjobs_gather(host, options, m, DEFAULT_CHANNELS),
            lambda: asyncssh_gather(host, options, m),
        )
        await match.step(
            lambda: asyncjobs_gather(host, options, m, matched),
            lambda: asyncssh_gather(host, options, m),
        )
        await manager.step(
            lambda: asyncjobs_manager(host, options, m, matched),
            lambda: asyncssh_gather(host, options, m),
        )
        print(
            f"  repeat {i + 1}/{repeats}: (a) {seq.last()}   (b) default {default.last()}   "
            f"matched {match.last()}   jobs {manager.last()}",
            flush=True,
        )
    seq.report(n)
    default.report(m)
    match.report(m)
    manager.report(m)
    firsts_a = [r.first for p in (seq, default, match, manager) for r in p.ours]
    firsts_b = [r.first for p in (seq, default, match, manager) for r in p.theirs]
    print(
        "-- first command on a new connection (measured-facts pitfall 2, Nagle + delayed ACK)\n"
        f"  asyncjobs session.invoke: median {median(firsts_a) * 1000:.1f} ms "
        f"(max {max(firsts_a) * 1000:.1f}); asyncssh conn.run: median "
        f"{median(firsts_b) * 1000:.1f} ms (max {max(firsts_b) * 1000:.1f}); later commands "
        f"{median([r.wall for r in seq.ours]) / n * 1000:.1f} / "
        f"{median([r.wall for r in seq.theirs]) / n * 1000:.1f} ms"
    )
    stall = [x for x in firsts_a + firsts_b if x >= 0.035]
    print(
        f"  {'the +40 ms stall shows' if stall else 'no +40 ms stall'}: "
        f"{sum(x >= 0.035 for x in firsts_a)} of {len(firsts_a)} asyncjobs and "
        f"{sum(x >= 0.035 for x in firsts_b)} of {len(firsts_b)} asyncssh first commands "
        "took >= 35 ms"
    )


def profile(hosts: TestHosts, n: int, m: int) -> None:
    host = hosts.hosts[0]
    options = ssh_options(hosts)

    def run(body: Callable[[], Awaitable[Any]]) -> None:
        anyio.run(body, backend="asyncio")

    async def sequential() -> None:
        await asyncjobs_sequential(host, options, n)

    async def concurrent() -> None:
        await asyncjobs_gather(host, options, m, m + 1)

    profile_async(f"asyncjobs (a): {n} sequential session.invoke('true')", run, sequential)
    profile_async(f"asyncjobs (b): {m} concurrent session.invoke('true')", run, concurrent)


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--sequential", type=int, default=None, help="(a) commands (default 100)")
    p.add_argument("--concurrent", type=int, default=None, help="(b) commands (default 200)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile one asyncjobs round of (a) and of (b) with cProfile",
    )
    args = p.parse_args()
    n = args.sequential or (20 if args.quick else 100)
    m = args.concurrent or (40 if args.quick else 200)
    header("bench_remote_session: commands on one SSH session vs asyncssh", "asyncio")
    with start_hosts(1, load=True) as hosts:
        anyio.run(main_async, hosts, n, m, args.repeats, backend="asyncio")
        if args.profile:
            profile(hosts, n, m)


if __name__ == "__main__":
    main()
