"""``asyncjobs invoke``: run a command on many hosts and wait (Invoke-Command, pdsh).

Each line of output is printed as it comes, tagged with its host (``web01: up 3 days``):
output on stdout, the other streams on stderr. ``--fold`` gathers the output instead and prints
each distinct output once, under the hosts that produced it (dshbak -c, clush -b). A summary
table (hosts folded by result) goes to stderr at the end, so that stdout carries only what the
hosts printed; the exit status is the worst child's. On a terminal a status line counts the
hosts pending, running, done and failed and names the ones still waited for.

Output is read from the hosts as raw chunks (``lines=False``), split and tagged here a chunk
at a time (``bytes.replace``, not a record per line) and written in blocks (``_output.Blocks``);
``--json`` numbers the lines as ``lines=True`` would and streams them out. Ctrl-C stops every
host, prints the summary of what finished, failed and was stopped, and exits 130.

``-N`` prints the lines without the host's tag (pdsh -N). ``--outdir DIR`` writes each host's
stdout and stderr to ``DIR/<host>.out`` and ``DIR/<host>.err`` instead, as they arrive (pssh -o;
``OutDir``), and only the summary is printed.

Without ``-H`` the command runs on this machine's job host.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio

from .._core.lines import LineSplitter
from .._core.state import JobState
from ._access import CLI_SESSION, Link, Where
from ._harness import Harness
from ._hosts import fold, target_text
from ._jobs import command_arg
from ._outdir import OutDir
from ._output import (
    INTERRUPTED,
    RecordLines,
    Result,
    exit_code,
    host_job_json,
    local_job_json,
    record_json,
)
from ._summary import SUMMARY_COLUMNS as SUMMARY_COLUMNS
from ._summary import reason_key as reason_key
from ._summary import summary as _summary
from ._summary import summary_rows as _summary_rows
from ._terminal import BLOCKS, Screen, run_status, state_counts, tag_bytes

if TYPE_CHECKING:
    from .._core.job import Job
    from .._core.models import Record
    from .._ssh.targets import Target

_RULE = "-" * 15
#: The status line names the hosts still waited for when there are at most this many.
NAMED_HOSTS = 5
#: What a host's output may hold in memory here before the host is made to wait (SSH flow
#: control, as ``ssh host cmd | slow`` would): bounded, nothing spilled to disk; less per host
#: when there are many (``ALL_HOSTS_BUFFER`` in all), never under ``MIN_HOST_BUFFER``.
HOST_BUFFER = 2 << 20
ALL_HOSTS_BUFFER = 256 << 20
MIN_HOST_BUFFER = 256 << 10
#: ``--json`` encodes a chunk this much at a time.
_JSON_SLICE = 64 << 10

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


def out_dir(directory: str | None, folding: bool, locations: Sequence[str]) -> OutDir | None:
    """``--outdir DIR``, its files made for every host (a usage error, before anything
    connects, if they can't be)."""
    import click

    if directory is None:
        return None
    if folding:
        raise click.BadParameter(
            "--fold gathers the output to print it and --outdir writes it to files: choose one",
            param_hint="'--outdir'",
        )
    files = OutDir(directory)
    try:
        files.prepare(locations)
    except OSError as exc:
        raise click.BadParameter(
            f"{exc.filename or directory}: {exc.strerror or exc}; give a directory you can "
            "write to (it is made if missing)",
            param_hint="'--outdir'",
        ) from None
    return files


def remote_only(**flags: object) -> None:
    """The flags that need ``-H`` (they are about SSH connections and remote commands)."""
    import click

    for name, value in flags.items():
        if value not in (None, 0):
            flag = "--" + name.replace("_", "-")
            raise click.BadParameter(
                f"{flag} is for hosts reached over SSH: give them with -H (without -H the "
                "command runs on this machine's job host)",
                param_hint=f"'{flag}'",
            )


def become_of(sudo: bool, user: str | None, ask_pass: bool) -> bool | str | None:
    """``--sudo [--sudo-user U] [--ask-pass]`` as ``invoke``'s ``become=``."""
    import click

    if not sudo:
        for flag, value in (("--sudo-user", user), ("--ask-pass", ask_pass)):
            if value:
                raise click.BadParameter(
                    f"{flag} is about sudo: give --sudo too", param_hint=f"'{flag}'"
                )
        return None
    if user is not None:
        from .._ssh.become import make_become

        try:
            make_become(user, None)
        except ValueError:
            raise click.BadParameter(
                f"{user!r} is not a user name for sudo -u (no spaces, no leading '-')",
                param_hint="'--sudo-user'",
            ) from None
        return user
    return True


def ask_password(targets: Sequence[Target]) -> str:
    """``--ask-pass``: sudo's password, read once on the terminal without echo (getpass:
    ``/dev/tty``, else a terminal on stdin); a usage error if there is no terminal to ask on.
    It goes to ``invoke``'s ``become_password=`` and nowhere else."""
    import getpass
    import os
    import sys
    import warnings

    import click

    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        if sys.stdin is None or not sys.stdin.isatty():
            raise click.BadParameter(
                "there is no terminal to ask on (no /dev/tty, stdin is not one); run it from a "
                "terminal, or give the hosts a NOPASSWD sudoers rule and drop --ask-pass",
                param_hint="'--ask-pass'",
            ) from None
    hosts = fold([t.location for t in targets])
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)  # never with echo
        try:
            return getpass.getpass(f"[sudo] password on {hosts}: ")
        except getpass.GetPassWarning:
            raise click.BadParameter(
                "can't turn echo off on this terminal to ask for the password",
                param_hint="'--ask-pass'",
            ) from None


