"""What every benchmark script shares: arguments, medians, side-by-side ratios, RSS, reporting.

Each benchmark runs the asyncjobs case and its yardstick alternately within one process
(A, B, A, B, ...) so that a noisy machine disturbs both alike; it reports medians over the
repeats, and the median of the per-repeat ratios (each ratio taken from a side-by-side pair).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence


def parser(description: str, *, backends: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=5, help="side-by-side repeats (default 5)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a number")
    if backends:
        p.add_argument(
            "--backend",
            choices=("asyncio", "trio"),
            default="asyncio",
            help="the event loop anyio runs on (default asyncio)",
        )
    return p


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def header(title: str, backend: str | None = None) -> None:
    cpus = os.cpu_count()
    bits = [
        f"python {platform.python_version()}",
        f"anyio {_version('anyio')}",
        f"{cpus} cpu",
    ]
    if backend is not None:
        bits.append(f"backend {backend}")
    print(f"== {title}  ({', '.join(bits)}, {time.strftime('%Y-%m-%d %H:%M')})")


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


def verdict(value: float, goal: float) -> str:
    """``PASS`` when ``value <= goal`` (every goal here is an upper bound)."""
    return "PASS" if value <= goal else "MISS"


def report_pair(
    what: str,
    ours: Sequence[float],
    theirs: Sequence[float],
    *,
    unit: str,
    yardstick: str,
    goal: float | None,
    lower_is_better: bool = True,
    cpu: tuple[Sequence[float], Sequence[float]] | None = None,
) -> float:
    """Print the medians of both sides and the median of per-repeat ratios; return that ratio.

    The ratio is ``asyncjobs / yardstick`` for times (lower is better) and
    ``yardstick / asyncjobs`` for rates (so in both cases 1.0 is parity and bigger is slower).
    """
    if lower_is_better:
        ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]
    else:
        ratios = [b / a for a, b in zip(ours, theirs, strict=True) if a > 0]
    ratio = median(ratios)
    print(f"  asyncjobs  {what}: median {median(ours):10.3f} {unit}   runs {_fmt(ours)}")
    print(f"  yardstick  {what}: median {median(theirs):10.3f} {unit}   runs {_fmt(theirs)}")
    print(f"             ({yardstick})")
    how = "asyncjobs/yardstick" if lower_is_better else "yardstick/asyncjobs"
    line = f"  ratio ({how}, median of per-repeat ratios): {ratio:.3f}   runs {_fmt(ratios)}"
    if goal is not None:
        line += f"   goal <= {goal:g}: {verdict(ratio, goal)}"
    else:
        line += "   (no goal)"
    print(line)
    if cpu is not None:
        cpu_ours, cpu_theirs = cpu
        cpu_ratios = [a / b for a, b in zip(cpu_ours, cpu_theirs, strict=True) if b > 0]
        cpu_ratio = median(cpu_ratios)
        print(
            f"  CPU time (robust to a loaded machine): asyncjobs median {median(cpu_ours):.3f} "
            f"{unit}, yardstick {median(cpu_theirs):.3f} {unit}, ratio {cpu_ratio:.3f}"
            f"   runs {_fmt(cpu_ratios)}"
            + (
                ""
                if goal is None
                else f"   (vs goal {goal:g}: {verdict(median(cpu_ratios), goal)})"
            )
        )
    return ratio


def _fmt(values: Sequence[float]) -> str:
    if len(values) > 10:
        q = statistics.quantiles(values, n=4)
        return (
            f"[n={len(values)}: min {min(values):.3g}, p25 {q[0]:.3g}, p75 {q[2]:.3g}, "
            f"max {max(values):.3g}]"
        )
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def rss_mb() -> float:
    """This process's resident set size now (``VmRSS``), in MiB."""
    return _status_kb("VmRSS") / 1024


def hwm_mb() -> float:
    """This process's peak resident set size (``VmHWM``), in MiB."""
    return _status_kb("VmHWM") / 1024


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def flush() -> None:
    sys.stdout.flush()


class CpuClock:
    """CPU seconds used by this process (all threads) and, with ``children``, by its child
    processes: live ones through psutil (10 ms ticks), reaped ones through
    ``getrusage(RUSAGE_CHILDREN)``. Unlike wall time, this barely moves when other programs load
    the machine.

    ``with CpuClock(children=True) as cpu: ...`` then ``cpu.seconds``.
    """

    def __init__(self, *, children: bool = False) -> None:
        self.children = children
        self.seconds = 0.0
        self._own = 0.0
        self._kids: dict[int, float] = {}

    def _snapshot(self) -> tuple[float, dict[int, float]]:
        kids: dict[int, float] = {}
        if self.children:
            import psutil

            for child in psutil.Process().children(recursive=True):
                try:
                    t = child.cpu_times()
                except psutil.Error:
                    continue
                kids[child.pid] = t.user + t.system
        own = time.process_time()
        if self.children:
            import resource

            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            own += r.ru_utime + r.ru_stime
        return own, kids

    def __enter__(self) -> CpuClock:
        self._own, self._kids = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        own, kids = self._snapshot()
        total = own - self._own
        for pid, used in kids.items():
            total += used - self._kids.get(pid, 0.0)
        self.seconds = total


#: One timed round of a benchmark side: ``(wall seconds, CPU seconds)``.
Round = Callable[[], Awaitable[tuple[float, float]]]


class Pairs:
    """What ``alternate`` measured, in milliseconds: walls and CPU times, one per repeat."""

    def __init__(self) -> None:
        self.ours: list[float] = []
        self.theirs: list[float] = []
        self.cpu_ours: list[float] = []
        self.cpu_theirs: list[float] = []


async def alternate(ours: Round, theirs: Round, repeats: int, *, yardstick: str) -> Pairs:
    """Run the asyncjobs round and the yardstick's alternately (A, B, A, B, ...) ``repeats``
    times, printing each pair as it comes; warm-ups are the caller's."""
    pairs = Pairs()
    sides = ((ours, pairs.ours, pairs.cpu_ours), (theirs, pairs.theirs, pairs.cpu_theirs))
    for i in range(repeats):
        for side, walls, cpus in sides:
            wall, cpu = await side()
            walls.append(wall * 1000)
            cpus.append(cpu * 1000)
        a, b = pairs.ours[-1], pairs.theirs[-1]
        print(
            f"  repeat {i + 1}/{repeats}: asyncjobs {a:8.1f} ms   {yardstick} {b:8.1f} ms   "
            f"ratio {a / b:.2f}",
            flush=True,
        )
    return pairs


#: Bytes per line of ``LINE_PRODUCER``'s output, newline included.
PRODUCER_LINE = 100

#: A program writing ``argv[1]`` bytes of 100-byte lines (``"x" * 99`` and a newline), about
#: 1 MiB of whole lines per write: the producer of the streaming benchmarks.
LINE_PRODUCER = r"""
import sys
total = int(sys.argv[1])
line = b"x" * 99 + b"\n"
block = line * 10485  # 1,048,500 bytes: about 1 MiB of whole lines
out = sys.stdout.buffer
while total >= len(block):
    out.write(block)
    total -= len(block)
out.write(line * (total // len(line)))
out.flush()
"""


def producer_argv(nbytes: int) -> list[str]:
    """argv running ``LINE_PRODUCER`` for ``nbytes`` bytes with this Python."""
    return [sys.executable, "-c", LINE_PRODUCER, str(nbytes)]
