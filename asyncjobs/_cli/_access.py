"""Reaching a job host from the command line: this machine's (the default) or a remote one's
over SSH (``-H host``), as a named session (``start``: the CLI's jobs live in session
``cli``) or as an observer (everything else: no session of its own, so that any number of
invocations can look at the host at once).

Every invocation leaves its session disconnected when it ends: the jobs go on, and the next
invocation, from any shell, finds them in the host's store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._core.errors import AsyncJobsError

if TYPE_CHECKING:
    import asyncssh

    from .._host.client import HostSession
    from .._host.protocol import SessionInfo
    from .._ssh.targets import Target

#: The session that ``asyncjobs start`` puts its jobs in (``--session`` picks another).
CLI_SESSION: Final = "cli"
#: How long a disconnected CLI session keeps its jobs running before the job host stops them
#: (PowerShell's default of 2 h would stop a long build started from a shell).
CLI_IDLE_TIMEOUT: Final = 7 * 24 * 3600.0
#: How long to wait for a named session that another invocation holds at the moment.
_IN_USE_WAIT: Final = 10.0


@attrs.frozen
class Where:
    """A job host: this machine's (``target`` None) or one reached over SSH."""

    target: Target | None = None
    ssh_options: Mapping[str, Any] = attrs.Factory(dict)

    @property
    def label(self) -> str:
        return "localhost" if self.target is None else self.target.location


class Link:
    """One way to a job host, for one invocation: sessions on it, opened one after another
    (over one SSH connection for a remote host)."""

    def __init__(self, where: Where) -> None:
        self.where = where
        self._conn: asyncssh.SSHClientConnection | None = None

    async def _connection(self) -> asyncssh.SSHClientConnection:
        assert self.where.target is not None
        if self._conn is None:
            from .._ssh.session import open_connection

            self._conn, _ = await open_connection(self.where.target, dict(self.where.ssh_options))
        return self._conn

    async def _open(self, name: str | None, create: bool) -> HostSession:
        if self.where.target is None:
            from .._host.client import connect_local

            idle = CLI_IDLE_TIMEOUT if create else None
            session: HostSession = await connect_local(name, create=create, idle_timeout=idle)
            return session
        from .._remote.remotehost import open_bridge
        from .._ssh.session import where_of

        target = self.where.target
        conn = await self._connection()
        where = where_of(conn, target)  # the host, user and port actually used
        options: dict[str, Any] = {"idle_timeout": CLI_IDLE_TIMEOUT} if create else {}
        return await open_bridge(conn, where, target.location, name=name, create=create, **options)

    @asynccontextmanager
    async def session(
        self, name: str | None = None, *, create: bool = True, patient: bool = False
    ) -> AsyncIterator[HostSession]:
        """A session on the host, disconnected (left running) at the end of the block.

        ``name=None``: an observer, which sees every job and has no session of its own.
        ``patient``: a named session that another invocation holds right now (two ``start``s
        at once) is waited for, briefly; else that is an error at once."""
        if name is None:
            create = False
        deadline = time.monotonic() + (_IN_USE_WAIT if patient else 0.0)
        delay = 0.02
        while True:
            try:
                session = await self._open(name, create)
                break
            except AsyncJobsError as exc:
                # The host's refusal names the reason; "in use" passes once the holder leaves.
                if "in use by another connection" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise AsyncJobsError(in_use(str(exc), self.where)) from None
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            yield session
        finally:
            await session.disconnect()

    async def sessions(self) -> list[SessionInfo]:
        """The host's sessions (for this machine: none if no job host runs)."""
        if self.where.target is None:
            from .._host.client import get_local_sessions

            return await get_local_sessions()
        async with self.session() as observer:
            return await observer.sessions()

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            with anyio.CancelScope(shield=True):
                await self._conn.wait_closed()
            self._conn = None


def in_use(refusal: str, where: Where) -> str:
    """The job host's "session X is in use by another connection" as advice that works from
    the command line: who holds it (as far as the host says), that it frees itself when that
    program lets go, how to take it over, and that its jobs need no session meanwhile."""
    who = refusal.split("; ", 1)[0]  # the host's fix ("disconnect it first") is no use here
    if "pid " not in who:  # the host did not say which program: say what it can be
        who += (
            " (a program attached to it: a Python program's connect_local(name=...) or "
            "connect(host, name=...), or another asyncjobs command)"
        )
    host = "" if where.target is None else f" -H {where.target.location}"
    return (
        f"{who}; it is left disconnected, "
        "its jobs running, when that program disconnects or exits: wait for that and try "
        "again, or end that program to take the session over. Its jobs need no session: "
        f"'asyncjobs get{host}' lists them, 'asyncjobs receive ID{host}' and "
        f"'asyncjobs stop ID{host}' work now"
    )


@asynccontextmanager
async def link(where: Where) -> AsyncIterator[Link]:
    opened = Link(where)
    try:
        yield opened
    finally:
        await opened.aclose()
