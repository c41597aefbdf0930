"""Re-run what failed, as ansible's retry files do: ``-H @failed`` and ``-H @last``.

Every ``asyncjobs invoke -H HOSTS`` records its hosts, as given (``user@host:port``), and how
each ended, in this machine's job host's store: a finished ``RemoteJob`` of the ``cli``
session (``asyncjobs get --kind RemoteJob`` lists them), written through the job host
protocol (``record_invoke``), the host started if none runs. ``@failed`` is the hosts of the
last invoke that did not complete (failed, stopped, never started), ``@last`` all of its
hosts; ``@failed:ID`` / ``@last:ID`` those of invoke ``ID``. If the job host can't be reached
the invoke has run anyway, and says on stderr that it was not recorded.

The names are read through ``HostLists``, the ``GroupLookup`` of ``-H`` (any other ``@name``
is a group of the groups file, where ``failed`` and ``last`` are reserved). A name that
names nothing (no invoke yet, an unknown ID, no failed host) is a ``HostSyntaxError``: exit
status 2, one line, before anything connects.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from ._groups import RESERVED, LazyGroups
from ._hosts import HostSyntaxError, fold

if TYPE_CHECKING:
    from .._core.job import Job
    from .._host.protocol import InvokeRecord
    from ._terminal import Screen

#: How long recording an invoke may take (starting the job host included) before giving up.
RECORD_TIMEOUT = 15.0
_LISTS = "asyncjobs get --kind RemoteJob lists them"


@attrs.define
class HostLists:
    """``-H``'s ``@name``: ``@failed``/``@last`` (``:ID``) from the job host, any other name
    from the groups file (``LazyGroups``); each looked up once per invocation."""

    groups: LazyGroups = attrs.field(factory=LazyGroups)
    _known: dict[int | None, InvokeRecord] = attrs.field(factory=dict)

    def __call__(self, name: str) -> list[str]:
        which, colon, ident = name.partition(":")
        if which not in RESERVED:
            return self.groups(name)
        job: int | None = None
        if colon:
            if not ident.isdigit() or int(ident) < 1:
                raise HostSyntaxError(
                    f"@{name}: write @{which}:ID, ID the number of an invoke ({_LISTS})"
                )
            job = int(ident)
        found = self._record(name, job)
        hosts = [h.host for h in found.hosts if which == "last" or h.failed]
        if not hosts:
            which_one = f"the last invoke ({found.job})" if job is None else f"invoke {job}"
            raise HostSyntaxError(
                f"@{name}: {which_one} had no failed hosts; nothing to re-run "
                f"(@last{'' if job is None else f':{job}'} names all of its hosts)"
            )
        return hosts

    def _record(self, name: str, job: int | None) -> InvokeRecord:
        if job not in self._known:
            import anyio

            try:
                found = anyio.run(_invoke_hosts, job, backend="asyncio")
            except Exception as exc:  # the job host's errors, OSError: said in one line
                from ._text import cli_message

                raise HostSyntaxError(
                    f"@{name}: can't read the recorded invokes from this machine's job host: "
                    f"{cli_message(exc)}"
                ) from None
            if found is None:
                if job is None:
                    raise HostSyntaxError(
                        f"@{name}: no invoke is recorded yet; run asyncjobs invoke -H HOSTS "
                        "first (its hosts become @last, the failed ones @failed)"
                    )
                raise HostSyntaxError(f"@{name}: there is no invoke {job}; {_LISTS}")
            self._known[job] = found
        return self._known[job]


async def _invoke_hosts(job: int | None) -> InvokeRecord | None:
    from ._access import Link, Where

    async with Link(Where()).session() as s:
        return await s.jobs.invoke_hosts(job)


async def record(
    screen: Screen, parent: Job, children: Sequence[Job], hosts: Sequence[str]
) -> int | None:
    """Record a finished invoke (its ``hosts`` as given, in the children's order) on this
    machine's job host; its id, or None (said on stderr) if the host can't be reached."""
    import anyio

    from .._core.errors import AsyncJobsError
    from .._host.records import InvokeHost
    from ._access import CLI_SESSION, Link, Where
    from ._text import cli_message

    outcomes = [
        InvokeHost(host, child.state.value, child.exit_status)
        for host, child in zip(hosts, children, strict=True)
    ]
    now = time.time()
    reason = "the job host did not answer in time"
    try:
        with anyio.move_on_after(RECORD_TIMEOUT):
            async with Link(Where()).session(CLI_SESSION, patient=True) as s:
                info = await s.jobs.record_invoke(
                    parent.command, fold(list(hosts)), parent.state, outcomes,
                    exit_status=parent.exit_status, started_at=parent.started_at or now,
                    finished_at=parent.finished_at or now,
                )  # fmt: skip
            return info.id
    except (AsyncJobsError, OSError) as exc:
        reason = cli_message(exc)
    screen.write(
        f"asyncjobs: this invoke was not recorded (-H @failed and @last won't name its "
        f"hosts): {reason}",
        err=True,
    )
    return None
