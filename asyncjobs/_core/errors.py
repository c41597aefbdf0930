"""The one error hierarchy of asyncjobs, and the one place where foreign errors are translated.

Every error says what it is about (the job, the host) and what to do about it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager


class AsyncJobsError(Exception):
    """Base class of every error asyncjobs raises."""


class JobStateError(AsyncJobsError):
    """An operation that the job's state does not allow (an illegal transition, removing a
    running job without ``force``, removing a child job on its own, ...).

    ``from_state`` and ``to_state`` are ``JobState`` members (typed as their base, ``Enum``:
    the state table raises this error, so this module does not import it back)."""

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        from_state: enum.Enum | None = None,
        to_state: enum.Enum | None = None,
    ) -> None:
        super().__init__(message)
        self.job = job
        self.from_state = from_state
        self.to_state = to_state


class JobFailed(AsyncJobsError):
    """Raised by ``await job`` when the job ended ``FAILED``; the cause is chained and kept in
    ``reason`` (the traceback text of a process job, the exit status of a command, ...)."""

    def __init__(self, message: str, *, reason: BaseException | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class JobStopped(AsyncJobsError):
    """Raised by ``await job`` when the job was stopped before it finished."""


class CommandFailed(AsyncJobsError):
    """A command or a process job's child ended badly: a non-zero exit status, a signal, or a
    program that could not be started. It is the ``reason`` of the failed job."""

    def __init__(
        self, message: str, *, exit_status: int | None = None, signal: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.signal = signal


class RemoteError(AsyncJobsError):
    """An exception raised by a job's function in another process (or on another host).

    The original type name, message and traceback text travel as data; ``traceback`` holds the
    text as the child printed it, so nothing of the original failure is lost."""

    def __init__(self, message: str, *, type_name: str, traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.args[0]}" if self.args[0] else self.type_name


class JobArgumentError(AsyncJobsError, TypeError, ValueError):
    """A call was given something it cannot use: a callable that cannot be sent to a child
    process, a ``cwd`` that does not exist, a malformed host target, a bad ``Buffer``, an
    unknown stream. It is also a ``TypeError`` and a ``ValueError``, so code that catches
    either keeps working."""


class NoSuchJob(AsyncJobsError, KeyError):
    """No job with that id (or that job object) is in the table; ``jobs.get()`` lists them.
    Also a ``KeyError``, as ``jobs[id]`` promises."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such job"


class ConnectionFailed(AsyncJobsError):
    """A connection to a host could not be made or was lost; ``host`` says which.

    ``retryable`` is True for failures that another attempt may cure (refused, reset, timed out,
    lost), False for those it will not (authentication refused, host key unknown)."""

    def __init__(self, message: str, *, host: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.host = host
        self.retryable = retryable


class HostKeyError(ConnectionFailed):
    """A host's key is unknown or does not match ``known_hosts``."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message, host=host, retryable=False)


class ProtocolError(AsyncJobsError):
    """A peer sent something that is not valid asyncjobs protocol (malformed, oversized, wrong
    version). Only the connection it came on is closed."""


@contextmanager
def map_os_errors(subject: str, fix: str = "") -> Iterator[None]:
    """Translate ``OSError`` raised inside the block into ``JobArgumentError``/``CommandFailed``
    naming ``subject``: the one boundary where the operating system's errors become ours."""
    try:
        yield
    except FileNotFoundError as exc:
        raise CommandFailed(
            f"{subject}: {exc.filename or 'file'} not found{'; ' + fix if fix else ''}"
        ) from exc
    except PermissionError as exc:
        raise CommandFailed(
            f"{subject}: permission denied for {exc.filename or 'file'}{'; ' + fix if fix else ''}"
        ) from exc
    except OSError as exc:
        raise CommandFailed(f"{subject}: {exc.strerror or exc}") from exc


class SpillError(AsyncJobsError, OSError):
    """A job's records could not be spilled to disk (or read back): an ``OSError`` with the
    ``errno`` of the cause (``ENOSPC`` for a full disk), whose message names the job, the
    directory and what to do. It is the reason of the job that failed of it, and its error
    record."""
