"""The job commands on a job host: start, get, receive, wait, stop, remove, session.

Each is an async function of a ``Screen`` (where people's output goes), a ``Result`` (the
``--json`` document and the exit status) and its arguments; ``_app`` parses the command line
and runs them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._core.errors import AsyncJobsError
from ._access import CLI_SESSION, Where, link
from ._output import Result, exit_code, host_job_json, record_json, session_json
from ._terminal import (
    BLOCKS,
    JOB_COLUMNS,
    JOB_FLEXIBLE,
    SESSION_COLUMNS,
    SESSION_FLEXIBLE,
    Screen,
    job_rows,
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


def command_arg(argv: Sequence[str]) -> str | list[str]:
    """One word is a shell command line (``"make && make test"``); more are an argv."""
    return argv[0] if len(argv) == 1 else list(argv)


def show_jobs(screen: Screen, result: Result, jobs: list[dict[str, Any]]) -> None:
    result.jobs.extend(jobs)
    if not screen.json:
        screen.table(JOB_COLUMNS, job_rows(jobs), flexible=JOB_FLEXIBLE)


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


async def start(
    screen: Screen,
    result: Result,
    where: Where,
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

    if where.target is None:
        cwd = cwd or os.getcwd()
        # Sent whole: the job host adds it to its own environment (which is whatever the
        # program that first started the host had), so the caller's values win.
        env = {**os.environ, **(env or {})}
    async with link(where) as host, host.session(session or CLI_SESSION, patient=True) as s:
        info = await s.jobs.start_command(command_arg(argv), name=name, cwd=cwd, env=env or None)
    show_jobs(screen, result, [host_job_json(info)])


async def get(
    screen: Screen, result: Result, where: Where, *, name: str | None, state: str | None,
    kind: str | None = None,
) -> None:  # fmt: skip
    """Get-Job: the host's jobs, every session's (this machine's read from its store)."""
    jobs = None
    if where.target is None:
        from .._host.directory import STORE, host_dir
        from ._fastget import local_jobs, read_jobs

        jobs = local_jobs(host_dir(), name=name, state=state, kind=kind)
    if jobs is None:
        async with link(where) as host, host.session() as s:
            if where.target is None:  # the host is up now (started if need be): read its store
                jobs = read_jobs(host_dir() / STORE, name=name, state=state, kind=kind)
            if jobs is None:
                found = await s.jobs.get(name=name, state=state, kind=kind)
                jobs = [host_job_json(j) for j in found]
    show_jobs(screen, result, jobs)


async def receive(
    screen: Screen, result: Result, where: Where, job_id: int, *, keep: bool, wait: bool
) -> None:
    """Receive-Job: the records not yet received (all seven streams, in order); ``wait``
    follows the job until it is finished and sets the exit status from it."""
    async with link(where) as host, host.session() as s:
        await s.jobs.job(job_id)  # an unknown id fails here, before anything is printed
        result.lines = screen.json_lines
        try:
            if not wait:
                for record in await s.jobs.receive_records(job_id, keep=keep):
                    _emit(screen, result, record)
            elif keep:
                await _follow_keeping(screen, result, s.jobs, job_id)
            else:
                async for record in s.jobs.stream_records(job_id, streams=None):
                    _emit(screen, result, record)
        finally:
            BLOCKS.flush()
        info = await s.jobs.job(job_id)
    result.jobs.append(host_job_json(info))
    if wait:
        result.exit_status = exit_code(info.state, info.exit_status)


def _emit(screen: Screen, result: Result, record: Record) -> None:
    """A record: streamed into the ``--json`` document, or on the screen (in blocks)."""
    if screen.json or screen.json_lines:
        result.add_record(record_json(record))
    else:
        screen.record(record)


async def _follow_keeping(screen: Screen, result: Result, jobs: HostJobs, job_id: int) -> None:
    """``--wait --keep``: read what is unreceived, then each new record, receiving none."""
    seq = (await jobs.job(job_id)).next_seq
    for record in await jobs.receive_records(job_id, keep=True):
        _emit(screen, result, record)
        seq = max(seq, record.seq + 1)
    delay = 0.02
    while True:
        finished = (await jobs.job(job_id)).state.is_finished
        records = await jobs.read(job_id, seq)
        for record in records:
            _emit(screen, result, record)
            seq = record.seq + 1
        if finished and not records:
            return
        if records:
            delay = 0.02
        else:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def wait(
    screen: Screen,
    result: Result,
    where: Where,
    job_ids: Sequence[int],
    *,
    any: bool,
    timeout: float | None,
) -> None:
    """Wait-Job: until every job (``any``: one) is finished or ``timeout`` passes; prints the
    finished ones. Exit status 124 if the timeout passed first."""
    async with link(where) as host, host.session() as s:
        for job_id in job_ids:
            await s.jobs.job(job_id)
        if screen.live:
            done = await _wait_showing(screen, s.jobs, job_ids, any=any, timeout=timeout)
        else:
            done = await s.jobs.wait(*job_ids, any=any, timeout=timeout)
    show_jobs(screen, result, [host_job_json(j) for j in done])
    if not done or (not any and len(done) < len(job_ids)):
        result.exit_status = TIMED_OUT


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


async def stop(screen: Screen, result: Result, where: Where, job_ids: Sequence[int]) -> None:
    """Stop-Job: each job, once it is finished."""
    async with link(where) as host, host.session() as s:
        stopped = [await s.jobs.stop(job_id) for job_id in job_ids]
    show_jobs(screen, result, [host_job_json(j) for j in stopped])


async def remove(
    screen: Screen, result: Result, where: Where, job_ids: Sequence[int], *, force: bool
) -> None:
    """Remove-Job: the jobs and their records are gone (``force``: stop running ones first).
    Prints nothing; ``--json`` lists the jobs as they were."""
    async with link(where) as host, host.session() as s:
        for job_id in job_ids:
            info = await s.jobs.job(job_id)
            await s.jobs.remove(job_id, force=force)
            result.jobs.append(host_job_json(info))


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
    async with link(where) as host:
        async with host.session(name, create=False) as s:
            info = _named(await s.sessions(), name)
            jobs = [host_job_json(j) for j in await s.jobs.get() if j.session == name]
        _show_sessions(screen, result, [session_json(info)])
        if not screen.json and jobs:
            screen.write("")
        show_jobs(screen, result, jobs)


async def session_disconnect(screen: Screen, result: Result, where: Where, name: str) -> None:
    """Disconnect-PSSession: leave the session ``name`` disconnected, its jobs running (an
    already disconnected session is shown as it is; one that another program holds open is
    an error naming it)."""
    async with link(where) as host:
        async with host.session(name, create=False):
            pass
        info = _named(await host.sessions(), name)
    _show_sessions(screen, result, [session_json(info)])


def _named(sessions: Sequence[Any], name: str) -> Any:
    for info in sessions:
        if info.name == name:
            return info
    raise AsyncJobsError(f"no session named {name!r}; 'asyncjobs session list' lists them")


def _show_sessions(screen: Screen, result: Result, sessions: list[dict[str, Any]]) -> None:
    result.sessions.extend(sessions)
    if not screen.json:
        screen.table(SESSION_COLUMNS, session_rows(sessions), flexible=SESSION_FLEXIBLE)
