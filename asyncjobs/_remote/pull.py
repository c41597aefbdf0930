"""The gather core: remote files, named by paths or glob patterns, pulled into a local directory
of the host's own, with nothing a remote name says able to write outside it.

``gather_into(run, sftp, where, spec, directory)`` works on an open SFTP client, so it serves
``JobManager.gather`` (a child per host) and anything else that holds a connection to a host
(gathering a command's artifacts after it ran). In three steps:

1. **Plan** (remote): every source is a path, or a glob pattern matched on the host (``*``,
   ``?``, ``[...]``, ``**``). A path lands in the directory under its last name
   (``/var/log/syslog`` → ``syslog``), a match under its path below the pattern's last
   directory without wildcards (``logs/**/*.log`` → ``app/x.log``). Directories are walked
   with ``recursive`` only. Every name that comes from the host is checked as one path
   component (``bad_component``: never ``..``, never a ``/``), so ``../../x`` never leaves
   the directory; such a name is skipped with a warning.
2. **Symlinks**: a path named as a source is followed (the caller named it). Inside a walked
   tree, or matched by a pattern, a symlink is followed only if it resolves inside the tree
   (the pattern's base) and to a file; one that points outside, or to a directory, is
   skipped with a warning saying where it points.
3. **Fetch**: ``max_bytes`` is checked against the planned total first (nothing is fetched
   beyond it: a clear failure); then the files are fetched, ``FILES_AT_ONCE`` at a time,
   each to a hidden temporary file created beside its final name (``O_EXCL``, no symlink
   followed: every directory is opened ``O_NOFOLLOW`` from the host's directory down) and
   renamed once complete. A file that fails is an error record and the rest go on; the
   host fails at the end if any did.
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

from .._core.runner import Run
from .sftpio import (
    FILES_AT_ONCE,
    Errors,
    Meter,
    TransferFailed,
    bad_component,
    connection_lost,
    failure,
    fetch_file,
    file_record,
    shown,
    single_errors,
    temp_name,
)

_MAGIC: Final = frozenset("*?[")
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@attrs.frozen
class GatherSpec:
    """What to gather from each host: ``sources`` (remote paths or glob patterns, relative
    ones from the login directory), ``recursive`` (walk directories), ``preserve`` (mode and
    times exactly; else the mode less the local umask, and the time of the copy),
    ``max_bytes`` (per host: more planned is a failure before anything is fetched) and
    ``missing_ok`` (a source that names or matches nothing is no error)."""

    sources: tuple[str, ...]
    recursive: bool = False
    preserve: bool = False
    max_bytes: int | None = None
    missing_ok: bool = False


@attrs.frozen
class Pull:
    """One thing to make locally: a file fetched from ``remote``, or a directory."""

    remote: str
    parts: tuple[str, ...]  # its path below the host's directory, checked component by component
    is_dir: bool
    size: int = 0
    mode: int = 0o644
    times: tuple[float, float] | None = None  # (atime, mtime)


def _kind(attrs: asyncssh.SFTPAttrs) -> int:
    mode = attrs.permissions
    if mode is not None and stat.S_IFMT(mode):
        return stat.S_IFMT(mode)
    return {
        asyncssh.FILEXFER_TYPE_REGULAR: stat.S_IFREG,
        asyncssh.FILEXFER_TYPE_DIRECTORY: stat.S_IFDIR,
        asyncssh.FILEXFER_TYPE_SYMLINK: stat.S_IFLNK,
    }.get(attrs.type, 0)


def _pull(remote: str, parts: tuple[str, ...], attrs: asyncssh.SFTPAttrs) -> Pull:
    times = None
    if attrs.atime is not None and attrs.mtime is not None:
        times = (float(attrs.atime), float(attrs.mtime))
    return Pull(
        remote, parts, _kind(attrs) == stat.S_IFDIR, attrs.size or 0,
        stat.S_IMODE(attrs.permissions or 0o644), times,
    )  # fmt: skip


def _base(pattern: str) -> tuple[str, int]:
    """A pattern's last directory without wildcards, and how many components it has."""
    parts = pattern.split("/")
    plain: list[str] = []
    for part in parts[:-1]:
        if _MAGIC & set(part):
            break
        plain.append(part)
    base = "/".join(plain) or ("/" if pattern.startswith("/") else "")
    return base, len(plain)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Planner:
    """Step 1 and 2 of the module docstring for one host: ``plan`` gives what to make."""

    def __init__(self, run: Run, sftp: asyncssh.SFTPClient, where: str, spec: GatherSpec):
        self.run, self.sftp, self.where, self.spec = run, sftp, where, spec
        self.pulls: list[Pull] = []
        self._files: dict[tuple[str, ...], str] = {}
        self.errors = Errors()  # directories that could not be listed (each an error record)

    async def warn(self, text: str) -> None:
        await self.run.append("warning", f"{self.where}: {text}")

    async def plan(self) -> list[Pull]:
        for source in self.spec.sources:
            if _MAGIC & set(source):
                await self._pattern(source)
            else:
                await self._path(source)
        return self.pulls

    async def _path(self, source: str) -> None:
        try:
            attrs = await self.sftp.stat(source)  # named by the caller: followed
        except asyncssh.SFTPNoSuchFile as exc:
            if self.spec.missing_ok:
                return
            raise failure(self.where, "gather", source, exc) from None
        except asyncssh.SFTPError as exc:
            raise failure(self.where, "gather", source, exc) from None
        name = posixpath.basename(posixpath.normpath(source))
        if name in ("", ".", ".."):
            name = posixpath.basename(await self.sftp.realpath(source))
        if bad_component(name) is not None:
            raise TransferFailed(f"{self.where}: can't gather {shown(source)}: it has no name")
        await self._add(source, (name,), attrs, root=None)

    async def _pattern(self, pattern: str) -> None:
        try:
            matches = await self.sftp.glob_sftpname(pattern)
        except asyncssh.SFTPNoSuchFile:
            matches = []
        except asyncssh.SFTPError as exc:
            raise failure(self.where, "match", pattern, exc) from None
        if not matches:
            try:  # a name that only looks like a pattern (``a[1].txt``)
                await self.sftp.lstat(pattern)
            except asyncssh.SFTPError:
                if self.spec.missing_ok:
                    return
                raise TransferFailed(f"{self.where}: nothing matches {shown(pattern)}") from None
            await self._path(pattern)
            return
        base, depth = _base(pattern)
        root = await self.sftp.realpath(base or ".")
        for match in matches:
            path = str(match.filename)
            parts = tuple(path.split("/")[depth:]) if base != "/" else tuple(path.split("/")[1:])
            await self._add(path, parts, match.attrs, root=root)

    async def _add(
        self, path: str, parts: tuple[str, ...], attrs: asyncssh.SFTPAttrs, root: str | None
    ) -> None:
        """One named or matched entry: checked, its symlink resolved, walked if a directory."""
        for part in parts:
            why = bad_component(part)
            if why is not None:
                await self.warn(f"skipped {shown(path)}: {why} (it would leave the directory)")
                return
        kind = _kind(attrs)
        if kind == stat.S_IFLNK:
            resolved = await self._resolve(path, root or ".")
            if resolved is None:
                return
            attrs, kind = resolved, _kind(resolved)
        if kind == stat.S_IFDIR:
            if not self.spec.recursive:
                if root is None:
                    raise TransferFailed(
                        f"{self.where}: {shown(path)} is a directory; gather it with "
                        "recursive=True (-r)"
                    )
                await self.warn(f"skipped {shown(path)}: a directory (recursive=True, -r)")
                return
            self.pulls.append(_pull(path, parts, attrs))
            await self._walk(path, parts, await self.sftp.realpath(path) if root is None else root)
        elif kind == stat.S_IFREG:
            await self._file(path, parts, attrs)
        else:
            await self.warn(f"skipped {shown(path)}: not a regular file or a directory")

    async def _file(self, path: str, parts: tuple[str, ...], attrs: asyncssh.SFTPAttrs) -> None:
        other = self._files.setdefault(parts, path)
        if other != path:
            raise TransferFailed(
                f"{self.where}: {shown(other)} and {shown(path)} would both be gathered as "
                f"{shown('/'.join(parts))}; gather them into different directories"
            )
        self.pulls.append(_pull(path, parts, attrs))

    async def _resolve(self, path: str, root: str) -> asyncssh.SFTPAttrs | None:
        """A symlink in a tree: its target's attributes if it is a file inside ``root``."""
        try:
            target = await self.sftp.realpath(path)
            attrs = await self.sftp.stat(path)
        except asyncssh.SFTPError:
            await self.warn(f"skipped {shown(path)}: a broken symlink")
            return None
        real_root = await self.sftp.realpath(root)
        if not _inside(target, real_root):
            await self.warn(
                f"skipped {shown(path)}: a symlink to {shown(target)}, outside "
                f"{shown(real_root)} (not followed out of the tree)"
            )
            return None
        if _kind(attrs) != stat.S_IFREG:
            await self.warn(f"skipped {shown(path)}: a symlink to a directory (not followed)")
            return None
        return attrs

    async def _walk(self, directory: str, parts: tuple[str, ...], root: str) -> None:
        try:
            entries = [e async for e in self.sftp.scandir(directory)]
        except asyncssh.SFTPError as exc:
            if connection_lost(exc):
                raise
            error = failure(self.where, "list", directory, exc)
            await self.run.append("error", self.errors.add(error))
            return
        for entry in sorted(entries, key=lambda e: str(e.filename)):
            name = str(entry.filename)
            if name in (".", ".."):
                continue
            path = posixpath.join(directory, name)
            await self._add(path, (*parts, name), entry.attrs, root)


