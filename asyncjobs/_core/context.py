"""The current job, as seen from inside it: ``emit``, ``progress``, ``stop_requested``.

Job code finds its job through a ``ContextVar`` (copied into worker threads by ``to_thread``, set
by the worker in a child process), so there is no global registry and nested jobs cannot mix up
their streams.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from .errors import AsyncJobsError
from .log import stream_set
from .models import Progress, StreamName


class Sink(Protocol):
    """Where the records of the running job go (a thread's portal, a child's pipe)."""

    def emit(self, stream: StreamName, value: Any) -> None: ...

    def stop_requested(self) -> bool: ...


current_sink: ContextVar[Sink] = ContextVar("asyncjobs_current_job")


def _sink(what: str) -> Sink:
    try:
        return current_sink.get()
    except LookupError:
        raise AsyncJobsError(
            f"asyncjobs.{what}() was called outside a job; call it from a function run by "
            "start_thread() or start_process()"
        ) from None


def emit(value: Any, stream: StreamName = "output") -> None:
    """Write ``value`` to a stream of the current job (Write-Output, Write-Warning, ...).

    In ``block`` buffer mode this waits until a consumer has made room.
    """
    (name,) = stream_set((stream,))
    _sink("emit").emit(name, value)


def progress(
    activity: str,
    *,
    status: str | None = None,
    percent: float | None = None,
    current: int | None = None,
    total: int | None = None,
) -> None:
    """Record progress of the current job on its ``progress`` stream (Write-Progress)."""
    if percent is None and current is not None and total:
        percent = 100.0 * current / total
    _sink("progress").emit("progress", Progress(activity, status, percent, current, total))


def stop_requested() -> bool:
    """True once ``stop()`` was called on the current job: return soon, the job is wanted no more.

    A thread cannot be killed, so a long-running thread job should poll this.
    """
    return _sink("stop_requested").stop_requested()
