"""``asyncjobs.Session``: an SSH session with the host's job host and ``invoke``.

The SSH layer's ``SSHSession`` is the connection (channels, reconnect); this adds what joins it
to the job host (``session.jobs``, over a bridge channel opened on first use, reattached by name
after a reconnect) and ``invoke``, one command waited for. ``connect()`` makes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, final

import anyio
import asyncssh

from .._core.errors import AsyncJobsError
from .._host.client import HostConnection, HostJobs, HostSession, connection_of
from .._ssh.runner import invoke_on_session
from .._ssh.session import ConnectTimings, SSHSession
from .._ssh.targets import Target
from .remotehost import open_bridge


@final
class Session(SSHSession):
    """A persistent SSH connection to one host (a PSSession).

    Remote jobs on a session share its one connection as separate channels, at most
    ``max_channels`` at once (sshd's ``MaxSessions``, 10 by default: one of them is kept free so
    that ``stop()`` can always reach the host). Made by ``asyncjobs.connect()``.
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        target: Target,
        *,
        name: str | None,
        max_channels: int,
        timings: ConnectTimings | None,
        options: dict[str, Any] | None = None,
        host_session: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(conn, target, max_channels=max_channels, timings=timings, options=options)
        #: The session's name on the host's job host (None until ``jobs`` opens one unnamed).
        self.name = name
        #: How ``session.jobs`` opens its job host session: create=, idle_timeout=, ...
        self._host_session = dict(host_session or {"create": True})
        self._host: RemoteHostConnection | None = None
        self._jobs: HostJobs | None = None

    async def invoke(
        self,
        command: str | Sequence[str],
        *,
        timeout: float | None = None,
        lines: bool = True,
        input: str | bytes | None = None,
    ) -> list[Any]:
        """Run ``command`` on the host and return its output lines (Invoke-Command -Session);
        with ``lines=False``, its stdout as ``bytes`` chunks (``b"".join`` them). ``input``
        (``str``, sent as UTF-8, or ``bytes``) is written to its stdin; then, and without
        ``input`` at once, its stdin gets EOF (as from ``/dev/null``).

        Raises ``JobFailed`` (the exit status or signal in its ``reason``) if it fails.
        """
        return await invoke_on_session(self, command, timeout=timeout, lines=lines, input=input)

    @property
    def jobs(self) -> HostJobs:
        """The job table of the host's job host (Invoke-Command { Start-Job }): jobs started
        here run on the host and keep their results there, also while nobody is connected.
        The first call installs the runtime if needed and opens the bridge."""
        if self._jobs is None:
            self._host = RemoteHostConnection(self, self._host_session)
            self._jobs = HostJobs(self._host)
        return self._jobs

    async def reconnect(self, seen: int | None = None) -> None:
        """Make the connection again, with the same options, and (if the session has a job
        host session) reattach to it by name. Raises ``ConnectionFailed`` if the host can't be
        reached now. ``seen``: the generation the caller saw fail; if the session has been
        reconnected since, this returns at once."""
        await super().reconnect(seen)

    def _reconnected(self) -> None:
        if self._host is not None:
            self._host.reset()

    async def disconnect(self) -> None:
        """Leave the session and its jobs running on the host's job host, and close the
        connection; ``connect(host, name=...)`` reattaches later, from any process."""
        await self.close()

    async def close(self) -> None:
        """Close the connection. Jobs on the host's job host go on (the session is left
        disconnected there); remote commands of ``invoke`` running on it fail."""
        await super().close()

    async def _closing(self) -> None:
        if self._host is not None:
            with contextlib.suppress(AsyncJobsError):
                await self._host.disconnect()

    def __repr__(self) -> str:
        return self._repr("asyncjobs.Session", self.name)


@final
class RemoteHostConnection:
    """What ``session.jobs`` talks through: the bridge, opened on first use."""

    def __init__(self, session: Session, options: dict[str, Any]) -> None:
        self._session = session
        #: How the job host session is opened (create=, idle_timeout=, ...); updated in place.
        self._options = options
        self._host: HostSession | None = None
        self._lock = anyio.Lock()

    async def host(self) -> HostSession:
        async with self._lock:
            if self._host is None:
                session = self._session
                self._host = await open_bridge(
                    session.connection,
                    session.where,
                    session.location,
                    name=session.name,
                    **self._options,
                )
                if session.name is None:
                    session.name = self._host.name
                # From now on the session exists: reattaching after a reconnect must find it
                # (had the host's idle_timeout ended it, recreating it empty would hide that).
                self._options["create"] = False
            return self._host

    async def connection(self) -> HostConnection:
        return connection_of(await self.host())

    def reset(self) -> None:
        """The connection was made again: the next request opens a new bridge, and the job
        host reattaches this session by name."""
        self._host = None

    async def disconnect(self) -> None:
        if self._host is not None:
            await self._host.disconnect()
            self._host = None
