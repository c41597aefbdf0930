"""The job commands on many hosts (issue 14 item 8): ``start``, ``get``, ``wait``, ``receive``,
``stop`` and ``remove`` with ``-H HOSTS`` as ``invoke`` takes them (ranges, ``@group``,
``@failed``/``@last``, ``--hostfile``, ``-x``, ``-o``).

As in PowerShell's ``Invoke-Command -ComputerName ... { Start-Job ... }``, each host's job runs
on that host's job host and stays there: the command's part (``_jobs``) runs on every host, at
most ``--throttle`` at once, and what they got is printed together, in the order of the hosts:
one job table with a ``Host`` column, records tagged with their host, ``"host"`` in every JOB
and RECORD of ``--json``. A job id is per job host, so ``wait 3 -H web[01-04]`` is job 3 of
each host; ``--name`` picks jobs by name on each host, the way to follow a job started on many
hosts (``start --name deploy -H ...``, then ``wait --name deploy -H ...``).

One host's failure (unreachable, no such job) is that host's: a row of the summary on stderr,
an entry of ``failures`` in ``--json``, and the exit status (the worst host's), never the end
of the others. With one host, or none (this machine's job host), a command is as it always was:
no ``Host`` column, and a host that fails is the command's error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from ._boundary import describe, fail, run, say
from ._hosts import HostSyntaxError
from ._options import DEBUG, check_local, ssh_dict, targets_of

if TYPE_CHECKING:
    from ._access import Where
    from ._jobs import Part
    from ._output import Result
    from ._terminal import Screen

F = TypeVar("F", bound=Callable[..., Any])

#: Hosts at once, by default (as ``invoke --throttle``).
THROTTLE: Final = 32
#: The summary's columns: hosts folded by exit status and reason.
SUMMARY_COLUMNS: Final = ("Hosts", "Count", "ExitStatus", "Reason")
#: The status line names the hosts still waited for when there are at most this many.
NAMED_HOSTS: Final = 5
_HOSTS_HELP: Final = (
    "The job hosts of these hosts, over SSH (default: this machine's): web1,web2, web[01-12], "
    "user@db[1-3]:2222, @group, @failed, '-' for stdin (repeatable). Each host's jobs are its "
    "own: an ID is a job of each host; --name picks jobs by name on each."
)


def job_hosts(f: F) -> F:
    """``-H``/``-w``/``--hosts`` (``--host`` too) HOSTS, ``--hostfile`` and ``--throttle``."""
    f = click.option(
        "--throttle",
        type=click.IntRange(min=1),
        default=THROTTLE,
        show_default=True,
        metavar="N",
        help="Hosts at once.",
    )(f)
    f = click.option(
        "--hostfile",
        multiple=True,
        metavar="FILE",
        help="Hosts, one per line, # comments; '-': stdin.",
    )(f)
    return click.option(
        "-H", "-w", "--hosts", "--host", "hosts", multiple=True, metavar="HOSTS", help=_HOSTS_HELP
    )(f)


def wheres_of(hosts: Sequence[str], hostfiles: Sequence[str], ssh: dict[str, Any]) -> list[Where]:
    """The job hosts of ``-H`` and ``--hostfile`` (less ``-x``), each reached with the SSH
    options; none named: this machine's. A bad host list is a ``HostSyntaxError``."""
    from ._access import Where

    if not hosts and not hostfiles:
        check_local(ssh)
        return [Where()]
    chosen = targets_of(hosts, hostfiles, ssh)
    options = ssh_dict(ssh)
    return [Where(target, options) for target in chosen]


