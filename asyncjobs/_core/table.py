"""What a fan-out needs of the job table it adds jobs to, as a protocol.

The fan-out lives above the manager (it imports asyncssh; the manager must not), yet it adds a
parent and its children to the manager's table and runs them in the manager's task group. It
sees the table only through this protocol, so it never imports the manager back.
"""

from __future__ import annotations

from typing import Protocol

from anyio.abc import TaskGroup

from .job import Job, JobKind
from .models import Buffer


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
