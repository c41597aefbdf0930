"""What a fan-out needs of the job table it adds jobs to, as a protocol.

The fan-out lives above the manager (it imports asyncssh; the manager must not), yet it adds a
parent and its children to the manager's table and runs them in the manager's task group. It
sees the table only through this protocol, so it never imports the manager back. The few
things its failure policy does to the jobs (the parent fails as its first failure did, a stopped
child says why) are named functions here, as Job's private state is the core's alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import attrs
from anyio.abc import TaskGroup

from .errors import JobStopped
from .job import Job, JobKind
from .models import Buffer
from .state import JobState


class JobTable(Protocol):
    """A job table (``JobManager`` is one): new jobs, a parent over them, where they run."""

    def task_group(self) -> TaskGroup:
        """Where runners run; raises ``AsyncJobsError`` if the table is not open."""
        ...

    def new_job(
        self,
        name: str | None,
        kind: JobKind,
        command: str,
        buffer: Buffer | None,
        *,
        location: str = "localhost",
    ) -> Job:
        """A new leaf job in the table, ``NOT_STARTED``, with its own record log."""
        ...

    def add_parent(self, name: str | None, kind: JobKind, command: str, children: list[Job]) -> Job:
        """A parent over ``children`` (already in the table, reached through it from now on)."""
        ...


# -- what a fan-out's failure policy does to its jobs ---------------------------------------

#: ``invoke(on_failure=...)``: go on, stop the rest at the first failure, or stop the rest once
#: more than this fraction of the hosts failed.
FailurePolicy = Literal["continue", "fail_fast"] | float


class SessionTarget(Protocol):
    """An open ``asyncjobs.Session`` as a target of ``invoke``: named here by what the fan-out
    reads of it, so that the manager's signature imports nothing of SSH."""

    @property
    def location(self) -> str:
        """The host as the session's target named it."""
        ...

    @property
    def name(self) -> str | None:
        """Its name on the host's job host (a named session mirrors jobs run there)."""
        ...

    @property
    def closed(self) -> bool: ...


def watch_first(job: Job, listener: Callable[[Job], None]) -> None:
    """Call ``listener(job)`` at every change of ``job``'s state, before every other listener
    (its parent's, its table's): what it sets on the job is seen by them."""
    job._listeners.insert(0, listener)


def fail_as(parent: Job, child: Job) -> None:
    """A fan-out's policy gave up: ``parent`` fails as ``child`` (its first failure) did, with
    that reason and exit status."""
    parent._reason = child.reason
    parent.exit_status = child.exit_status


def explain_stop(job: Job, reason: JobStopped) -> None:
    """Why a stopped job was stopped (a fan-out's policy stopped it): its ``reason``, and the
    reason of its last state change if that is the stop and has none."""
    job._reason = reason
    history = job._history
    last = history[-1] if history else None
    if last is not None and last.state is JobState.STOPPED and last.reason is None:
        history[-1] = attrs.evolve(last, reason=reason)