class _Host:
    """What is known of one host's output while it is followed: its tags, and for each stream
    the unfinished line (``LineSplitter``: the same rules as ``lines=True``)."""

    __slots__ = ("folded", "json", "location", "split", "stem", "tags")

    def __init__(
        self, child: Job, *, colour: tuple[bool, bool], json: bool, prefix: bool = True
    ) -> None:
        self.location = child.location
        self.stem = ""
        self.split = {"output": LineSplitter(), "error": LineSplitter()}
        self.tags = {
            "output": tag_bytes(child.location, colour=colour[0]) if prefix else b"",
            "error": tag_bytes(child.location, colour=colour[1], error=True) if prefix else b"",
        }
        self.json = RecordLines(child.id, child.location) if json else None
        self.folded = bytearray()


class Output:
    """Where the records of an invoke go: the JSON document, the fold, or the screen."""

    def __init__(
        self,
        screen: Screen,
        result: Result,
        *,
        fold: bool,
        prefix: bool = True,
        outdir: OutDir | None = None,
    ) -> None:
        self.screen = screen
        self.result = result
        self.folding = fold and not screen.json and outdir is None
        self.prefix = prefix  # -N: False
        self.outdir = outdir
        self.colour = (screen.colour(), screen.colour(err=True))
        self.hosts: list[_Host] = []
        result.lines = screen.json_lines

    async def follow(self, child: Job) -> None:
        """One host's records until it is finished and every record is read; then its last
        unfinished lines."""
        host = _Host(child, colour=self.colour, json=self.screen.json, prefix=self.prefix)
        if self.outdir is not None:
            host.stem = self.outdir.stem(host.location)
        self.hosts.append(host)
        try:
            async for record in child.stream_records(streams=None):
                self.take(host, record)
        finally:
            if self.outdir is not None:
                self.outdir.close(host.stem)
            self.end(host)

    def take(self, host: _Host, record: Record) -> None:
        value = record.value
        stream = record.stream
        if self.outdir is not None:  # raw, as it came: no splitting, no tags
            self.outdir.write(host.stem, stream, value)
            return
        if not isinstance(value, bytes) or stream not in host.split:
            if host.json is not None:
                self.result.add_records(host.json.encode(stream, [value], record.time))
            else:
                self.screen.record(record, tag=host.location if self.prefix else None)
            return
        split = host.split[stream]
        if host.json is not None:  # a slice at a time: a chunk may be 1 MiB of short lines
            for start in range(0, len(value), _JSON_SLICE):
                lines = split.feed(value[start : start + _JSON_SLICE])
                self.result.add_records(host.json.encode(stream, lines, record.time))
        elif self.folding and stream == "output":
            host.folded += value
        else:
            body, cut = split.feed_body(value)
            tag = host.tags[stream]
            parts = []
            if body is not None:
                parts += [tag, body.replace(b"\n", b"\n" + tag), b"\n"]
            for piece in cut:  # an unfinished line past _lines.MAX_LINE, in pieces
                parts += [tag, _encoded(piece), b"\n"]
            self._write(stream, b"".join(parts))

    def end(self, host: _Host) -> None:
        for stream, split in host.split.items():
            tail = split.flush()
            if tail is None:
                continue
            if host.json is not None:
                self.result.add_records(host.json.encode(stream, [tail], time.time()))
            else:
                self._write(stream, b"".join((host.tags[stream], _encoded(tail), b"\n")))

    def local(self, record: Record) -> None:
        """A record of a job on the job host (a line already)."""
        if self.outdir is not None:
            value = record.value
            if record.stream in ("output", "error") and isinstance(value, str | bytes):
                value = _encoded(value) + b"\n"  # a line already: its end again
            self.outdir.write(self.outdir.stem(record.location), record.stream, value)
        elif self.screen.json:
            self.result.add_record(record_json(record))
        elif self.folding and record.stream == "output":
            key = record.location
            for host in self.hosts:
                if host.location == key:
                    break
            else:
                host = _Host.__new__(_Host)
                host.location, host.folded = key, bytearray()
                self.hosts.append(host)
            host.folded += _encoded(record.value) + b"\n"
        else:
            self.screen.record(record, tag=record.location if self.prefix else None)

    def close(self) -> None:
        """Close the files of ``--outdir`` still open (the job host's own job)."""
        if self.outdir is not None:
            self.outdir.close_all()

    def _write(self, stream: str, data: bytes) -> None:
        BLOCKS.add(self.screen.out if stream == "output" else self.screen.err, data)

    def print_folded(self) -> None:
        if not self.folding:
            return
        groups: dict[bytes, list[str]] = {}
        for host in self.hosts:
            if host.folded:
                groups.setdefault(bytes(host.folded), []).append(host.location)
        for output, hosts in groups.items():
            head = f"{_RULE}\n{fold(hosts)} ({len(hosts)})\n{_RULE}\n".encode()
            end = b"" if output.endswith(b"\n") else b"\n"
            BLOCKS.add(self.screen.out, head + output + end)
        BLOCKS.flush()


