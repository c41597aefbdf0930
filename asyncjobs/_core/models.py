"""Frozen values that cross the public API: records, state changes, buffer settings, statistics."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from .errors import JobArgumentError
from .state import JobState

StreamName = Literal["output", "error", "warning", "verbose", "debug", "information", "progress"]

#: The seven streams of a job, in PowerShell's order.
STREAMS: Final[tuple[StreamName, ...]] = (
    "output",
    "error",
    "warning",
    "verbose",
    "debug",
    "information",
    "progress",
)

BufferMode = Literal["spill", "block", "drop"]


@attrs.frozen
class Record:
    """One item of one stream of a job, with where and when it was produced.

    ``seq`` counts from 0 per job across all streams, so sorting by ``seq`` gives the order in
    which the job produced its items, whatever their streams.
    """

    stream: StreamName
    value: Any
    job_id: int
    location: str
    seq: int
    time: float


@attrs.frozen
class StateChange:
    """A job moved from ``previous`` to ``state``; ``reason`` is the failure, if any."""

    previous: JobState
    state: JobState
    reason: BaseException | None = None


@attrs.frozen
class Progress:
    """What ``asyncjobs.progress()`` records on the ``progress`` stream (Write-Progress)."""

    activity: str
    status: str | None = None
    percent: float | None = None
    current: int | None = None
    total: int | None = None


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise JobArgumentError(
            f"Buffer.{attribute.name} must be a positive int or None, got {value!r}"
        )


def _mode(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("spill", "block", "drop"):
        raise JobArgumentError(f"Buffer.mode must be 'spill', 'block' or 'drop', got {value!r}")


@attrs.frozen
class Buffer:
    """How much of a job's unreceived output is held in memory, and what happens beyond that.

    - ``spill`` (default): older records move to a temporary file; memory stays bounded, nothing
      is lost and the producer is never slowed.
    - ``block``: the producer waits until a consumer receives (a thread's ``emit`` blocks; the
      pipe of a process fills and the kernel holds the writer).
    - ``drop``: the oldest unreceived records are discarded and counted in ``job.dropped``.

    ``None`` for a bound means "no bound of that kind"; at least one bound must be set.
    """

    max_items: int | None = attrs.field(default=10_000, validator=_positive_or_none)
    max_bytes: int | None = attrs.field(default=16 * 1024 * 1024, validator=_positive_or_none)
    mode: BufferMode = attrs.field(default="spill", validator=_mode)

    def __attrs_post_init__(self) -> None:
        if self.max_items is None and self.max_bytes is None:
            raise JobArgumentError("Buffer needs max_items or max_bytes (or both); both are None")


@attrs.frozen
class BufferStatistics:
    """What a job's record log holds, for ``job.statistics()``."""

    mode: BufferMode
    items: int  # unreceived records, in memory and spilled
    bytes: int  # estimated size of the unreceived records held in memory
    in_memory: int  # records held in memory (received ones not yet trimmed included)
    spilled: int  # records written to the spill file so far
    dropped: int  # records discarded by drop mode
    high_water: int  # the most unreceived records held at once
    next_seq: int  # the seq the next record will get
    blocked_producers: int  # appends waiting for room (block mode)


def sum_buffers(stats: list[BufferStatistics]) -> BufferStatistics:
    """A parent job's buffer statistics: its children's, added up (high-water: the largest)."""
    return BufferStatistics(
        mode=stats[0].mode if stats else "spill",
        items=sum(s.items for s in stats),
        bytes=sum(s.bytes for s in stats),
        in_memory=sum(s.in_memory for s in stats),
        spilled=sum(s.spilled for s in stats),
        dropped=sum(s.dropped for s in stats),
        high_water=max((s.high_water for s in stats), default=0),
        next_seq=sum(s.next_seq for s in stats),
        blocked_producers=sum(s.blocked_producers for s in stats),
    )


@attrs.frozen
class JobStatistics:
    """A snapshot of one job, for monitoring and for tests."""

    id: int
    state: JobState
    buffer: BufferStatistics  # a parent's is the sum over its children
    duration: float | None
    timings: Any = None  # RemoteTimings of a remote job


@attrs.frozen
class ManagerStatistics:
    """A snapshot of a ``JobManager``: its jobs by state and its limits in use."""

    jobs: int
    by_state: dict[str, int]
    threads_in_use: int
    thread_limit: int
    processes_in_use: int
    process_limit: int
    idle_workers: int
