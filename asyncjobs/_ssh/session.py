"""SSH connections on asyncssh: ``open_connection`` and ``SSHSession`` (a connection with its
channel slots and reconnect; the public ``Session`` in the remote glue builds on it).

This is the one place where asyncssh's and the operating system's connection errors become ours
(``map_ssh_errors``), and the one place that checks for asyncio: asyncssh runs only there, so on
trio every remote feature raises a clear error while local jobs keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import asyncssh
import attrs

from .._core.errors import (
    AsyncJobsError,
    ConnectionFailed,
    HostKeyError,
    ProtocolError,
)
from .config import HostConfig, HostKeys, check_files, resolve, usable_identities
from .defaults import with_client_defaults
from .handshakes import Destination, destination, handshake_limits, parse_hop
from .targets import Target

#: sshd's default ``MaxSessions``: more channels than this on one connection are refused.
DEFAULT_MAX_CHANNELS = 10


def require_asyncio(what: str) -> None:
    """Raise a clear error when a remote feature is used outside asyncio (e.g. on trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise AsyncJobsError(
            f"{what} needs asyncio: asyncssh, which carries remote jobs, runs only on asyncio. "
            "Run your program with anyio.run(main, backend='asyncio'); local jobs work on trio too."
        ) from None


@contextmanager
def map_ssh_errors(where: str, *, timeout: float | None = None) -> Iterator[None]:
    """Translate asyncssh and OS errors raised inside the block into ours, naming ``where``."""
    try:
        yield
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(
            f"{where}: host key not verified ({exc.reason}); add its key to known_hosts "
            "(ssh-keyscan) or pass known_hosts=",
            host=where,
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise ConnectionFailed(
            f"{where}: authentication refused ({exc.reason}); check username= and client_keys=",
            host=where,
            retryable=False,
        ) from exc
    except asyncssh.ChannelOpenError as exc:
        raise ConnectionFailed(
            f"{where}: the server refused a new channel ({exc.reason}); sshd's MaxSessions "
            "limits channels per connection: lower max_channels= or raise MaxSessions",
            host=where,
        ) from exc
    except asyncssh.ProtocolError as exc:
        raise ProtocolError(f"{where}: SSH protocol error: {exc.reason}") from exc
    except asyncssh.DisconnectError as exc:
        raise ConnectionFailed(f"{where}: disconnected: {exc.reason}", host=where) from exc
    except asyncssh.ConnectionLost as exc:
        raise ConnectionFailed(f"{where}: connection lost: {exc.reason}", host=where) from exc
    except TimeoutError as exc:
        after = f" after {timeout:g} s" if timeout is not None else ""
        raise ConnectionFailed(
            f"{where}: timed out{after}; the host may be down or overloaded "
            "(connect_timeout= sets the limit)",
            host=where,
        ) from exc
    except ConnectionRefusedError as exc:
        raise ConnectionFailed(
            f"{where}: connection refused; is sshd listening on that port?", host=where
        ) from exc
    except OSError as exc:
        raise ConnectionFailed(f"{where}: {exc.strerror or exc}", host=where) from exc


@attrs.frozen
class ConnectTimings:
    """How long opening a connection took, by phase (seconds)."""

    connect: float  # TCP connect
    auth: float  # SSH handshake and authentication


async def open_connection(
    target: Target,
    options: dict[str, Any],
    *,
    startups: anyio.CapacityLimiter | None = None,
) -> tuple[asyncssh.SSHClientConnection, ConnectTimings]:
    """Connect and authenticate to ``target`` with asyncssh ``options`` passed through as given
    (``~/.ssh/config`` — Hostname, Port, User, ProxyJump, ... — applies as with ``ssh``).

    ``connect_timeout`` (default 30 s) covers TCP connect, handshake and authentication. The
    TCP connect is timed apart from the rest through the client's ``connection_made``. Where
    the caller and the SSH config choose none, asyncjobs's defaults apply: AES-GCM first on CPUs
    with AES instructions, keepalives every 15 s (see ``defaults``). Beyond asyncssh, the
    config's ``StrictHostKeyChecking`` decides about keys known_hosts does not list, and every
    error names the host, user and port actually used (see ``config``). A file the caller
    named that does not exist is a ``JobArgumentError`` before anything connects.

    From the TCP connect until authentication is done the connection holds a handshake slot
    of its destination (its resolved address and port, and every jump host's: see
    ``handshakes``) and, if given, one of ``startups`` (``invoke(max_startups=)``); waiting
    for them does not count towards ``connect_timeout``.
    """
    require_asyncio("connecting to a host")
    options = dict(with_client_defaults(options))  # AES-GCM first, keepalives
    check_files(options)
    port = target.port or options.pop("port", None) or ()
    if target.username is not None:
        options["username"] = target.username
    config = resolve(target.host, port, options)
    where = config.where
    keys = HostKeys.of(config, options)
    keys.apply(options)
    usable_identities(config, options)
    timeout = options.pop("connect_timeout", 30.0)
    made: list[float] = []
    if "client_factory" not in options:
        options["client_factory"] = functools.partial(_TimedClient, made, keys)
    hops = await _destinations(config, options)
    async with handshake_limits().slots(hops, startups):
        t0 = time.perf_counter()
        with map_ssh_errors(where, timeout=timeout), anyio.fail_after(timeout):
            try:
                conn = await _connect_through_resets(where, target.host, port, options, made)
                await _logged_in(conn)
            except asyncssh.HostKeyNotVerifiable as exc:
                raise HostKeyError(keys.refusal(exc.reason), host=where) from exc
    conn.set_extra_info(asyncjobs_where=where)
    t2 = time.perf_counter()
    t1 = made[0] if made else t2
    return conn, ConnectTimings(connect=t1 - t0, auth=t2 - t1)


async def _destinations(config: HostConfig, options: dict[str, Any]) -> list[Destination]:
    """The destinations whose handshake slots a connection holds: the host's, and those of
    the jump hosts of ``tunnel=`` or the config's ``ProxyJump``. A host behind a jump host is
    named as written (the jump host resolves it), as are the hops after the first."""
    tunnel = options.get("tunnel", ())
    jump = tunnel if isinstance(tunnel, str) else config.proxy_jump if tunnel == () else None
    through = jump is not None or tunnel not in ((), None)
    found = [await destination(config.host, config.port, resolve=not through)]
    for i, hop in enumerate((jump or "").split(",") if jump else ()):
        host, port = parse_hop(hop)
        if not host:
            continue
        files = {"config": options.get("config", ())}
        hop_config = resolve(host, () if port is None else port, files)
        found.append(await destination(hop_config.host, hop_config.port, resolve=i == 0))
    return found


async def _logged_in(conn: asyncssh.SSHClientConnection) -> None:
    """Wait until the server has counted the login as done, so that the handshake slot is
    given back only then.

    OpenSSH's sshd authenticates in a child that sends the client its success *before* it
    exits and the monitor tells the listener (which then stops counting the connection
    against ``MaxStartups``): a client that starts its next handshake on the success alone
    runs ahead of that count. A keepalive's reply comes from the process that serves the
    logged-in connection, which the monitor forks after telling the listener. (asyncssh has
    no public request with a reply; a build without this method just skips the wait.)"""
    request = getattr(conn, "_make_global_request", None)
    if request is not None:
        await request(b"keepalive@openssh.com")


def where_of(conn: asyncssh.SSHClientConnection, target: Target) -> str:
    """How messages name the host of ``conn``: ``host web1 (ops@10.0.0.7:22)``, with the
    host, user and port actually used (``open_connection`` notes it on the connection)."""
    where = conn.get_extra_info("asyncjobs_where")
    if isinstance(where, str):
        return where
    port = conn.get_extra_info("port") or target.port or 22
    return f"host {target.host}:{port}"


#: How often a connection reset during the handshake is retried before it counts as a failure.
RESET_RETRIES = 5


async def _connect_through_resets(
    where: str, host: str, port: int | tuple[()], options: dict[str, Any], made: list[float]
) -> asyncssh.SSHClientConnection:
    """``asyncssh.connect``, retrying resets during the handshake with jittered backoff.

    sshd's ``MaxStartups`` (10:30:100 by default) drops a share of concurrent unauthenticated
    connections at random; a fan-out to one host easily hits it. The outer ``connect_timeout``
    still bounds the whole.
    """
    delay = 0.05
    for attempt in range(RESET_RETRIES + 1):
        made.clear()
        try:
            return await asyncssh.connect(host, port, **options)
        except (ConnectionResetError, asyncssh.ConnectionLost) as exc:
            if attempt == RESET_RETRIES:
                raise ConnectionFailed(
                    f"{where}: the connection was reset during the handshake "
                    f"{RESET_RETRIES + 1} times; sshd's MaxStartups may be refusing concurrent "
                    "connections: lower throttle_limit= or raise MaxStartups on the host",
                    host=where,
                ) from exc
        await anyio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


class _TimedClient(asyncssh.SSHClient):
    """Notes when the TCP connection is made, before the SSH handshake starts, and keeps
    delayed ACKs off on it (see ``quick_acks``); a host key that known_hosts does not list is
    left to the ``StrictHostKeyChecking`` policy of ``keys``."""

    def __init__(self, made: list[float], keys: HostKeys | None = None) -> None:
        self._made = made
        self._keys = keys

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._made.append(time.perf_counter())
        quick_acks(conn)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._keys is not None and self._keys.accept(host, addr, port, key)


#: A socket read at least this big is bulk data, after which QUICKACK is not re-armed (setting
#: it ACKs every segment at once; measured, that cost ~0.2 s of CPU per GB streamed).
_BULK_READ = 16 * 1024


def quick_acks(conn: asyncssh.SSHClientConnection) -> None:
    """Re-arm ``TCP_QUICKACK`` after every read on the connection's socket (Linux).

    sshd sends its first replies on a session in two small writes without ``TCP_NODELAY``;
    Nagle holds the second until our delayed ACK fires, 40 ms later. Linux clears QUICKACK
    after it is used, so setting it once is not enough: it is set again after each small read
    (setting it also sends the ACK that was being delayed).
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    sock = conn.get_extra_info("socket")
    if option is None or sock is None:
        return
    received = conn.data_received

    def data_received(data: bytes, datatype: int | None = None) -> None:
        received(data, datatype)
        if len(data) < _BULK_READ:  # a bulk stream needs no quick ACKs: each costs kernel CPU
            with contextlib.suppress(OSError):  # the socket is closing: nothing to speed up
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    conn.data_received = data_received  # type: ignore[method-assign]


class SSHSession:
    """A persistent SSH connection to one host: the connection, its channels, reconnecting.

    Remote jobs on a session share its one connection as separate channels, at most
    ``max_channels`` at once (sshd's ``MaxSessions``, 10 by default: one of them is kept free so
    that ``stop()`` can always reach the host). The public ``asyncjobs.Session`` builds on this
    (its job host, ``invoke``); the fan-out's temporary connections are bare ``SSHSession``s.
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        target: Target,
        *,
        max_channels: int,
        timings: ConnectTimings | None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._conn = conn
        self._options = dict(options or {})
        #: Bounds opening a channel, as ``connect_timeout`` bounds connecting.
        self.channel_timeout = float(self._options.get("connect_timeout", 30.0))
        self._generation = 0  # how many times the connection was made again
        self._reconnecting = anyio.Lock()
        self._target = target
        self.host = target.host
        #: The port actually connected to (the SSH config's ``Port`` included).
        self.port: int = conn.get_extra_info("port") or target.port or 22
        self.username: str | None = conn.get_extra_info("username")
        self.timings = timings
        self.max_channels = max_channels
        self._job_channels = anyio.CapacityLimiter(max(1, max_channels - 1))
        self._control_channels = anyio.CapacityLimiter(1)
        self._closed = False

    @property
    def location(self) -> str:
        return self._target.location

    @property
    def where(self) -> str:
        """How messages name the host: its name, and the user, address and port used."""
        return where_of(self._conn, self._target)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connection(self) -> asyncssh.SSHClientConnection:
        """The underlying asyncssh connection, for what asyncjobs does not wrap."""
        return self._conn

    @asynccontextmanager
    async def job_channel(self) -> AsyncIterator[None]:
        """Hold one of the ``max_channels - 1`` channel slots for a command (waiting for one if
        all are taken; no checkpoint when one is free: commands are short)."""
        slots = self._job_channels
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    @asynccontextmanager
    async def control_channel(self) -> AsyncIterator[None]:
        """Hold the one channel kept free for control (``stop()``'s kill reaches the host even
        when every job channel is taken)."""
        async with self._control_channels:
            yield

    @property
    def generation(self) -> int:
        """Bumped by every ``reconnect()``: who saw the link drop at generation N reconnects
        only if nobody has since."""
        return self._generation

    async def reconnect(self, seen: int | None = None) -> None:
        """Make the connection again, with the same options (see ``_reconnected`` for what a
        subclass does then). Raises ``ConnectionFailed`` if the host can't be reached now.
        ``seen``: the generation the caller saw fail; if the session has been reconnected
        since, this returns at once."""
        async with self._reconnecting:
            if seen is not None and seen != self._generation:
                return
            conn, timings = await open_connection(self._target, self._options)
            old, self._conn = self._conn, conn
            self.timings = timings
            self._generation += 1
            self._reconnected()
            old.close()

    def _reconnected(self) -> None:
        """Called once the connection has been made again (a subclass resets what ran on the
        old one)."""

    async def _closing(self) -> None:
        """Called (shielded) before the connection is closed; errors are the subclass's to
        handle."""

    async def close(self) -> None:
        """Close the connection; remote commands running on it fail."""
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._closing()
                self._conn.close()
                await self._conn.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def statistics(self) -> dict[str, Any]:
        return {
            "channels_in_use": int(self._job_channels.borrowed_tokens),
            "channels_waiting": self._job_channels.statistics().tasks_waiting,
            "max_channels": self.max_channels,
            "closed": self._closed,
        }

    def _repr(self, kind: str, name: str | None) -> str:
        shown = f" {name!r}" if name else ""
        state = "closed" if self._closed else "open"
        user = f"{self.username}@" if self.username else ""
        return (
            f"<{kind}{shown} {user}{self.location} {state} "
            f"channels={int(self._job_channels.borrowed_tokens)}/{self.max_channels}>"
        )

    def __repr__(self) -> str:
        return self._repr("asyncjobs.SSHSession", None)