def _encoded(line: Any) -> bytes:
    return line if isinstance(line, bytes) else str(line).encode("utf-8", "surrogateescape")


@contextmanager
def _interrupts() -> Iterator[anyio.Event]:
    """Ctrl-C (SIGINT) sets the event instead of raising: the caller stops the work and
    reports; a second Ctrl-C raises ``KeyboardInterrupt`` as usual."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    event = anyio.Event()

    def interrupted() -> None:
        if event.is_set():
            loop.remove_signal_handler(signal.SIGINT)
            raise KeyboardInterrupt
        event.set()

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        yield event
        return
    try:
        yield event
    finally:
        loop.remove_signal_handler(signal.SIGINT)


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
    retries: int = 0,
    idle_timeout: float | None = None,
    max_startups: int | None = None,
    prefix: bool = True,
    outdir: OutDir | None = None,
    become: bool | str | None = None,
    become_password: str | None = None,
    persist: float | None = None,
    harness: Harness | None = None,
) -> None:
    """A fan-out (``JobManager.invoke``): a parent job with one child per host; ``become``
    and ``become_password``: through sudo (``--sudo``, ``--ask-pass``). ``persist``: run it
    on the local job host's held connections (``_remote.warm``), kept that long after."""
    from contextlib import AsyncExitStack

    from .._core.models import Buffer
    from .._local.manager import JobManager
    from ._warm import for_the_job_host, warm_engine

    output = Output(screen, result, fold=folding, prefix=prefix, outdir=outdir)
    t0 = time.monotonic()
    async with AsyncExitStack() as stack:
        engine = None
        harness = harness or Harness()
        harness.check(screen)
        if harness != Harness():  # --clock, --parse json, --probe: measured from here
            persist = None
        if persist is not None and not become:  # sudo's password never goes to the job host
            # Entered first, left last: the link outlives the children that mirror its run.
            engine = await warm_engine(screen, stack, persist)
            if engine is not None:
                ssh_options = for_the_job_host(ssh_options)
        jobs = await stack.enter_async_context(JobManager())
        parent = await jobs.invoke(
            [target_text(t) for t in targets],
            command_arg(argv),
            throttle_limit=throttle,
            on_failure="fail_fast" if fail_fast else "continue",
            timeout=timeout,
            buffer=Buffer(max_items=None, max_bytes=_host_buffer(len(targets)), mode="block"),
            **harness.invoke_options(),  # lines=False (raw chunks) unless --parse
            input=input,
            retries=retries,
            idle_timeout=idle_timeout,
            max_startups=max_startups,
            become=become,
            become_password=become_password,
            engine=engine,
            **ssh_options,
        )
        children = parent.children

        async def stop_on(interrupt: anyio.Event) -> None:
            await interrupt.wait()
            with anyio.CancelScope(shield=True):
                await parent.stop()

        with _interrupts() as interrupt:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_status, screen, lambda: _status_text(children, t0))
                    tg.start_soon(stop_on, interrupt)
                    async with anyio.create_task_group() as readers:
                        follow = harness.follower(screen) if harness.parse else output.follow
                        for child in children:
                            readers.start_soon(follow, child)
                    tg.cancel_scope.cancel()
            finally:
                BLOCKS.flush()
        await parent.wait()
    elapsed = time.monotonic() - t0
    from ._retry import record  # for -H @failed / @last

    await record(screen, parent, children, [target_text(t) for t in targets])
    result.jobs.append(local_job_json(parent))
    result.exit_status = _exit_status(children)
    if fail_fast and parent.state is JobState.FAILED:  # the first real failure's, not 143
        result.exit_status = exit_code(parent.state, parent.exit_status)
    if interrupt.is_set():
        result.exit_status = INTERRUPTED
    harness.print_facts(screen, children)
    if not screen.json:
        output.print_folded()
        _summary(screen, children, elapsed, interrupted=interrupt.is_set())


