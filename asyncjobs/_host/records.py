"""The one record of a job on a job host, as the store reads it, the wire carries it and
``session.jobs`` hands it out (``asyncjobs.HostJobInfo``), and the rules every reader applies.

One class for all three, so a field is added in one place. It is a wire ``Shape`` (checked
field by field on receipt) and imports no anyio: the store and the command line's fast path
(``asyncjobs get`` read straight from the store) use it without an event loop.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import attrs

from .._core.state import ACTIVE_VALUES, JobState
from .wire import REQUIRED, Bad, Shape, Spec, boolean, integer, name, number, one_of, optional, text

#: The kinds of job a job host lists.
KINDS: Final = ("ThreadJob", "BackgroundJob", "RemoteJob")
_ACTIVE: Final = frozenset(ACTIVE_VALUES)
_TIME: Final = optional(number(0))


def _uuid(v: Any) -> str:
    import uuid  # not at import time: the fast path never decodes a record from the wire

    try:
        if str(uuid.UUID(v)) == v:
            return str(v)
    except (TypeError, ValueError, AttributeError):
        pass
    raise Bad("must be a UUID in canonical form", v)


def _state(v: Any) -> JobState:
    try:
        return JobState(v)
    except ValueError:
        raise Bad(f"must be one of {', '.join(repr(s.value) for s in JobState)}", v) from None


@attrs.frozen
class HostJobInfo(Shape):
    """A snapshot of a job on a job host, as ``session.jobs`` returns it.

    ``has_more_data``: the job may still produce records, or has some not received yet.
    ``next_seq`` is the seq its next record will get (= records stored); ``dropped`` counts
    records dropped unreceived (``output_buffering="drop"``)."""

    SPEC: ClassVar[Spec] = {
        "id": (integer(1), REQUIRED),
        "instance_id": (_uuid, REQUIRED),
        "name": (text, REQUIRED),
        "kind": (one_of(*KINDS), REQUIRED),
        "command": (text, REQUIRED),
        "location": (text, REQUIRED),
        "session": (optional(name), REQUIRED),
        "state": (_state, REQUIRED),
        "reason": (optional(text), REQUIRED),
        "exit_status": (optional(integer(-(2**31), 2**31)), REQUIRED),
        "has_more_data": (boolean, REQUIRED),
        "started_at": (_TIME, REQUIRED),
        "finished_at": (_TIME, REQUIRED),
        "next_seq": (integer(0), REQUIRED),
        "dropped": (integer(0), REQUIRED),
    }

    id: int
    name: str
    kind: str
    command: str
    location: str
    session: str | None
    state: JobState
    has_more_data: bool
    reason: str | None  # the failure, as text
    exit_status: int | None
    started_at: float | None
    finished_at: float | None
    next_seq: int
    dropped: int
    instance_id: str


def has_more_data(state: str, unreceived: int) -> bool:
    """The store's part of ``HostJobInfo.has_more_data``: the job is active (``state`` is a
    ``JobState`` value) or has records not received yet. A job host adds the records it
    handed out under a lease not acknowledged yet."""
    return state in _ACTIVE or unreceived > 0


def select_jobs(
    jobs: Iterable[HostJobInfo],
    *,
    id: int | None = None,
    name: str | None = None,
    state: str | None = None,
    kind: str | None = None,
    location: str | None = None,
    has_more_data: bool | None = None,
) -> list[HostJobInfo]:
    """The jobs that match every filter given, in order: the job host's ``get`` and the
    command line's fast path select with this. ``name`` and ``location`` are shell-style
    patterns (case-sensitive), ``state`` a ``JobState`` value."""
    return [
        job
        for job in jobs
        if (id is None or job.id == id)
        and (name is None or fnmatch.fnmatchcase(job.name, name))
        and (state is None or job.state.value == state)
        and (kind is None or job.kind == kind)
        and (location is None or fnmatch.fnmatchcase(job.location, location))
        and (has_more_data is None or job.has_more_data is has_more_data)
    ]


@attrs.frozen
class InvokeHost(Shape):
    """One host of a recorded ``asyncjobs invoke``: as it was given (``user@host:port``), and
    how it ended there (a ``JobState`` value; ``failed`` is anything but Completed)."""

    SPEC: ClassVar[Spec] = {
        "host": (text, REQUIRED),
        "state": (one_of(*(s.value for s in JobState)), REQUIRED),
        "exit_status": (optional(integer(-(2**31), 2**31)), None),
    }
    host: str
    state: str
    exit_status: int | None = None

    @property
    def failed(self) -> bool:
        return self.state != JobState.COMPLETED.value
