"""A short tour of asyncjobs: a thread job, a process job and a command job, then a Get-Job table.

Run it with ``scripts/demo`` (or ``.venv/bin/python examples/tour.py``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import anyio

import asyncjobs


def crunch(n: int) -> float:
    """CPU work in a thread: the return value is the job's one output item."""
    return sum(math.sqrt(i) for i in range(n))


def primes(limit: int) -> Iterator[int]:
    """A generator in a child process: each prime streams back as it is found."""
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            if n > 40:
                asyncjobs.emit(f"{n} is past 40", "warning")
            yield n


def _cut(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table(jobs: list[asyncjobs.Job]) -> str:
    """Get-Job's table: Id Name Kind State HasMoreData Location Command."""
    head = ("Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command")
    rows = [
        (
            str(j.id),
            j.name,
            j.kind,
            j.state.value,
            str(j.has_more_data),
            j.location,
            _cut(j.command),
        )
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main() -> None:
    async with asyncjobs.JobManager(thread_limit=4, process_limit=2) as jobs:
        t = await jobs.start_thread(crunch, 200_000, name="crunch")
        p = await jobs.start_process(primes, 50, name="primes")
        c = await jobs.start_command(
            [
                sys.executable,
                "-c",
                "import sys; print('hello from a command'); "
                "print('and a warning', file=sys.stderr)",
            ],
            name="hello",
        )
        done = await jobs.wait(t, p, c, any=True, timeout=30)
        print(f"first finished: {done[0].name}")

        print("primes as they stream:", [n async for n in p.stream()])
        print("crunch returned:", await t)
        await c.wait()
        print("\nGet-Job:")
        print(table(jobs.get()))
        print("\nhello's records:")
        for record in await c.receive_records():
            print(f"  seq {record.seq} {record.stream:<7} {record.value!r}")
        print("primes' warnings:", [r.value for r in await p.receive_records(streams=["warning"])])


if __name__ == "__main__":
    anyio.run(main)
