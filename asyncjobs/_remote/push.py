"""The copy core: local files planned once, before anything connects, then pushed to each host.

``plan_copy(sources, recursive)`` checks every local source (a missing one, a directory without
``recursive``, an unreadable file: ``JobArgumentError``, nothing connects) and walks the
directories: files and the directories that hold them, in order. Inside a walked directory a
symlink to a file is copied as that file; one to a directory, a broken one, and anything that
is not a file or a directory are skipped, each with a warning on every host's child.

``copy_into(run, sftp, where, plan, dest, preserve)`` pushes a plan to one host, as scp places
things: into ``dest`` if it is a directory (``dest/<name>``), else as ``dest`` itself (one
source only; a directory source becomes ``dest``, made). A ``dest`` ending in ``/`` is a
directory, made if missing. Each file is written to a hidden temporary file beside its final
name and renamed over it once complete (no reader ever sees half a file, a failed copy leaves
the old file as it was); it gets the source's mode less the host's umask, and with
``preserve`` its exact mode and times (directories too). A file that fails is an error record
and the rest go on; the host fails at the end if any did.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Sequence
from typing import Final

import anyio
import asyncssh
import attrs

from .._core.errors import JobArgumentError
from .._core.runner import Run
from .sftpio import (
    FILES_AT_ONCE,
    Errors,
    Meter,
    TransferFailed,
    connection_lost,
    failure,
    file_record,
    local_text,
    remote_join,
    send_file,
    shown,
    single_errors,
    temp_name,
)

_SKIPPED: Final = "not a regular file or a directory"


@attrs.frozen
class Push:
    """One thing to make on the host: a file from ``local``, or a directory."""

    source: int  # which source it belongs to
    local: str
    parts: tuple[str, ...]  # its path below that source's place on the host (() the source)
    is_dir: bool
    size: int
    mode: int
    times: tuple[float, float]  # (atime, mtime)


@attrs.frozen
class CopyPlan:
    """What ``plan_copy`` found: every source's last name and kind, what to push, warnings."""

    sources: tuple[str, ...]
    names: tuple[str, ...]
    dirs: tuple[bool, ...]
    pushes: tuple[Push, ...]
    warnings: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(p.size for p in self.pushes if not p.is_dir)

    @property
    def files(self) -> int:
        return sum(1 for p in self.pushes if not p.is_dir)

    def describe(self, dest: str) -> str:
        """The copy as its job's ``command`` shows it."""
        return f"copy {' '.join(shown(s) for s in self.sources)} -> {shown(dest)}"


def _entry(source: int, path: str, parts: tuple[str, ...], st: os.stat_result) -> Push:
    is_dir = stat.S_ISDIR(st.st_mode)
    return Push(
        source, path, parts, is_dir, 0 if is_dir else st.st_size, stat.S_IMODE(st.st_mode),
        (st.st_atime, st.st_mtime),
    )  # fmt: skip


def _refuse(path: str, why: str) -> JobArgumentError:
    return JobArgumentError(f"copy: {shown(path)}: {why}; nothing was copied, nothing connected")


def plan_copy(sources: Sequence[str], recursive: bool) -> CopyPlan:
    """Check and walk the local ``sources`` (see the module docstring)."""
    pushes: list[Push] = []
    warnings: list[str] = []
    names: list[str] = []
    dirs: list[bool] = []
    for index, source in enumerate(sources):
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise _refuse(source, "no such file or directory") from None
        except OSError as exc:
            raise _refuse(source, exc.strerror or str(exc)) from None
        name = os.path.basename(os.path.normpath(os.path.abspath(source)))
        if not name:
            raise _refuse(source, "has no name to copy it under (give its contents instead)")
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise _refuse(source, "is a directory; copy it with recursive=True (-r)")
            _check_readable(source, directory=True)
            pushes.append(_entry(index, source, (), st))
            _walk(index, source, (), pushes, warnings)
        elif stat.S_ISREG(st.st_mode):
            _check_readable(source, directory=False)
            pushes.append(_entry(index, source, (), st))
        else:
            raise _refuse(source, _SKIPPED)
        names.append(name)
        dirs.append(stat.S_ISDIR(st.st_mode))
    return CopyPlan(tuple(sources), tuple(names), tuple(dirs), tuple(pushes), tuple(warnings))


def _check_readable(path: str, *, directory: bool) -> None:
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        raise _refuse(path, "permission denied (it can't be read)")


def _walk(
    index: int, directory: str, parts: tuple[str, ...], pushes: list[Push], warnings: list[str]
) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise _refuse(directory, exc.strerror or str(exc)) from None
    for entry in entries:
        path = entry.path
        try:
            st = os.stat(path) if entry.is_symlink() else entry.stat(follow_symlinks=False)
        except OSError:
            warnings.append(f"skipped {shown(path)}: a broken symlink")
            continue
        if entry.is_symlink() and stat.S_ISDIR(st.st_mode):
            warnings.append(f"skipped {shown(path)}: a symlink to a directory (not followed)")
        elif stat.S_ISDIR(st.st_mode):
            _check_readable(path, directory=True)
            pushes.append(_entry(index, path, (*parts, entry.name), st))
            _walk(index, path, (*parts, entry.name), pushes, warnings)
        elif stat.S_ISREG(st.st_mode):
            _check_readable(path, directory=False)
            pushes.append(_entry(index, path, (*parts, entry.name), st))
        else:
            warnings.append(f"skipped {shown(path)}: {_SKIPPED}")


