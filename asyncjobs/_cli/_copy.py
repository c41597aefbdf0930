"""``asyncjobs copy`` and ``asyncjobs gather``: files to and from many hosts (pdcp, rpdcp;
Copy-Item -ToSession / -FromSession), over SFTP, a job per host (``JobManager.copy`` /
``JobManager.gather``).

Hosts are taken as ``invoke`` takes them (``-H`` with ranges, ``@groups``, ``@failed`` /
``@last``, ``--hostfile``, ``-x``, ``-o``, the connection flags: ``_options.targets_of``), and
the run is reported as ``invoke`` reports it: the status line (with the bytes moved), warnings
and errors on stderr tagged with their host, the summary table (``_summary``), the exit status
of the worst host (1 a host whose files failed, 255 one that could not be reached), Ctrl-C
stopping every host (130), and the hosts recorded for ``-H @failed`` (re-run what failed: a
copy is idempotent, each file replaced whole). Nothing is printed per file; ``--json`` has a
record per file (``output``: source, destination, bytes), the warnings and the errors.

Bad input is found before anything connects, exit status 2: a local source that is missing or
unreadable, a directory without ``-r``, a gather directory that can't be made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ._boundary import fail, run
from ._hosts import HostSyntaxError
from ._options import COMMAND, UsageError, hosts_options, ssh_dict, ssh_options, targets_of
from ._options import common as common_options

if TYPE_CHECKING:
    from .._core.job import Job
    from .._ssh.targets import Target
    from ._output import Result
    from ._terminal import Screen

F = TypeVar("F", bound=Callable[..., Any])
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size_of(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``--max-bytes``: a byte count, ``500``, ``64k``, ``100M``, ``2G`` (powers of 1024; a
    ``B``/``iB`` after the unit is allowed)."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = text.rstrip("kmgt"), text[len(text.rstrip("kmgt")) :]
    try:
        count = float(number)
    except ValueError:
        count = -1.0
    if unit not in _UNITS or not 0 <= count < float("inf"):
        raise click.BadParameter(f"{value!r} is not a size; write 500, 64k, 100M or 2G")
    return int(count * _UNITS[unit])


def _host_options(*extra: Callable[[Any], Any]) -> Callable[[F], F]:
    """The options both commands take beside the paths (invoke's, for hosts), then
    ``extra``, in invoke's order: -H first, the SSH options and --json last."""
    return lambda f: _options_of(f, extra)


def _options_of(f: F, extra: Sequence[Callable[[Any], Any]]) -> F:
    f = ssh_options(common_options(f))
    options: list[Callable[[Any], Any]] = [
        click.option("-r", "--recursive", is_flag=True, help="Copy directories, whole."),
        click.option(
            "--preserve", is_flag=True, help="Keep the mode and times exactly (as scp -p)."
        ),
        click.option(
            "--throttle",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="Hosts at once.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            metavar="N",
            help="Retry a host's connection N times (refused, reset, timed out; never auth).",
        ),
        click.option(
            "--max-startups",
            type=click.IntRange(min=1),
            metavar="N",
            help="SSH handshakes in flight at most, over all hosts (always <= 8 per address:port).",
        ),
        click.option("--fail-fast", is_flag=True, help="Stop every host once one fails."),
        *extra,
    ]
    for option in reversed(options):
        f = option(f)
    return hosts_options(f)


@click.command(context_settings=COMMAND)
@_host_options()
@click.argument("paths", metavar="SRC... DEST", nargs=-1, required=True)
def copy(paths: tuple[str, ...], hosts: tuple[str, ...], hostfile: tuple[str, ...],
         **options: Any) -> None:  # fmt: skip
    """Copy local files to every host, over SFTP (pdcp; Copy-Item -ToSession).

    As scp places them: into DEST if it is a directory there, else as DEST (one source). A
    DEST ending in / is a directory, made if missing. Each file is written beside its final
    name and renamed over it once whole; it gets its mode (less the host's umask), and with
    --preserve its exact mode and times. Relative paths on the host are from the login
    directory. The exit status is the worst host's: 1 if its files failed, 255 if it could
    not be reached.

    \b
      asyncjobs copy -H web[01-12] nginx.conf /etc/nginx/
      asyncjobs copy -H @web -x web03 -r --preserve site/ /srv/www/
      asyncjobs copy -H @failed nginx.conf /etc/nginx/    # the hosts that failed last time
    """
    _run("copy", paths, hosts, hostfile, options)


@click.command(context_settings=COMMAND)
@_host_options(
    click.option(
        "--max-bytes",
        metavar="SIZE",
        callback=size_of,
        help="Fail a host whose files add up to more than SIZE (100M, 2G), before fetching any.",
    )
)
@click.argument("paths", metavar="SRC... DIR", nargs=-1, required=True)
def gather(paths: tuple[str, ...], hosts: tuple[str, ...], hostfile: tuple[str, ...],
           **options: Any) -> None:  # fmt: skip
    """Fetch files from every host into DIR/<host>/, over SFTP (rpdcp; Copy-Item
    -FromSession).

    SRC is a path or a glob pattern matched on the host (quote it: '/var/log/*.log',
    'logs/**/*.gz'); a path lands under its last name, a match under its path below the
    pattern's last plain directory. <host> is the host as written, safe as a file name. No
    remote name leaves DIR/<host>/: a name with '..' or a symlink pointing out of the tree
    is skipped with a warning saying why.

    \b
      asyncjobs gather -H web[01-12] /var/log/nginx/error.log logs
      asyncjobs gather -H @db -r --max-bytes 2G '/var/lib/pg/log/*.csv' pglogs
    """
    _run("gather", paths, hosts, hostfile, options)


def _run(
    name: str,
    paths: Sequence[str],
    hosts: Sequence[str],
    hostfile: Sequence[str],
    options: dict[str, Any],
) -> None:
    ssh = {k: options.pop(k) for k in list(options) if k not in _OURS}
    if len(paths) < 2:
        last = "DEST" if name == "copy" else "DIR"
        fail(name, UsageError(f"{name} takes SRC... {last}: at least one source and the {last}"))
        return
    if not hosts and not hostfile:
        fail(name, UsageError(f"{name} needs hosts: give them with -H HOSTS or --hostfile FILE"))
        return
    try:
        chosen = targets_of(hosts, hostfile, ssh)
    except HostSyntaxError as exc:
        fail(name, exc)
        return
    run(name, transfer, name, chosen, list(paths[:-1]), paths[-1], ssh_options=ssh_dict(ssh),
        **options)  # fmt: skip


_OURS = frozenset(
    {"recursive", "preserve", "throttle", "retries", "max_startups", "fail_fast", "max_bytes"}
)


async def transfer(
    screen: Screen,
    result: Result,
    name: str,
    targets: Sequence[Target],
    sources: list[str],
    destination: str,
    *,
    ssh_options: dict[str, Any],
    recursive: bool,
    preserve: bool,
    throttle: int,
    retries: int,
    max_startups: int | None,
    fail_fast: bool,
    max_bytes: int | None = None,
) -> None:
    """One copy or gather: the parent job, its children followed, the summary."""
    import anyio

    from .._core.errors import JobArgumentError
    from .._core.state import JobState
    from .._local.manager import JobManager
    from ._hosts import target_text
    from ._invoke import _exit_status, _interrupts
    from ._output import INTERRUPTED, exit_code, local_job_json
    from ._retry import record
    from ._summary import summary
    from ._terminal import BLOCKS, run_status

    written = [target_text(t) for t in targets]
    common: dict[str, Any] = {
        "recursive": recursive, "preserve": preserve, "throttle_limit": throttle,
        "retries": retries, "max_startups": max_startups,
        "on_failure": "fail_fast" if fail_fast else "continue", **ssh_options,
    }  # fmt: skip
    t0 = time.monotonic()
    async with JobManager() as jobs:
        try:
            if name == "copy":
                parent = await jobs.copy(written, sources, destination, **common)
            else:
                parent = await jobs.gather(
                    written, sources, destination, max_bytes=max_bytes, **common
                )
        except JobArgumentError as exc:  # a local source or directory: before connecting
            raise UsageError(str(exc)) from None
        children = parent.children
        moved = _Moved(children)

        async def stop_on(interrupt: anyio.Event) -> None:
            await interrupt.wait()
            with anyio.CancelScope(shield=True):
                await parent.stop()

        with _interrupts() as interrupt:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_status, screen, lambda: moved.status(name, t0))
                    tg.start_soon(stop_on, interrupt)
                    async with anyio.create_task_group() as readers:
                        for child in children:
                            readers.start_soon(moved.follow, screen, result, child)
                    tg.cancel_scope.cancel()
            finally:
                BLOCKS.flush()
        await parent.wait()
    elapsed = time.monotonic() - t0
    await record(screen, parent, children, written)  # for -H @failed / @last
    result.jobs.append(local_job_json(parent))
    result.exit_status = _exit_status(children)
    if fail_fast and parent.state is JobState.FAILED:
        result.exit_status = exit_code(parent.state, parent.exit_status)
    if interrupt.is_set():
        result.exit_status = INTERRUPTED
    if not screen.json:
        summary(screen, children, elapsed, interrupted=interrupt.is_set())
        screen.write(moved.totals(name, elapsed), err=True)


