"""The job commands on one job host: start, get, receive, wait, stop, remove, session.

Each of start, get, receive, wait, stop and remove is a *part*: an async function of a
``Part`` (one job host, this machine's or one reached over SSH, and what the command got
there) and the command's arguments. ``_many`` runs a part on every host of ``-H`` and prints
what the parts got; the session commands (one job host) are whole commands here, async
functions of a ``Screen`` (where people's output goes), a ``Result`` (the ``--json`` document
and the exit status) and their arguments.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._core.errors import AsyncJobsError, JobStateError, NoSuchJob
from ._access import CLI_SESSION, Where, link
from ._output import Result, exit_code, host_job_json, session_json
from ._terminal import (
    SESSION_COLUMNS,
    SESSION_FLEXIBLE,
    Screen,
    run_status,
    session_rows,
    state_counts,
)

if TYPE_CHECKING:
    from .._core.models import Record
    from .._host.client import HostJobInfo, HostJobs

#: ``wait`` and ``--timeout`` ran out before the jobs finished (as ``timeout(1)`` says it).
TIMED_OUT = 124
#: What ``--env`` accepts as a variable name (POSIX: letters, digits, ``_``; no digit first).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A job of several that a command could not act on (the others it did): reported, not raised.
JOB_FAULTS = (NoSuchJob, JobStateError)


def command_arg(argv: Sequence[str]) -> str | list[str]:
    """One word is a shell command line (``"make && make test"``); more are an argv."""
    return argv[0] if len(argv) == 1 else list(argv)


def _nothing() -> None:
    pass


@attrs.define(eq=False)
class Part:
    """One job host's part of a job command: where it is, and what the command got there.

    ``jobs`` in the ``--json`` job shape; ``failures``, the jobs of several that it could not
    act on (``(id, error)``: the others it did); ``exit_status``, this host's; ``note``, why
    that is not 0 when no error says it. A part that raises fails as a whole (``_many``
    keeps the error). ``emit`` prints a record (with the host's tag when there are many);
    ``alone``: the only host, so its own status line; ``stop_others`` ends the other hosts'
    parts (``wait --any``: one job finished)."""

    where: Where
    screen: Screen
    alone: bool = True
    jobs: list[dict[str, Any]] = attrs.Factory(list)
    failures: list[tuple[int | None, Exception]] = attrs.Factory(list)
    exit_status: int = 0
    note: str = ""
    error: Exception | None = None
    state: str = "NotStarted"
    emit: Callable[[Record], None] = print
    stop_others: Callable[[], None] = _nothing

    @property
    def host(self) -> str | None:
        """The host as ``-H`` named it (its location), or None for this machine's job host."""
        return None if self.where.target is None else self.where.target.location

    def add(self, info: HostJobInfo) -> None:
        self.jobs.append(host_job_json(info, self.host))


def env_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``--env K=V`` options as a mapping (the last one of a name wins); a malformed one is a
    usage error naming it."""
    import click

    overrides: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key or not _NAME.fullmatch(key) or "\0" in value:
            raise click.BadParameter(
                f"{pair!r} is not K=V (a variable name, '=', then its value, maybe empty)",
                param_hint="'--env'",
            )
        overrides[key] = value
    return overrides


def job_directory(cwd: str | None, *, remote: bool) -> str | None:
    """``--cwd``: here, an existing directory (relative to this one), made absolute; with
    ``-H`` a path on that host, left for its job host to check."""
    if remote or cwd is None:
        return cwd
    import os

    import click

    path = os.path.abspath(cwd)
    if not os.path.isdir(path):
        problem = "is not a directory" if os.path.exists(path) else "does not exist"
        raise click.BadParameter(f"{path!r} {problem}", param_hint="'--cwd'")
    return path


async def _chosen(jobs: HostJobs, ids: Sequence[int], name: str | None) -> list[int]:
    """The jobs a command names on a host: ``ids`` (each must be there), or those whose name
    matches ``name`` (at least one must)."""
    if name is None:
        for job_id in ids:
            await jobs.job(job_id)  # an unknown id fails here, before anything is done
        return list(ids)
    found = await jobs.get(name=name)
    if not found:
        raise NoSuchJob(f"no job named {name!r} on this job host; 'asyncjobs get' lists them")
    return [info.id for info in found]


# -- the parts ------------------------------------------------------------------------------


async def start(
    part: Part,
    argv: Sequence[str],
    *,
    name: str | None,
    session: str | None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Start-Job on the host; returns once the job runs. On this machine it runs where and
    with what the caller has (its directory, its whole environment), as ``nohup`` would;
    ``cwd`` and ``env`` say otherwise. On a remote job host it runs as ``ssh`` would run it
    there (the user's home and environment), ``cwd`` and ``env`` applied to that."""
    import os

    if part.where.target is None:
        cwd = cwd or os.getcwd()
        # Sent whole: the job host adds it to its own environment (which is whatever the
        # program that first started the host had), so the caller's values win.
        env = {**os.environ, **(env or {})}
    async with link(part.where) as host, host.session(session or CLI_SESSION, patient=True) as s:
        part.add(await s.jobs.start_command(command_arg(argv), name=name, cwd=cwd, env=env or None))


async def get(part: Part, *, name: str | None, state: str | None, kind: str | None = None) -> None:
    """Get-Job: the host's jobs, every session's (this machine's read from its store)."""
    jobs = None
    if part.where.target is None:
        from .._host.directory import STORE, host_dir
        from ._fastget import local_jobs, read_jobs

        jobs = local_jobs(host_dir(), name=name, state=state, kind=kind)
    if jobs is None:
        async with link(part.where) as host, host.session() as s:
            if part.where.target is None:  # the host is up now (started if need be): read its store
                jobs = read_jobs(host_dir() / STORE, name=name, state=state, kind=kind)
            if jobs is None:
                found = await s.jobs.get(name=name, state=state, kind=kind)
                jobs = [host_job_json(j, part.host) for j in found]
    part.jobs.extend(jobs)


async def receive(
    part: Part,
    ids: Sequence[int],
    *,
    name: str | None,
    keep: bool,
    wait: bool,
    from_seq: int | None = None,
) -> None:
    """Receive-Job: the records not yet received (all seven streams, in order) of each job,
    one job after another; ``from_seq``: every record from that seq on, received or not,
    consuming nothing; ``wait`` follows each job until it is finished, and the exit status is
    the worst job's."""
    async with link(part.where) as host, host.session() as s:
        chosen = await _chosen(s.jobs, ids, name)
        worst = 0
        for job_id in chosen:
            if from_seq is not None:
                if wait:
                    await _follow(part, s.jobs, job_id, from_seq)
                else:
                    for record in await s.jobs.read(job_id, from_seq):
                        part.emit(record)
            elif not wait:
                for record in await s.jobs.receive_records(job_id, keep=keep):
                    part.emit(record)
            elif keep:
                await _follow_keeping(part, s.jobs, job_id)
            else:
                async for record in s.jobs.stream_records(job_id, streams=None):
                    part.emit(record)
            info = await s.jobs.job(job_id)
            part.add(info)
            status = exit_code(info.state, info.exit_status)
            if wait and status > worst:
                worst, part.note = status, info.reason or f"job {info.id} is {info.state.value}"
    part.exit_status = worst


async def _follow_keeping(part: Part, jobs: HostJobs, job_id: int) -> None:
    """``--wait --keep``: read what is unreceived, then each new record, receiving none."""
    seq = (await jobs.job(job_id)).next_seq
    for record in await jobs.receive_records(job_id, keep=True):
        part.emit(record)
        seq = max(seq, record.seq + 1)
    await _follow(part, jobs, job_id, seq)


async def _follow(part: Part, jobs: HostJobs, job_id: int, seq: int) -> None:
    """Every record from ``seq`` on, as the job produces them, until it is finished; receiving
    none (``read`` by position, polled)."""
    delay = 0.02
    while True:
        finished = (await jobs.job(job_id)).state.is_finished
        records = await jobs.read(job_id, seq)
        for record in records:
            part.emit(record)
            seq = record.seq + 1
        if finished and not records:
            return
        if records:
            delay = 0.02
        else:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def wait(
    part: Part,
    ids: Sequence[int],
    *,
    name: str | None,
    any: bool,
    timeout: float | None,
) -> None:
    """Wait-Job: until every job (``any``: one) is finished or ``timeout`` passes; the finished
    ones are the part's jobs. Exit status 124 if the timeout passed first. With ``any`` and
    other hosts, the first job finished on any host ends every host's wait."""
    async with link(part.where) as host, host.session() as s:
        chosen = await _chosen(s.jobs, ids, name)
        if part.alone and part.screen.live:
            done = await _wait_showing(part.screen, s.jobs, chosen, any=any, timeout=timeout)
        else:
            done = await s.jobs.wait(*chosen, any=any, timeout=timeout)
    for info in done:
        part.add(info)
    if not done or (not any and len(done) < len(chosen)):
        part.exit_status = TIMED_OUT
        waited = "" if timeout is None else f" after {timeout:g} s"
        part.note = f"{len(chosen) - len(done)} of {len(chosen)} jobs not finished{waited}"
    elif any:
        part.stop_others()


async def _wait_showing(
    screen: Screen, jobs: HostJobs, job_ids: Sequence[int], *, any: bool, timeout: float | None
) -> list[HostJobInfo]:
    """``wait`` on a terminal: the same wait in short slices, a status line counting the jobs'
    states (redrawn at most ten times a second, erased at the end)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    t0 = time.monotonic()
    counts = state_counts(["Running"] * len(job_ids))

    def status() -> str:
        return f"waiting for {len(job_ids)} jobs: {counts}  {time.monotonic() - t0:.0f} s"

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_status, screen, status)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = 0.25 if left is None else min(0.25, left)
            done = await jobs.wait(*job_ids, any=any, timeout=step)
            if (done and (any or len(done) == len(job_ids))) or left == 0:
                break
            infos = [await jobs.job(j) for j in job_ids]
            counts = state_counts(info.state.value for info in infos)
        tg.cancel_scope.cancel()
    return done


async def stop(part: Part, ids: Sequence[int], *, name: str | None) -> None:
    """Stop-Job: each job, once it is finished. An id that is not there is a failure of its
    own; the other jobs are stopped."""
    async with link(part.where) as host, host.session() as s:
        chosen = list(ids) if name is None else await _chosen(s.jobs, (), name)
        for job_id in chosen:
            try:
                part.add(await s.jobs.stop(job_id))
            except JOB_FAULTS as exc:
                part.failures.append((job_id, exc))


async def remove(
    part: Part,
    ids: Sequence[int],
    *,
    force: bool,
    name: str | None = None,
    state: str | None = None,
) -> None:
    """Remove-Job: the jobs and their records are gone (``force``: stop running ones first);
    ``ids``, or every job whose name matches ``name`` and is in ``state`` (none is no error).
    A job that is not there, or runs (no ``force``), is a failure of its own; the others are
    removed. The part's jobs are the removed ones, as they were."""
    async with link(part.where) as host, host.session() as s:
        if name is not None or state is not None:
            infos: list[HostJobInfo | int] = list(await s.jobs.get(name=name, state=state))
        else:
            infos = list(ids)
        for item in infos:
            job_id = item if isinstance(item, int) else item.id
            try:
                info = await s.jobs.job(job_id)
                await s.jobs.remove(job_id, force=force)
            except JOB_FAULTS as exc:
                part.failures.append((job_id, exc))
            else:
                part.add(info)


# -- sessions -------------------------------------------------------------------------------


async def session_list(screen: Screen, result: Result, where: Where) -> None:
    """Get-PSSession: the sessions of the host's job host."""
    async with link(where) as host:
        sessions = [session_json(s) for s in await host.sessions()]
    _show_sessions(screen, result, sessions)


async def session_connect(screen: Screen, result: Result, where: Where, name: str) -> None:
    """Connect-PSSession: attach to the disconnected session ``name`` (an unknown name is an
    error that lists the sessions) and show it with its jobs; it is left disconnected again
    when the command ends, its idle timeout starting anew."""
    from ._terminal import JOB_COLUMNS, JOB_FLEXIBLE, job_rows

    host_name = None if where.target is None else where.target.location
    async with link(where) as host:
        async with host.session(name, create=False) as s:
            info = _named(await s.sessions(), name)
            jobs = [host_job_json(j, host_name) for j in await s.jobs.get() if j.session == name]
        _show_sessions(screen, result, [session_json(info)])
        result.jobs.extend(jobs)
        if not screen.json and jobs:
            screen.write("")
            screen.table(JOB_COLUMNS, job_rows(jobs), flexible=JOB_FLEXIBLE)


async def session_disconnect(screen: Screen, result: Result, where: Where, name: str) -> None:
    """Disconnect-PSSession: leave the session ``name`` disconnected, its jobs running (an
    already disconnected session is shown as it is; one that another program holds open is
    an error naming it)."""
    async with link(where) as host:
        async with host.session(name, create=False):
            pass
        info = _named(await host.sessions(), name)
    _show_sessions(screen, result, [session_json(info)])


async def session_remove(screen: Screen, result: Result, where: Where, name: str) -> None:
    """Remove-PSSession: the session ``name`` is closed, its running jobs stopped; it is no
    longer listed and its name is free. Its jobs stay in the host's table (``get``,
    ``receive``, ``remove`` them). An unknown name is an error that lists the sessions; one
    that another program holds open is waited for briefly (an invocation that is ending),
    then an error naming it. Prints nothing; ``--json`` lists the session as it was."""
    async with link(where) as host, host.session(name, create=False, patient=True) as s:
        info = _named(await s.sessions(), name)
        await s.remove()
    result.sessions.append(session_json(info))


def _named(sessions: Sequence[Any], name: str) -> Any:
    for info in sessions:
        if info.name == name:
            return info
    raise AsyncJobsError(f"no session named {name!r}; 'asyncjobs session list' lists them")


def _show_sessions(screen: Screen, result: Result, sessions: list[dict[str, Any]]) -> None:
    result.sessions.extend(sessions)
    if not screen.json:
        screen.table(SESSION_COLUMNS, session_rows(sessions), flexible=SESSION_FLEXIBLE)
