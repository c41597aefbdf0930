"""What the remote benchmarks share: the sshd test hosts, their options, timing and profiling.

Every remote benchmark starts its own real OpenSSH sshd processes on loopback with
``tests.testhosts.TestHosts`` (root only; 127.0.0.0/8 only; stopped on exit) and runs asyncjobs
and raw asyncssh against the same sshds in the same run, alternately (A, B, A, B, ...).

The scripts are run from anywhere as ``.venv/bin/python benchmarks/bench_remote_X.py``; this
module puts the repository root on ``sys.path`` so that ``tests.testhosts`` imports.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import asyncssh  # noqa: E402
from _common import median, verdict  # noqa: E402

from asyncjobs._ssh.defaults import with_client_defaults  # noqa: E402
from tests.testhosts import TestHosts, TestHostsError, sshd_version  # noqa: E402

__all__ = [
    "TestHosts",
    "TestHostsError",
    "Timer",
    "describe_hosts",
    "loadavg",
    "ms",
    "profile_async",
    "report_goal",
    "ssh_options",
    "start_hosts",
]


def ssh_options(hosts: TestHosts, **extra: Any) -> dict[str, Any]:
    """asyncssh client options for ``hosts`` (their known_hosts, the client key, the test user,
    no agent, no ~/.ssh/config), plus ``extra``. The same dict serves ``asyncssh.connect``,
    ``asyncjobs.connect`` and ``JobManager.invoke``: asyncjobs's client defaults (AES-GCM first
    on a CPU with AES instructions, keepalives) are written into it, so that the raw asyncssh
    yardstick negotiates the same cipher and sends the same keepalives as asyncjobs."""
    options: dict[str, Any] = with_client_defaults(dict(hosts.ssh_options()))
    options.update(extra)
    return options


@contextmanager
def start_hosts(count: int, *, load: bool = True) -> Iterator[TestHosts]:
    """``count`` sshd test hosts for the duration of the block (every sshd stopped after it);
    a clear message and exit status 2 when they cannot start (not root, no sshd)."""
    try:
        hosts = TestHosts(count, load=load).start()
    except TestHostsError as exc:
        print(f"cannot start the sshd test hosts: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        describe_hosts(hosts)
        print(f"  load average at start: {loadavg()} (other programs share these cores)")
        yield hosts
        print(f"  load average at end: {loadavg()}")
    finally:
        hosts.close()


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def describe_hosts(hosts: TestHosts) -> None:
    major, minor = sshd_version()
    first = hosts.hosts[0]
    print(
        f"  {hosts.count} sshd test host(s), OpenSSH {major}.{minor}, asyncssh "
        f"{asyncssh.__version__}, first {first.address}:{first.port}, "
        f"MaxSessions {hosts.max_sessions or 'default (10)'}, "
        f"MaxStartups {hosts.max_startups or 'default (10:30:100)'}, "
        f"started in {hosts.start_seconds or 0.0:.2f} s",
        flush=True,
    )


class Timer:
    """Wall and controller-CPU seconds of a block: ``with Timer() as t: ...`` then ``t.wall``,
    ``t.cpu`` (``time.process_time``: this process, all threads; the sshds are not counted)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._w = 0.0
        self._c = 0.0

    def __enter__(self) -> Timer:
        self._c = time.process_time()
        self._w = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def ms(values: Sequence[float]) -> list[float]:
    """Seconds to milliseconds."""
    return [v * 1000 for v in values]


def report_goal(
    what: str, value: float, goal: float, *, unit: str = "", at_least: bool = False
) -> str:
    """Print and return ``PASS``/``MISS`` for an absolute goal (``at_least``: a lower bound)."""
    if at_least:
        result = "PASS" if value >= goal else "MISS"
        print(f"  goal: {what} {value:.3f}{unit} >= {goal:g}{unit}: {result}")
    else:
        result = verdict(value, goal)
        print(f"  goal: {what} {value:.3f}{unit} <= {goal:g}{unit}: {result}")
    return result


def profile_async(
    title: str,
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
    body: Callable[[], Awaitable[Any]],
    *,
    top: int = 25,
) -> None:
    """Profile ``body`` with cProfile (``run`` drives it on an event loop) and print the hot
    spots: the top functions by own time, then asyncjobs' own functions by cumulative time."""
    print(f"== cProfile: {title}")
    prof = cProfile.Profile()

    async def profiled() -> Any:
        prof.enable()
        try:
            return await body()
        finally:
            prof.disable()

    run(profiled)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"asyncjobs[/\\]", top)
    print(out.getvalue())


def median_ms(values: Sequence[float]) -> float:
    """The median of ``values`` (seconds) in milliseconds."""
    return median(values) * 1000
