"""``JobManager``'s methods that reach other hosts: ``invoke`` (a fan-out), ``copy`` and
``gather`` (files over SFTP), and the connections ``invoke(persist=)`` holds. Each imports the
remote glue (asyncssh) only when it is called, so a program of local jobs never loads it; the
fan-outs add their jobs to the manager through ``Table`` (a ``JobTable``), never importing it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol, cast, final

import attrs
from anyio.abc import TaskGroup

from .._core import checks
from .._core.errors import JobArgumentError
from .._core.job import Job, JobKind
from .._core.models import Buffer

if TYPE_CHECKING:
    from .._core.table import FailurePolicy, SessionTarget

#: sshd's MaxSessions default (asyncjobs._ssh.session keeps the same number).
DEFAULT_MAX_CHANNELS = 10


class RemoteMethods:
    """The remote half of ``JobManager`` (a mixin: the manager owns the state it uses)."""

    stop_grace: float
    _pool: Any
    _exits: AsyncExitStack | None

    def _table(self) -> Table:
        return Table(cast(_Owner, self))

    async def invoke(
        self,
        targets: Sequence[str | SessionTarget] | str | SessionTarget,
        command: str | Sequence[str],
        /,
        *,
        name: str | None = None,
        throttle_limit: int = 32,
        on_failure: FailurePolicy = "continue",
        retries: int = 0,
        timeout: float | None = None,
        buffer: Buffer | None = None,
        stop_grace: float | None = None,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        lines: bool = True,
        input: str | bytes | None = None,
        max_startups: int | None = None,
        idle_timeout: float | None = None,
        become: bool | str | None = None,
        become_password: str | None = None,
        persist: float | None = None,
        engine: Any = None,
        output: str = "text",
        clock: bool = False,
        probe: bool = False,
        **ssh_options: Any,
    ) -> Job:
        """Run ``command`` on every target (Invoke-Command -AsJob): a parent ``RemoteJob`` with
        one child per target, in argument order, ``child.location`` its host.

        Targets are host strings (``host``, ``user@host:port``, ``[::1]:2222``: a temporary
        connection, closed when the child finishes) or ``Session``s (kept open). At most
        ``throttle_limit`` children connect or run at once. One host's failure fails only its
        child; ``on_failure="fail_fast"`` (or a failure fraction such as ``0.1``) stops the rest
        instead. ``retries`` retries connection-level failures (never auth or host-key ones)
        with backoff; ``timeout`` bounds the command, ``connect_timeout=`` the connection.
        ``lines=False`` passes stdout and stderr through as ``bytes`` chunks (not on named
        sessions, whose job host keeps lines). ``input`` (``str`` or ``bytes``) goes to every
        target's stdin, then EOF; without it stdin gets EOF at once. ``idle_timeout`` fails a
        host whose command sent nothing (stdout nor stderr) for that many seconds ("no output
        for S s"), its process group killed. SSH handshakes are limited to 8 in flight per
        destination (address and port: sshd's ``MaxStartups`` drops more); ``max_startups``
        caps them over all targets too. ``become=True`` runs the command through ``sudo`` (as
        root; ``become="USER"``: as USER), ``become_password`` answering sudo's prompt on every
        host (without it, ``sudo -n``: for NOPASSWD rules); a wrong one fails the host with
        "sudo: wrong password" at once. The password is never in a record, an error, a log or
        an argv; the command's ``input`` reaches it after sudo has started it. ``become`` is
        not available on named sessions. Every other keyword is an asyncssh client option for
        the temporary connections.
        ``persist=S`` keeps the connections to host strings open S seconds after their child
        ends, in this manager, and a later ``invoke`` to the same user, host, port and options
        opens its channels on them instead of connecting again (OpenSSH's ControlPersist; one
        found closed is made again, once); they close when the manager does. ``engine``: where
        the fan-out runs (default: here); the command line passes one that runs it on the
        local job host's held connections (``invoke --persist``).
        Benchmarks (docs/harness.md): ``output="json"`` parses stdout lines as JSON; ``clock``
        and ``probe`` set ``child.clock`` and ``child.host_info`` before the command.
        Needs asyncio (asyncssh); returns at once with the children scheduled.
        """
        # ``engine``: where the fan-out runs (``fanout``'s contract): here by default (asyncssh,
        # imported only by programs that invoke), or on the job host's held connections
        # (``_remote.warmclient.WarmEngine``, which needs no asyncssh here).
        if engine is None:
            from .._remote import fanout as engine
        start_invoke = engine.start_invoke

        timeout = checks.timeout(timeout)
        stop_grace = self.stop_grace if stop_grace is None else checks.grace(stop_grace)
        job: Job = await start_invoke(
            self._table(),
            targets,
            command,
            name=name,
            throttle_limit=throttle_limit,
            on_failure=on_failure,
            retries=retries,
            timeout=timeout,
            buffer=buffer,
            stop_grace=stop_grace,
            max_channels=max_channels,
            lines=lines,
            ssh_options=ssh_options,
            input=input,
            max_startups=max_startups,
            idle_timeout=idle_timeout,
            become=become,
            become_password=become_password,
            **await self._pool_for(persist),
            output=output,
            clock=clock,
            probe=probe,
        )
        return job

    async def copy(
        self, targets: Sequence[str | SessionTarget] | str | SessionTarget,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], dest: str, /, *,
        recursive: bool = False, preserve: bool = False, name: str | None = None,
        throttle_limit: int = 32, on_failure: FailurePolicy = "continue", retries: int = 0,
        buffer: Buffer | None = None, max_startups: int | None = None, **ssh_options: Any,
    ) -> Job:  # fmt: skip
        """Push local files to ``dest`` on every target over SFTP (Copy-Item -ToSession; pdcp):
        a parent ``RemoteJob``, a child per target (``progress``: bytes done of the total; an
        ``output`` record per file). Sources are checked before anything connects; scp's
        placing rules, ``recursive``, ``preserve`` (mode and times) and the rest as ``invoke``:
        docs/remote-jobs.md, "Files to and from many hosts"."""
        from .._remote.transfer import start_copy  # asyncssh: only for programs that copy

        return await start_copy(
            self._table(), targets, sources, dest, name=name, recursive=recursive,
            preserve=preserve, throttle_limit=throttle_limit, on_failure=on_failure,
            retries=retries, buffer=buffer, max_startups=max_startups, ssh_options=ssh_options,
        )  # fmt: skip

    async def gather(
        self, targets: Sequence[str | SessionTarget] | str | SessionTarget,
        sources: str | Sequence[str], directory: str | os.PathLike[str], /, *,
        recursive: bool = False, preserve: bool = False, max_bytes: int | None = None,
        missing_ok: bool = False, name: str | None = None, throttle_limit: int = 32,
        on_failure: FailurePolicy = "continue", retries: int = 0, buffer: Buffer | None = None,
        max_startups: int | None = None, **ssh_options: Any,
    ) -> Job:  # fmt: skip
        """Pull remote files (paths or glob patterns) from every target into
        ``directory/<host>/`` over SFTP (rpdcp): a parent ``RemoteJob``, a child per target. No
        remote name leaves its host's directory; ``max_bytes`` caps each host (more fails it
        before anything is fetched): docs/remote-jobs.md, "Files to and from many hosts"."""
        from .._remote.transfer import start_gather  # asyncssh: only for programs that gather

        return await start_gather(
            self._table(), targets, sources, directory, name=name, recursive=recursive,
            preserve=preserve, max_bytes=max_bytes, missing_ok=missing_ok,
            throttle_limit=throttle_limit, on_failure=on_failure, retries=retries,
            buffer=buffer, max_startups=max_startups, ssh_options=ssh_options,
        )  # fmt: skip

    def held_connections(self) -> list[dict[str, Any]]:
        """The SSH connections ``invoke(persist=)`` holds: target, user, host, port, channels
        in use, uses, idle seconds and seconds until closed (None while in use)."""
        return [] if self._pool is None else self._pool.listed()

    async def close_idle_connections(self) -> int:
        """Close the held connections idle past their ``persist`` now (``invoke`` does it too,
        before it leases); how many were closed."""
        return 0 if self._pool is None else await self._pool.expire()

    async def _pool_for(self, persist: float | None) -> dict[str, Any]:
        """``start_invoke``'s ``pool`` and ``persist`` for ``invoke(persist=)``: the manager's
        one pool (made on first use, closed with the manager); its expired ones closed now."""
        if persist is None:
            return {}
        persist = checks.timeout(persist, "persist")
        if persist is None or persist <= 0:
            raise JobArgumentError(
                f"persist must be a number of seconds > 0 or None, got {persist!r}"
            )
        from .._remote.pool import ConnectionPool

        if self._pool is None:
            assert self._exits is not None
            self._pool = pool = ConnectionPool()
            self._exits.push_async_callback(pool.close)
        await self._pool.expire()
        return {"pool": self._pool, "persist": persist}


class _Owner(Protocol):
    """What ``Table`` uses of the ``JobManager`` (which imports this module, not the reverse)."""

    def _open_group(self) -> TaskGroup: ...
    def _new_job(
        self, name: str | None, kind: JobKind, command: str, buffer: Buffer | None, *,
        location: str = "localhost",
    ) -> Job: ...  # fmt: skip
    def _add_parent(
        self, name: str | None, kind: JobKind, command: str, children: list[Job]
    ) -> Job: ...


@final
@attrs.frozen
class Table:
    """This manager as the ``JobTable`` a fan-out adds its jobs to (without importing it)."""

    manager: _Owner

    def task_group(self) -> TaskGroup:
        return self.manager._open_group()

    def new_job(
        self,
        name: str | None,
        kind: JobKind,
        command: str,
        buffer: Buffer | None,
        *,
        location: str = "localhost",
    ) -> Job:
        return self.manager._new_job(name, kind, command, buffer, location=location)

    def add_parent(self, name: str | None, kind: JobKind, command: str, children: list[Job]) -> Job:
        return self.manager._add_parent(name, kind, command, children)