class _Moved:
    """What the children have moved so far (their last progress records), and their
    records shown: warnings and errors tagged on stderr, everything but progress in --json."""

    def __init__(self, children: Sequence[Job]) -> None:
        self.children = children
        self.done: dict[int, tuple[int, int]] = {}  # job id -> (bytes done, total)
        self.files: dict[int, int] = {}

    async def follow(self, screen: Screen, result: Result, child: Job) -> None:
        from .._core.models import Progress
        from ._output import record_json

        async for record in child.stream_records(streams=None):
            value = record.value
            if isinstance(value, Progress):
                self.done[child.id] = (value.current or 0, value.total or 0)
                continue
            if record.stream == "output":
                self.files[child.id] = self.files.get(child.id, 0) + 1
            if screen.json:
                result.add_record(record_json(record, host=child.location))
            elif record.stream != "output":
                screen.record(record, tag=child.location)

    def status(self, name: str, t0: float) -> str:
        from ._invoke import _status_text

        done = sum(d for d, _ in self.done.values())
        total = sum(t for _, t in self.done.values())
        return f"{name} {size_text(done)} of {size_text(total)}  {_status_text(self.children, t0)}"

    def totals(self, name: str, elapsed: float) -> str:
        done = sum(d for d, _ in self.done.values())
        files = sum(self.files.values())
        hosts = len(self.children)
        verb = "copied" if name == "copy" else "gathered"
        rate = f", {size_text(done / elapsed)}/s" if elapsed > 0 and done else ""
        plural = "s" if hosts != 1 else ""
        return (
            f"{verb} {files} file{'s' if files != 1 else ''}, {size_text(done)} "
            f"({hosts} host{plural}){rate}"
        )


def size_text(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``256.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
