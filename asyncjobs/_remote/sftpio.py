"""What copy and gather share: SFTP errors in our words, remote names checked, progress records,
temporary names, a file sent or fetched with its requests in flight.

Every message names the host (``host web01 (ops@10.0.0.7:22)``, as the remote runner writes it,
so that the summary folds hosts by the rest) and the path; a path that is not UTF-8 or has
spaces is shown escaped and quoted (``shown``). Remote paths are ``str`` decoded with
``surrogateescape`` (the SFTP client is started so), so any bytes a name holds go back to the
host, or into a local name, exactly as they were.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import anyio
import asyncssh

from .._core.errors import AsyncJobsError
from .._core.models import Progress
from .._core.runner import Run

#: How the SFTP client encodes paths: bytes that are not UTF-8 survive the round trip.
PATH_ERRORS: Final = "surrogateescape"
#: A progress record at most this often per host (and always at the end).
PROGRESS_EVERY: Final = 0.2
#: Files moved at once per host (each with its own requests in flight).
FILES_AT_ONCE: Final = 8
#: Writes of one file in flight at once, each of up to ``CHUNK_BLOCKS`` SFTP write requests.
WRITES_IN_FLIGHT: Final = 2
CHUNK_BLOCKS: Final = 16


class TransferFailed(AsyncJobsError):
    """A file could not be copied to or gathered from a host (the ``reason`` of that host's
    child): names the host and the path, or says which limit was exceeded (``max_bytes``)."""

    #: Already an ``error`` record of the child (a file's failure), or made of such.
    recorded: bool = False


def shown(path: str) -> str:
    """A path for a message: bytes that are not UTF-8 as ``\\xNN``, quoted if it has
    whitespace or is empty."""
    text = path.encode("utf-8", PATH_ERRORS).decode("utf-8", "backslashreplace")
    return repr(text) if not text or any(c.isspace() for c in text) else text


def local_text(path: str | os.PathLike[str] | bytes) -> str:
    """A local path as ``str`` (bytes decoded as the file system does: any bytes survive)."""
    return os.fsdecode(os.fspath(path))


def bad_component(name: str) -> str | None:
    """Why ``name`` can't be one component of a path (``None``: it can): empty, ``.``,
    ``..``, or holding ``/`` or NUL. A remote name is checked before it becomes a local one."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\0" in name:
        return "a file name can't hold '/' or NUL"
    return None


def temp_name(name: str) -> str:
    """A hidden temporary name beside ``name``, renamed to it once the file is complete."""
    tag = secrets.token_hex(4)
    if len(name.encode("utf-8", PATH_ERRORS)) > 200:  # NAME_MAX is 255 bytes
        return f".asyncjobs-{tag}.part"
    return f".{name}.asyncjobs-{tag}.part"


def sftp_reason(exc: BaseException) -> str:
    """An SFTP or OS error's reason, lower case, as the end of a message."""
    if isinstance(exc, asyncssh.SFTPError):
        text = exc.reason or type(exc).__name__
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc)
    else:
        text = str(exc) or type(exc).__name__
    text = text.rstrip(".")
    return text[:1].lower() + text[1:]


def failure(where: str, doing: str, path: str, exc: BaseException) -> TransferFailed:
    """``host web01 (...): can't write /srv/x: permission denied``."""
    return TransferFailed(f"{where}: can't {doing} {shown(path)}: {sftp_reason(exc)}")


class Errors:
    """The files of one host that failed (each already an error record): the host's failure
    at the end names the first."""

    def __init__(self) -> None:
        self.count = 0
        self.first: TransferFailed | None = None

    def add(self, error: TransferFailed) -> TransferFailed:
        error.recorded = True
        self.count += 1
        if self.first is None:
            self.first = error
        return error

    def check(self, where: str, doing: str, files: int) -> None:
        """Raise the host's failure if anything failed: the one error itself, or how many
        and the first."""
        if self.first is None:
            return
        if self.count == 1:
            raise self.first
        first = str(self.first).removeprefix(f"{where}: ")
        error = TransferFailed(
            f"{where}: {self.count} of the {files} files could not be {doing}; the first: {first}"
        )
        error.recorded = True
        raise error


def connection_lost(exc: BaseException) -> bool:
    """The SFTP session or the connection under it is gone: nothing more can be moved."""
    return isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection) or (
        isinstance(exc, asyncssh.Error | ConnectionError)
        and not isinstance(exc, asyncssh.SFTPError)
    )


def remote_join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if base else posixpath.join(*parts)


@contextmanager
def single_errors() -> Iterator[None]:
    """A task group's failure as the first error itself, not an ``ExceptionGroup`` (the
    others were cancelled because of it, or are the same failure on the same connection)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        raise leaf from None


class Meter:
    """One host's bytes done of its total, as ``progress`` records: at most one every
    ``PROGRESS_EVERY`` s, and one when all is done."""

    def __init__(self, run: Run, activity: str, total: int, files: int) -> None:
        self.run = run
        self.activity = activity
        self.total = total
        self.files = files
        self.done = 0
        self.files_done = 0
        self._last = 0.0

    async def start(self) -> None:
        await self._record("starting")

    async def add(self, count: int, path: str) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY:
            self._last = now
            await self._record(shown(path))

    def file_done(self) -> None:
        self.files_done += 1

    async def finish(self) -> None:
        await self._record("done")

    async def _record(self, status: str) -> None:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{status} ({self.files_done}/{self.files} files)"
        await self.run.append(
            "progress", Progress(self.activity, text, percent, self.done, self.total)
        )


async def send_file(
    sftp: asyncssh.SFTPClient, local: str, remote: str, size: int, mode: int, meter: Meter
) -> None:
    """Write ``local`` to the new remote file ``remote`` (created with ``mode``, the remote
    umask applied), ``WRITES_IN_FLIGHT`` writes of ``CHUNK_BLOCKS`` requests at once."""
    attrs = asyncssh.SFTPAttrs(permissions=mode & 0o7777)
    fd = os.open(local, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        async with await sftp.open(remote, "wb", attrs, encoding=None) as file:
            chunk = max(file.write_len or 0, 32 << 10) * CHUNK_BLOCKS
            slots = anyio.Semaphore(WRITES_IN_FLIGHT)

            async def write(data: bytes, offset: int) -> None:
                try:
                    await file.write(data, offset)
                finally:
                    slots.release()
                await meter.add(len(data), remote)

            with single_errors():
                async with anyio.create_task_group() as tg:
                    offset = 0
                    while offset < size:
                        data = os.pread(fd, min(chunk, size - offset), offset)
                        if not data:
                            break  # it shrank since it was planned: send what there is
                        await slots.acquire()
                        tg.start_soon(write, data, offset)
                        offset += len(data)
    finally:
        os.close(fd)


async def fetch_file(
    sftp: asyncssh.SFTPClient, remote: str, size: int, fd: int, meter: Meter
) -> int:
    """Read ``size`` bytes of ``remote`` (as much as there is) into the local ``fd``, the
    requests in flight at once (``read_parallel``); the bytes written."""
    written = 0
    async with await sftp.open(remote, "rb", encoding=None) as file:
        async for offset, data in await file.read_parallel(size, 0):
            os.pwrite(fd, data, offset)
            written += len(data)
            await meter.add(len(data), remote)
    return written


def file_record(source: str, destination: str, size: int) -> dict[str, Any]:
    """The ``output`` record of one file moved."""
    return {"source": source, "destination": destination, "bytes": size}
