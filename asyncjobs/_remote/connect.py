"""The entry points to a host: ``connect()`` (New-PSSession) and ``get_sessions()``
(Get-PSSession).

They live here, above both the SSH layer and the job host, because a ``Session`` is both: an SSH
connection and, through it, a session on the host's job host. ``get_sessions()`` without a host
asks this machine's job host (``_host.client.get_local_sessions``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from .._core import checks
from .._core.errors import JobArgumentError
from .._core.util import Opener
from .._host.client import get_local_sessions
from .._host.protocol import SessionInfo
from .._ssh.config import check_files
from .._ssh.session import DEFAULT_MAX_CHANNELS, open_connection
from .._ssh.targets import Target
from .remotehost import remote_sessions
from .session import Session


def _target(host: str, port: int, username: str | None) -> Target:
    """``host`` (maybe ``user@host:port``), with ``port`` and ``username`` where it has none."""
    target = Target.parse(host)
    if port != 22 and target.port is None:
        target = attrs.evolve(target, port=port)
    if username is not None:
        target = attrs.evolve(target, username=username)
    return target


def _check_max_channels(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise JobArgumentError(
            f"max_channels must be an int >= 2 (one channel is kept for stop), got {value!r}"
        )
    return value


def connect(
    host: str,
    port: int = 22,
    username: str | None = None,
    name: str | None = None,
    *,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    idle_timeout: float | None = None,
    output_buffering: Literal["block", "drop"] | None = None,
    create: bool = True,
    **ssh_options: Any,
) -> Opener[Session]:
    """Open a persistent session to ``host`` (New-PSSession): ``await`` it or ``async with`` it.

    ``host`` may also be a target string (``user@host:port``). Every asyncssh client option
    passes through (``known_hosts``, ``client_keys``, ``config`` — ``~/.ssh/config`` is read by
    default —, ``tunnel``, ``connect_timeout``, ``keepalive_interval``, ...). Host keys are
    verified against ``known_hosts`` by default.

    ``name`` names the session on the host's job host (``session.jobs``): ``connect(host,
    name=...)`` from any process reattaches to it. A new name creates it, unless
    ``create=False``: then an unknown name is an error listing the sessions there.
    ``idle_timeout`` (seconds a disconnected session waits before its jobs are stopped) and
    ``output_buffering`` (``"block"`` or ``"drop"`` while disconnected) apply to a new session,
    as for ``connect_local``.
    """
    target = _target(host, port, username)
    _check_max_channels(max_channels)
    host_session = checks.session_options(name, idle_timeout, output_buffering, create)
    check_files(ssh_options)  # client_keys=, known_hosts=, config= that don't exist: now

    async def opening() -> Session:
        conn, timings = await open_connection(target, ssh_options)
        return Session(
            conn,
            target,
            name=name,
            max_channels=max_channels,
            timings=timings,
            options=ssh_options,
            host_session=host_session,
        )

    return Opener(opening, Session.close)


async def get_sessions(
    host: str | None = None, port: int = 22, username: str | None = None, **ssh_options: Any
) -> list[SessionInfo]:
    """Get-PSSession: the sessions on a host's job host (over SSH, with ``ssh_options`` as
    for ``connect``); ``None``: this machine's job host."""
    if host is None:
        return await get_local_sessions()
    return await remote_sessions(_target(host, port, username), ssh_options)