class LocalTree:
    """The host's directory: its subdirectories opened ``O_NOFOLLOW`` one component at a
    time from the top (never through a symlink), files written beside their final name."""

    def __init__(self, top: str) -> None:
        self.top = top
        self._fds: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def directory(self, parts: Sequence[str], mode: int = 0o755) -> int:
        """The fd of the directory ``parts`` below the top, made if missing."""
        key = tuple(parts)
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        if not key:
            fd = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        else:
            parent = self.directory(key[:-1])
            with contextlib.suppress(FileExistsError):
                os.mkdir(key[-1], mode & 0o777, dir_fd=parent)
            fd = os.open(key[-1], os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=parent)
        if len(self._fds) >= 64:  # bounded: a big tree never holds a descriptor per directory
            oldest = next(k for k in self._fds if k)  # the top stays open
            os.close(self._fds.pop(oldest))
        self._fds[key] = fd
        return fd

    def path(self, parts: Sequence[str]) -> str:
        return os.path.join(self.top, *parts)


async def gather_into(
    run: Run, sftp: asyncssh.SFTPClient, where: str, spec: GatherSpec, directory: str
) -> tuple[int, int]:
    """Gather ``spec`` from one host into ``directory`` (which exists): its files and bytes.
    Warnings for what was skipped, an ``output`` record per file; ``TransferFailed`` if a
    source is missing, ``max_bytes`` is exceeded, or any file failed."""
    planner = _Planner(run, sftp, where, spec)
    pulls = await planner.plan()
    files = [p for p in pulls if not p.is_dir]
    total = sum(p.size for p in files)
    if spec.max_bytes is not None and total > spec.max_bytes:
        raise TransferFailed(
            f"{where}: the files to gather are {total:,} bytes ({len(files)} files), more than "
            f"max_bytes={spec.max_bytes:,}; nothing was gathered (narrow the sources or raise "
            "the limit)"
        )
    meter = Meter(run, f"gather from {run.job.location}", total, len(files))
    await meter.start()
    tree = LocalTree(directory)
    errors = planner.errors
    umask = _umask()
    try:
        for pull in pulls:
            if pull.is_dir:
                try:
                    tree.directory(pull.parts, pull.mode if spec.preserve else 0o777)
                except OSError as exc:
                    raise failure(where, "make", tree.path(pull.parts), exc) from None
        slots = anyio.Semaphore(FILES_AT_ONCE)

        async def one(pull: Pull) -> None:
            async with slots:
                try:
                    await _fetch(sftp, tree, pull, spec.preserve, umask, meter)
                except (asyncssh.SFTPError, OSError) as exc:
                    if connection_lost(exc):
                        raise
                    doing = "read" if isinstance(exc, asyncssh.SFTPError) else "write"
                    path = pull.remote if doing == "read" else tree.path(pull.parts)
                    await run.append("error", errors.add(failure(where, doing, path, exc)))
                    return
            meter.file_done()
            await run.append("output", file_record(pull.remote, tree.path(pull.parts), pull.size))

        with single_errors():
            async with anyio.create_task_group() as tg:
                for pull in files:
                    tg.start_soon(one, pull)
        if spec.preserve:
            for pull in reversed(pulls):  # deepest first: their contents changed their times
                if pull.is_dir and pull.parts:
                    parent = tree.directory(pull.parts[:-1])
                    os.chmod(pull.parts[-1], pull.mode, dir_fd=parent)
                    if pull.times is not None:
                        os.utime(pull.parts[-1], pull.times, dir_fd=parent)
    finally:
        tree.close()
    await meter.finish()
    errors.check(where, "gathered", len(files))
    return len(files), meter.done


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


async def _fetch(
    sftp: asyncssh.SFTPClient, tree: LocalTree, pull: Pull, preserve: bool, umask: int,
    meter: Meter,
) -> None:  # fmt: skip
    parent = tree.directory(pull.parts[:-1])
    name = pull.parts[-1]
    temp = temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    fd = os.open(temp, flags, 0o600, dir_fd=parent)
    try:
        try:
            await fetch_file(sftp, pull.remote, pull.size, fd, meter)
            os.fchmod(fd, pull.mode if preserve else pull.mode & 0o777 & ~umask)
            if preserve and pull.times is not None:
                os.utime(fd, pull.times)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def describe(spec: GatherSpec, directory: str) -> str:
    """A gather as its job's ``command`` shows it."""
    return f"gather {' '.join(shown(s) for s in spec.sources)} -> {shown(directory)}"
