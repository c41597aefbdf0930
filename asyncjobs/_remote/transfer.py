"""``JobManager.copy`` and ``JobManager.gather``: files to and from many hosts, as jobs.

Each is a fan-out as ``invoke`` is (``fanout``): a parent ``RemoteJob`` with one child per
target, in argument order, run under one throttle, connected the way invoke connects (the same
``_connect``: retries with backoff, the per-destination handshake limit and ``max_startups``)
and stopped by the same failure policy. A child moves its host's files over SFTP on its own
connection (a ``Session`` target: on the session's, holding one of its channels), reports
``progress`` records (bytes done of its total), an ``output`` record per file, a ``warning`` per
thing skipped, an ``error`` per file that failed, and fails alone: one host's failure is its
child's (``TransferFailed``, exit status 1; ``ConnectionFailed`` if the host can't be reached
or the link drops, exit status None).

What moves is decided by ``push`` (the local sources, checked and walked once, before anything
connects) and ``pull`` (the gather core: patterns, symlinks, ``max_bytes``, the host's own
directory) — ``pull.gather_into`` works on any open SFTP client, for a later caller that
gathers after a command.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import asyncssh

from .._core.errors import ConnectionFailed, JobArgumentError
from .._core.job import Job
from .._core.models import Buffer
from .._core.runner import Body, Run, run_in_slot
from .._core.table import JobTable, SessionTarget, watch_first
from .._ssh.config import check_files
from .._ssh.session import SSHSession, map_ssh_errors, require_asyncio
from .._ssh.targets import Target
from .bulk import prepare
from .fanout import _connect, _policy, _PolicyWatch, _startups, _target
from .pull import GatherSpec, describe, gather_into
from .push import copy_into, plan_copy
from .session import Session
from .sftpio import PATH_ERRORS, TransferFailed, local_text, sftp_reason, single_errors

#: What a child does once its SFTP client is open: (run, sftp, where) -> (files, bytes).
Work = Callable[[Run, asyncssh.SFTPClient, str], Awaitable[tuple[int, int]]]


def _targets(targets: object, what: str) -> list[Target | Session]:
    if isinstance(targets, str | Session):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets:
        raise JobArgumentError(f"{what} needs at least one target (a host string or a Session)")
    return [_target(t) for t in targets]


def _paths(value: object, what: str) -> list[str]:
    """One path or a list of them (``str`` or ``os.PathLike``), as ``str``."""
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes) or not value:
        raise JobArgumentError(f"{what} must be a path or a non-empty list of paths, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str | os.PathLike) or not local_text(item):
            raise JobArgumentError(f"{what}: {item!r} is not a path")
        out.append(local_text(item))
    return out


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise JobArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def _limit(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobArgumentError(f"throttle_limit must be an int >= 1, got {value!r}")
    return value


async def start_copy(
    table: JobTable,
    targets: Sequence[str | SessionTarget] | str | SessionTarget,
    sources: object,
    dest: object,
    *,
    name: str | None = None,
    recursive: bool = False,
    preserve: bool = False,
    throttle_limit: int = 32,
    on_failure: object = "continue",
    retries: int = 0,
    buffer: Buffer | None = None,
    max_startups: int | None = None,
    ssh_options: dict[str, Any],
) -> Job:
    """Push local ``sources`` to ``dest`` on every target (``push`` says where things go);
    every local source is checked and walked here, before anything connects."""
    require_asyncio("copy")
    parsed = _targets(targets, "copy")
    if not isinstance(dest, str | os.PathLike) or not local_text(dest):
        raise JobArgumentError(f"copy's destination must be a remote path, got {dest!r}")
    remote = local_text(dest)
    plan = plan_copy(_paths(sources, "copy's sources"), _flag(recursive, "recursive"))
    keep = _flag(preserve, "preserve")

    async def work(run: Run, sftp: asyncssh.SFTPClient, where: str) -> tuple[int, int]:
        return await copy_into(run, sftp, where, plan, remote, keep)

    return _fan_out(
        table, parsed, plan.describe(remote), name, throttle_limit, on_failure, retries,
        buffer, max_startups, ssh_options, lambda _: work,
    )  # fmt: skip


async def start_gather(
    table: JobTable,
    targets: Sequence[str | SessionTarget] | str | SessionTarget,
    sources: object,
    directory: object,
    *,
    name: str | None = None,
    recursive: bool = False,
    preserve: bool = False,
    max_bytes: int | None = None,
    missing_ok: bool = False,
    throttle_limit: int = 32,
    on_failure: object = "continue",
    retries: int = 0,
    buffer: Buffer | None = None,
    max_startups: int | None = None,
    ssh_options: dict[str, Any],
) -> Job:
    """Pull remote ``sources`` from every target into ``directory/<host>/`` (``pull`` says
    how); the directories are made here, before anything connects."""
    require_asyncio("gather")
    parsed = _targets(targets, "gather")
    if max_bytes is not None and (
        not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0
    ):
        raise JobArgumentError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")
    spec = GatherSpec(
        tuple(_paths(sources, "gather's sources")), _flag(recursive, "recursive"),
        _flag(preserve, "preserve"), max_bytes, _flag(missing_ok, "missing_ok"),
    )  # fmt: skip
    top = _paths(directory, "gather's directory")
    if len(top) != 1:
        raise JobArgumentError(f"gather takes one local directory, got {directory!r}")
    _check_common(parsed, throttle_limit, on_failure, retries, max_startups, ssh_options)
    folders = host_directories(top[0], [_written(t) for t in parsed])

    def work_for(index: int) -> Work:
        async def work(run: Run, sftp: asyncssh.SFTPClient, where: str) -> tuple[int, int]:
            return await gather_into(run, sftp, where, spec, folders[index])

        return work

    return _fan_out(
        table, parsed, describe(spec, top[0]), name, throttle_limit, on_failure, retries,
        buffer, max_startups, ssh_options, work_for,
    )  # fmt: skip


def _written(target: Target | Session) -> str:
    """A target as written: ``ops@db1:2222``; a session: its location."""
    if isinstance(target, Session):
        return target.location
    host = f"[{target.host}]" if ":" in target.host else target.host
    user = f"{target.username}@" if target.username else ""
    return f"{user}{host}" + (f":{target.port}" if target.port is not None else "")


def safe_name(host: str) -> str:
    """A host as written, made safe as one file name: no ``/`` or NUL (each becomes ``_``),
    never ``.``, ``..`` or empty (as ``invoke --outdir`` names its files)."""
    name = host.replace("/", "_").replace("\0", "_")
    return name if name.strip(".") else f"_{name}"


def host_directories(directory: str, hosts: Sequence[str]) -> list[str]:
    """``directory/<host>`` for every host, made now (a host named twice gets ``<host>~2``
    the second time); ``JobArgumentError`` naming the path if one can't be made or is not a
    real directory (a symlink is refused: gather writes only below real directories)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for host in hosts:
        stem = safe_name(host)
        seen[stem] = count = seen.get(stem, 0) + 1
        path = os.path.join(directory, stem if count == 1 else f"{stem}~{count}")
        try:
            os.makedirs(path, exist_ok=True)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise NotADirectoryError(0, "a symlink, not a directory", path)
        except OSError as exc:
            raise JobArgumentError(
                f"gather: can't use {path}: {exc.strerror or exc}; give a directory you can "
                "write to (it is made if missing); nothing connected"
            ) from None
        out.append(path)
    return out


