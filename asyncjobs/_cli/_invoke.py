"""``asyncjobs invoke``: run a command on many hosts and wait (Invoke-Command, pdsh).

Each line of output is printed as it comes, tagged with its host (``web01: up 3 days``):
output on stdout, the other streams on stderr. ``--fold`` gathers the output instead and prints
each distinct output once, under the hosts that produced it (dshbak -c, clush -b). A summary
table (hosts folded by result) goes to stderr at the end, so that stdout carries only what the
hosts printed; the exit status is the worst child's. On a terminal a status line counts the
hosts pending, running, done and failed.

Without ``-H`` the command runs on this machine's job host.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ._access import CLI_SESSION, Link, Where
from ._hosts import fold, target_text
from ._jobs import command_arg
from ._output import (
    Result,
    Screen,
    cli_message,
    exit_code,
    host_job_json,
    local_job_json,
    record_json,
)

if TYPE_CHECKING:
    from rich.live import Live

    from .._job import Job
    from .._models import Record
    from .._targets import Target

_RULE = "-" * 15
SUMMARY_COLUMNS = ("Hosts", "Count", "State", "ExitStatus", "Reason")

#: ``--stdin`` reads the command line's stdin once, into memory, and sends it to every host:
#: at most this much (the job host's frames, which carry it without ``-H``, hold 16 MiB).
STDIN_LIMIT = 8 << 20


def read_stdin() -> bytes:
    """``--stdin``: all of standard input, or a usage error past ``STDIN_LIMIT``."""
    import sys

    import click

    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        raise click.BadParameter("standard input is not available", param_hint="'--stdin'")
    data = stream.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise click.BadParameter(
            f"standard input is larger than {STDIN_LIMIT >> 20} MiB (it is held in memory to "
            "be sent to every host); copy big files to the hosts instead (scp, rsync, pdcp)",
            param_hint="'--stdin'",
        )
    return data


class Printer:
    """Where the records of an invoke go: the JSON document, the fold, or the screen."""

    def __init__(self, screen: Screen, result: Result, *, fold: bool) -> None:
        self.screen = screen
        self.result = result
        self.folding = fold
        self.folded: dict[str, list[str]] = {}
        self.live: Live | None = None

    def __call__(self, record: Record) -> None:
        if self.screen.json:
            self.result.records.append(record_json(record))
        elif self.folding and record.stream == "output":
            from ._output import value_text

            self.folded.setdefault(record.location, []).append(value_text(record.value))
        elif self.live is not None:
            from rich.text import Text

            from ._output import value_text

            style = "" if record.stream in ("output", "information") else "red"
            line = Text(f"{record.location}: ", style="cyan")
            line.append(value_text(record.value), style=style)
            self.live.console.print(line)
        else:
            self.screen.record(record, tag=record.location)

    def print_folded(self) -> None:
        groups: dict[tuple[str, ...], list[str]] = {}
        for location, lines in self.folded.items():
            groups.setdefault(tuple(lines), []).append(location)
        out = self.screen.out
        for output, hosts in groups.items():
            out.write(f"{_RULE}\n{fold(hosts)} ({len(hosts)})\n{_RULE}\n")
            out.write("".join(f"{line}\n" for line in output))


async def invoke_remote(
    screen: Screen,
    result: Result,
    targets: Sequence[Target],
    argv: Sequence[str],
    *,
    throttle: int,
    timeout: float | None,
    fail_fast: bool,
    folding: bool,
    ssh_options: dict[str, Any],
    input: bytes | None = None,
) -> None:
    """A fan-out (``JobManager.invoke``): a parent job with one child per host."""
    from .._manager import JobManager

    printer = Printer(screen, result, fold=folding)
    t0 = time.monotonic()
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            [target_text(t) for t in targets],
            command_arg(argv),
            throttle_limit=throttle,
            on_failure="fail_fast" if fail_fast else "continue",
            timeout=timeout,
            input=input,
            **ssh_options,
        )
        async with _status(screen, printer, lambda: _child_states(parent)):
            async for record in parent.stream_records(streams=None):
                printer(record)
        await parent.wait()
    elapsed = time.monotonic() - t0
    result.jobs.append(local_job_json(parent))
    result.exit_status = max(
        (exit_code(c.state, c.exit_status) for c in parent.children), default=0
    )
    if not screen.json:
        printer.print_folded()
        _summary(screen, parent.children, elapsed)


async def invoke_local(
    screen: Screen,
    result: Result,
    argv: Sequence[str],
    *,
    timeout: float | None,
    folding: bool,
    input: bytes | None = None,
) -> None:
    """Invoke-Command without a host: the command runs on this machine's job host, its
    output is followed, and the job is removed once it is received."""
    printer = Printer(screen, result, fold=folding)
    host = Link(Where())
    t0 = time.monotonic()
    async with host.session(CLI_SESSION, patient=True) as s:
        info = await s.jobs.start_command(command_arg(argv), input=input)
    states = {"state": info.state.value}
    try:
        async with host.session() as s, _status(screen, printer, lambda: [states["state"]]):
            with anyio.move_on_after(timeout) as scope:
                async for record in s.jobs.stream_records(info.id, streams=None):
                    printer(record)
        # A fresh session: a read cut off by the timeout may have left that one mid-frame.
        async with host.session() as s:
            if scope.cancelled_caught:
                await s.jobs.stop(info.id)
            info = await s.jobs.job(info.id)
            await s.jobs.remove(info.id, force=True)
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            async with host.session() as s:
                await s.jobs.remove(info.id, force=True)
        raise
    result.jobs.append(host_job_json(info))
    result.exit_status = exit_code(info.state, info.exit_status)
    if not screen.json:
        printer.print_folded()
        _summary_rows(
            screen,
            [(info.location, info.state.value, info.exit_status, info.reason)],
            time.monotonic() - t0,
        )


def _child_states(parent: Job) -> list[str]:
    return [child.state.value for child in parent.children]


@asynccontextmanager
async def _status(
    screen: Screen, printer: Printer, states: Callable[[], list[str]]
) -> AsyncIterator[None]:
    """On a terminal, a status line under the output: hosts pending, running, done, failed
    (redrawn by a task of ours, not rich's refresh thread)."""
    if not screen.live:
        yield
        return
    from rich.live import Live
    from rich.text import Text

    from ._jobs import _counts

    t0 = time.monotonic()

    def status() -> Text:
        return Text(f"{_counts(states())}  {time.monotonic() - t0:.1f} s", style="dim")

    with Live(status(), console=screen.console, auto_refresh=False, transient=True) as live:
        printer.live = live
        async with anyio.create_task_group() as tg:

            async def redraw() -> None:
                while True:
                    live.update(status(), refresh=True)
                    await anyio.sleep(0.1)

            tg.start_soon(redraw)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                printer.live = None


def _summary(screen: Screen, children: Sequence[Job], elapsed: float) -> None:
    rows = [
        (
            c.location,
            c.state.value,
            c.exit_status,
            None if c.reason is None else cli_message(c.reason),
        )
        for c in children
    ]
    _summary_rows(screen, rows, elapsed)


def _summary_rows(
    screen: Screen, rows: Sequence[tuple[str, str, int | None, str | None]], elapsed: float
) -> None:
    """The hosts folded by result (state, exit status, reason), on stderr, then the totals."""
    groups: dict[tuple[str, int | None, str | None], list[str]] = {}
    for location, state, status, reason in rows:
        groups.setdefault((state, status, reason), []).append(location)
    table = [
        [fold(hosts), str(len(hosts)), state, "-" if status is None else str(status), reason or ""]
        for (state, status, reason), hosts in groups.items()
    ]
    screen.table(SUMMARY_COLUMNS, table, err=True)
    tally: dict[str, int] = {}
    for _, state, _, _ in rows:
        tally[state] = tally.get(state, 0) + 1
    counts = ", ".join(f"{n} {state.lower()}" for state, n in tally.items())
    plural = "s" if len(rows) != 1 else ""
    screen.write(f"{len(rows)} host{plural}: {counts} in {elapsed:.2f} s", err=True)