async def _attrs_of(sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs | None:
    try:
        return await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return None


async def _roots(sftp: asyncssh.SFTPClient, where: str, plan: CopyPlan, dest: str) -> list[str]:
    """Where each source goes on this host (scp's rules, see the module docstring)."""
    try:
        found = await _attrs_of(sftp, dest)
    except asyncssh.SFTPError as exc:
        if connection_lost(exc):
            raise
        raise failure(where, "use", dest, exc) from None
    if found is None and dest.endswith("/"):
        await _mkdir(sftp, where, dest, 0o777)
        found = await sftp.stat(dest)
    is_dir = found is not None and stat.S_ISDIR(found.permissions or 0)
    if is_dir:
        return [remote_join(dest, name) for name in plan.names]
    if len(plan.sources) > 1:
        what = "is not a directory" if found is not None else "does not exist"
        raise TransferFailed(
            f"{where}: {shown(dest)} {what}; several sources are copied into a directory "
            "(end the destination with / to make it)"
        )
    if found is not None and plan.dirs[0]:
        raise TransferFailed(
            f"{where}: {shown(dest)} exists and is not a directory; a directory can't replace it"
        )
    return [dest.rstrip("/") or dest]


async def copy_into(
    run: Run, sftp: asyncssh.SFTPClient, where: str, plan: CopyPlan, dest: str, preserve: bool
) -> tuple[int, int]:
    """Push ``plan`` to one host: its files and bytes (see the module docstring)."""
    for text in plan.warnings:
        await run.append("warning", f"{where}: {text}")
    roots = await _roots(sftp, where, plan, dest)
    meter = Meter(run, f"copy to {run.job.location}", plan.total, plan.files)
    await meter.start()
    errors = Errors()
    for push in plan.pushes:  # parents before their contents: the plan's order
        if push.is_dir:
            await _mkdir(sftp, where, remote_join(roots[push.source], *push.parts), push.mode)
    slots = anyio.Semaphore(FILES_AT_ONCE)

    async def one(push: Push) -> None:
        remote = remote_join(roots[push.source], *push.parts)
        async with slots:
            try:
                await _send(sftp, push, remote, preserve, meter)
            except (asyncssh.SFTPError, OSError) as exc:
                if connection_lost(exc):
                    raise
                local = isinstance(exc, OSError)
                doing, path = ("read", push.local) if local else ("write", remote)
                await run.append("error", errors.add(failure(where, doing, path, exc)))
                return
        meter.file_done()
        await run.append("output", file_record(local_text(push.local), remote, push.size))

    with single_errors():
        async with anyio.create_task_group() as tg:
            for push in plan.pushes:
                if not push.is_dir:
                    tg.start_soon(one, push)
    if preserve:  # deepest first: writing their contents changed their times
        for push in reversed(plan.pushes):
            if push.is_dir:
                path = remote_join(roots[push.source], *push.parts)
                try:
                    await sftp.setstat(path, _preserved(push))
                except asyncssh.SFTPError as exc:
                    if connection_lost(exc):
                        raise
                    error = failure(where, "set the times of", path, exc)
                    await run.append("error", errors.add(error))
    await meter.finish()
    errors.check(where, "copied", plan.files)
    return plan.files, meter.done


def _preserved(push: Push) -> asyncssh.SFTPAttrs:
    atime, mtime = push.times
    return asyncssh.SFTPAttrs(permissions=push.mode, atime=int(atime), mtime=int(mtime))


async def _mkdir(sftp: asyncssh.SFTPClient, where: str, path: str, mode: int) -> None:
    try:
        await sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=mode & 0o777))
    except asyncssh.SFTPError as exc:
        if connection_lost(exc):
            raise
        found = await _attrs_of(sftp, path)
        if found is None or not stat.S_ISDIR(found.permissions or 0):
            raise failure(where, "make the directory", path, exc) from None


async def _send(
    sftp: asyncssh.SFTPClient, push: Push, remote: str, preserve: bool, meter: Meter
) -> None:
    """One file: to a temporary name beside ``remote``, then renamed over it."""
    directory, name = posixpath.split(remote)
    temp = remote_join(directory, temp_name(name))
    try:
        await send_file(sftp, push.local, temp, push.size, push.mode, meter)
        if preserve:
            await sftp.setstat(temp, _preserved(push))
        try:
            await sftp.posix_rename(temp, remote)
        except asyncssh.SFTPOpUnsupported:  # a server without posix-rename@openssh.com
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(remote)
            await sftp.rename(temp, remote)
    except BaseException:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(5),
            contextlib.suppress(asyncssh.Error, OSError),
        ):
            await sftp.remove(temp)
        raise