def _host_buffer(hosts: int) -> int:
    return max(MIN_HOST_BUFFER, min(HOST_BUFFER, ALL_HOSTS_BUFFER // max(hosts, 1)))


def _exit_status(children: Sequence[Job]) -> int:
    """The worst child's exit status."""
    return max((exit_code(c.state, c.exit_status) for c in children), default=0)


async def invoke_local(
    screen: Screen,
    result: Result,
    argv: Sequence[str],
    *,
    timeout: float | None,
    folding: bool,
    input: bytes | None = None,
    prefix: bool = True,
    outdir: OutDir | None = None,
    harness: Harness | None = None,
) -> None:
    """Invoke-Command without a host: the command runs on this machine's job host, its
    output is followed, and the job is removed once it is received."""
    output = Output(screen, result, fold=folding, prefix=prefix, outdir=outdir)
    harness = harness or Harness()
    harness.check(screen)
    show = harness.local_printer(screen) if harness.parse else output.local  # --parse json
    host = Link(Where())
    t0 = time.monotonic()
    import os

    async with host.session(CLI_SESSION, patient=True) as s:
        # Here, with this environment, as a local start (see ``_jobs.start``).
        info = await s.jobs.start_command(
            command_arg(argv), input=input, cwd=os.getcwd(), env=dict(os.environ)
        )
    location = info.location
    if outdir is not None:
        outdir.stem(location)  # its files, even if it prints nothing
    try:
        with _interrupts() as interrupt:
            try:
                async with host.session() as s, anyio.create_task_group() as tg:
                    status = f"running 1  {{:.1f}} s  waiting for {location}"
                    tg.start_soon(run_status, screen, lambda: status.format(time.monotonic() - t0))
                    with anyio.move_on_after(timeout) as scope:

                        async def cancel_on(interrupt: anyio.Event) -> None:
                            await interrupt.wait()
                            scope.cancel()

                        tg.start_soon(cancel_on, interrupt)
                        async for record in s.jobs.stream_records(info.id, streams=None):
                            show(record)
                    tg.cancel_scope.cancel()
            finally:
                output.close()
                BLOCKS.flush()
        # A fresh session: a read cut off by the timeout may have left that one mid-frame.
        async with host.session() as s:
            if scope.cancel_called:
                await s.jobs.stop(info.id)
            info = await s.jobs.job(info.id)
            await s.jobs.remove(info.id, force=True)
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            async with host.session() as s:
                await s.jobs.remove(info.id, force=True)
        raise
    result.jobs.append(host_job_json(info))
    result.exit_status = (
        INTERRUPTED if interrupt.is_set() else exit_code(info.state, info.exit_status)
    )
    if not screen.json:
        output.print_folded()
        _summary_rows(
            screen,
            [(info.location, info.state.value, info.exit_status, info.reason)],
            time.monotonic() - t0,
            interrupted=interrupt.is_set(),
            command=info.command,
        )


def _status_text(children: Sequence[Job], t0: float) -> str:
    """``pending 0  running 2  done 9  failed 1  3.2 s  waiting for web03 web07``: the hosts
    still pending or running by name when they are few, else folded."""
    states = [c.state.value for c in children]
    waiting = [c.location for c in children if not c.state.is_finished]
    text = f"{state_counts(states)}  {time.monotonic() - t0:.1f} s"
    if waiting:
        names = " ".join(waiting) if len(waiting) <= NAMED_HOSTS else fold(waiting)
        text += f"  waiting for {names}"
    return text