def run_jobs(
    name: str,
    body: Callable[..., Awaitable[None]],
    options: dict[str, Any],
    /,
    *args: Any,
    table: bool = True,
    first_wins: bool = False,
    pick: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Run the part ``body`` (of ``_jobs``: ``body(part, *args, **kwargs)``) on every host
    that ``options`` (the command's: ``hosts``, ``hostfile``, ``throttle`` and the SSH ones)
    name, or on this machine's job host. ``table``: print the parts' jobs; ``first_wins``
    (``wait --any``): a job finished on one host is enough, the others' timeouts are not;
    ``pick``: the filters (``--name``, ``--state``) that stand instead of the job ids
    (``args[0]``), one or the other (a usage error else)."""
    hosts, hostfiles = options.pop("hosts"), options.pop("hostfile")
    throttle = options.pop("throttle")
    if pick is not None:
        _one_of(name, args[0], pick)
    try:
        wheres = wheres_of(hosts, hostfiles, options)
    except HostSyntaxError as exc:
        fail(name, exc)
        return

    async def part(each: Part) -> None:
        await body(each, *args, **kwargs)

    run(name, across, wheres, part, throttle=throttle, table=table, first_wins=first_wins)


def _one_of(name: str, ids: Sequence[int], filters: dict[str, Any]) -> None:
    """Job ids or filters, one of the two: a usage error (exit status 2) else."""
    given = [f"--{key}" for key, value in filters.items() if value is not None]
    if ids and given:
        raise click.UsageError(f"{name} takes job IDs or {' / '.join(given)}, not both")
    if not ids and not given:
        options = " or ".join(f"--{key} {key.upper()}" for key in filters)
        raise click.UsageError(f"{name} needs job IDs or {options}")


async def across(
    screen: Screen,
    result: Result,
    wheres: Sequence[Where],
    body: Callable[[Part], Awaitable[None]],
    *,
    throttle: int,
    table: bool = True,
    first_wins: bool = False,
) -> None:
    """``body`` on every job host of ``wheres`` (one: as before, its error the command's), then
    what the parts got: the jobs, the failures, the exit status (the worst host's)."""
    from ._jobs import TIMED_OUT, Part
    from ._terminal import BLOCKS

    many = len(wheres) > 1
    parts = [Part(where, screen, alone=not many) for where in wheres]
    result.lines = screen.json_lines
    for part in parts:
        part.emit = _emitter(screen, result, part.host, tag=many)
    try:
        if many:
            await _fan_out(screen, parts, body, throttle)
        else:
            await body(parts[0])
    finally:
        BLOCKS.flush()
    if first_wins and any(part.jobs for part in parts):
        for part in parts:
            if part.exit_status == TIMED_OUT:
                part.exit_status, part.note = 0, ""
    _report(screen, result, parts, many=many, table=table)


def _emitter(
    screen: Screen, result: Result, host: str | None, *, tag: bool
) -> Callable[[Any], None]:
    """How a part's records are printed: into the ``--json`` document with their host, or on
    the screen (tagged with the host when there are several)."""
    from ._output import record_json

    if screen.json or screen.json_lines:
        return lambda record: result.add_record(record_json(record, host))
    label = host if tag else None
    return lambda record: screen.record(record, tag=label)


async def _fan_out(
    screen: Screen, parts: Sequence[Part], body: Callable[[Part], Awaitable[None]], throttle: int
) -> None:
    """Every part at once, at most ``throttle`` running; a part's error is kept in it, the
    others go on. A status line on a terminal."""
    import anyio

    from ._terminal import run_status

    limiter = anyio.CapacityLimiter(throttle)
    t0 = time.monotonic()

    async def one(part: Part) -> None:
        async with limiter:
            part.state = "Running"
            try:
                await body(part)
            except Exception as exc:
                part.error = _leaf(exc)
            part.state = "Failed" if part.error or part.failures else "Completed"

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_status, screen, lambda: _status_text(parts, t0))
        async with anyio.create_task_group() as hosts:
            for part in parts:
                part.stop_others = hosts.cancel_scope.cancel
                hosts.start_soon(one, part)
        tg.cancel_scope.cancel()


def _leaf(exc: BaseException) -> Exception:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _status_text(parts: Sequence[Part], t0: float) -> str:
    """``hosts: pending 0  running 2  done 9  failed 1  3.2 s  waiting for web03 web07``."""
    from ._hosts import fold
    from ._terminal import state_counts

    waiting = [part.host or "localhost" for part in parts if part.state == "Running"]
    text = f"hosts: {state_counts(part.state for part in parts)}  {time.monotonic() - t0:.1f} s"
    if waiting:
        names = " ".join(waiting) if len(waiting) <= NAMED_HOSTS else fold(waiting)
        text += f"  waiting for {names}"
    return text


def _report(
    screen: Screen, result: Result, parts: Sequence[Part], *, many: bool, table: bool
) -> None:
    """The parts' jobs (a table with a ``Host`` column when there are many hosts), their
    failures (``--json`` ``failures``; one line each, or with many hosts the summary) and the
    exit status: the worst host's, at least 1 for a host that failed."""
    from ._terminal import JOB_COLUMNS, JOB_FLEXIBLE, job_rows
    from ._text import cli_message, error_json

    jobs = [job for part in parts for job in part.jobs]
    result.jobs.extend(jobs)
    if table and jobs and not screen.json:
        rows = job_rows(jobs)
        if many:
            hosts = [job["host"] or "localhost" for job in jobs]
            screen.table(
                ("Host", *JOB_COLUMNS),
                [[host, *row] for host, row in zip(hosts, rows, strict=True)],
                flexible=JOB_FLEXIBLE,
            )
        else:
            screen.table(JOB_COLUMNS, rows, flexible=JOB_FLEXIBLE)
    failed: list[tuple[Part, int | None, Exception]] = []
    for part in parts:
        if part.error is not None:
            failed.append((part, None, part.error))
        failed.extend((part, job_id, exc) for job_id, exc in part.failures)
    for part, job_id, exc in failed:
        result.failures.append({"host": part.host, "id": job_id, **error_json(exc)})
    if failed and result.error is None:
        result.error = error_json(failed[0][2])
    statuses = [max(p.exit_status, 1 if p.error is not None or p.failures else 0) for p in parts]
    result.exit_status = max(statuses, default=0)
    if click.get_current_context().meta.get(DEBUG):
        import traceback

        for _, _, exc in failed:
            traceback.print_exception(exc)
    if not many or screen.json:
        for part, _, exc in failed:
            text = describe(exc, cli_message(exc))
            say(text if not many or _names_host(text, part.host) else f"{part.host}: {text}")
    elif any(statuses):
        _summary(screen, parts, statuses)


def _names_host(text: str, host: str | None) -> bool:
    return host is None or text.startswith(f"host {host}")


def _summary(screen: Screen, parts: Sequence[Part], statuses: Sequence[int]) -> None:
    """On stderr: the hosts folded by exit status and reason (invoke's grouping: a reason
    without its host), then the totals."""
    from ._hosts import fold
    from ._invoke import reason_key
    from ._text import cli_message

    groups: dict[tuple[int, str], tuple[list[str], str]] = {}
    for part, status in zip(parts, statuses, strict=True):
        host = part.host or "localhost"
        if part.error is not None:
            reasons = [cli_message(part.error)]
        else:
            reasons = [cli_message(exc) for _, exc in part.failures] or [part.note]
        for reason in reasons:
            key, shown = reason_key(host, reason)
            groups.setdefault((status, key), ([], shown))[0].append(host)
    rows = [
        [fold(hosts), str(len(hosts)), str(status), shown if len(hosts) == 1 else key]
        for (status, key), (hosts, shown) in groups.items()
    ]
    screen.table(SUMMARY_COLUMNS, rows, err=True, style_column=None, flexible=("Reason",))
    tally: dict[str, int] = {}
    for status in statuses:
        word = {0: "ok", 1: "failed", 124: "timed out"}.get(status, f"exit status {status}")
        tally[word] = tally.get(word, 0) + 1
    counts = ", ".join(f"{n} {word}" for word, n in tally.items())
    screen.write(f"{len(parts)} hosts: {counts}", err=True)