def _check_common(
    parsed: list[Target | Session],
    throttle_limit: object,
    on_failure: object,
    retries: object,
    max_startups: object,
    ssh_options: dict[str, Any],
) -> None:
    _limit(throttle_limit)
    _policy(on_failure)
    _startups(max_startups)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise JobArgumentError(f"retries must be an int >= 0, got {retries!r}")
    check_files(ssh_options)  # a missing key or known_hosts file: one error, nothing connects


def _fan_out(
    table: JobTable,
    parsed: list[Target | Session],
    command: str,
    name: str | None,
    throttle_limit: int,
    on_failure: object,
    retries: int,
    buffer: Buffer | None,
    max_startups: int | None,
    ssh_options: dict[str, Any],
    work_for: Callable[[int], Work],
) -> Job:
    """The parent and a child per target, each scheduled under the throttle (as ``invoke``)."""
    _check_common(parsed, throttle_limit, on_failure, retries, max_startups, ssh_options)
    tg = table.task_group()
    startups = _startups(max_startups)
    children = [
        table.new_job(None, "RemoteJob", command, buffer, location=t.location) for t in parsed
    ]
    parent = table.add_parent(name, "RemoteJob", command, children)
    throttle = anyio.CapacityLimiter(throttle_limit)
    watch = _PolicyWatch(parent, _policy(on_failure), tg.start_soon)
    for index, (job, target) in enumerate(zip(children, parsed, strict=True)):
        watch_first(job, watch.child_changed)
        body = _body(target, work_for(index), retries, dict(ssh_options), startups)
        tg.start_soon(run_in_slot, job, throttle, body)
    return parent


def _body(
    target: Target | Session,
    work: Work,
    retries: int,
    options: dict[str, Any],
    startups: anyio.CapacityLimiter | None,
) -> Body:
    async def body(run: Run) -> None:
        if isinstance(target, Session):
            async with target.job_channel():
                await _move(run, target, work)
            return
        try:
            conn, timings = await _connect(target, options, retries, run, [0], startups)
        except ConnectionFailed as exc:
            await run.append("error", exc)
            run.failed(exc)  # the host's own failure: connecting is never interrupted
            return
        prepare(conn)  # its own connection: fewer packets and writes for bulk data (bulk.py)
        async with SSHSession(
            conn, target, max_channels=2, timings=timings, options=options
        ) as session:
            await _move(run, session, work)

    return body


async def _move(run: Run, session: SSHSession, work: Work) -> None:
    """Open the SFTP client on ``session``'s connection and do ``work``; end the job."""
    where = session.where
    run.started()
    try:
        with run.cancelled_on_stop() as scope, single_errors():
            with map_ssh_errors(where, timeout=session.channel_timeout):
                client = session.connection.start_sftp_client(path_errors=PATH_ERRORS)
                sftp = await client
            try:
                await work(run, sftp, where)
            finally:
                sftp.exit()
    except TransferFailed as exc:
        if not exc.recorded:
            await run.append("error", exc)
        run.job.exit_status = 1
        run.failed(exc)
        return
    except asyncssh.SFTPError as exc:  # the SFTP subsystem itself: refused, or gone
        lost = ConnectionFailed(f"{where}: SFTP failed: {sftp_reason(exc)}", host=where)
        await run.append("error", lost)
        run.failed(lost)
        return
    except (asyncssh.Error, OSError) as exc:
        lost = ConnectionFailed(
            f"{where}: the connection was lost while moving files: {sftp_reason(exc)}",
            host=where,
        )
        await run.append("error", lost)
        run.failed(lost)
        return
    except ConnectionFailed as exc:
        await run.append("error", exc)
        run.failed(exc)
        return
    if scope.cancelled_caught:
        run.stopped()
    else:
        run.job.exit_status = 0  # as scp's: 0 all moved, 1 some file failed
        run.completed()
