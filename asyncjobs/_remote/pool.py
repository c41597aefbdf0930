"""Warm SSH connections: a pool, keyed by user, host, port and options, that keeps the
connections fan-outs open for a while after they end (OpenSSH's ``ControlPersist``).

The local job host holds one (``_remote.warm``), so that the next ``asyncjobs invoke`` to the
same hosts opens channels on connections that are already authenticated instead of connecting
again. A connection is held ``persist`` seconds after its last use, then closed. One that is
found closed when it is leased (its host died or restarted) is made again, once, as a new
connection would be: with the same host-key check, so a host whose key changed is refused.
The pool lives in the user's private job host (its socket directory is 0700), never shared.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs

from .._ssh.session import DEFAULT_MAX_CHANNELS, ConnectTimings, SSHSession, open_connection
from .._ssh.targets import Target

#: How long a connection is held after its last use, unless the caller says (``--persist``).
DEFAULT_PERSIST = 60.0


def known_hosts_state(target: Target, options: dict[str, Any]) -> tuple[Any, ...]:
    """The known_hosts files that check ``target``'s key (the SSH config's and the options'),
    each as (path, mtime, size): a held connection is used again only while this is the same,
    so a key removed, changed or marked revoked since is checked by a new connection."""
    from .._ssh.config import HostKeys, resolve

    port = target.port or options.get("port") or ()
    given = dict(options)
    if target.username is not None:
        given["username"] = target.username
    state: list[tuple[Any, ...]] = []
    for path in HostKeys.of(resolve(target.host, port, given), given).files:
        try:
            st = os.stat(os.path.expanduser(path))
        except OSError:
            state.append((path, None))
        else:
            state.append((path, st.st_mtime_ns, st.st_size))
    return tuple(state)


def pool_key(target: Target, options: dict[str, Any]) -> str:
    """What makes two connections the same: user, host, port and every option (as JSON)."""
    return json.dumps(
        [target.username, target.host, target.port, options], sort_keys=True, default=str
    )


@attrs.define(eq=False)
class Held:
    """One held connection: its session, how many children use it now, until when it stays."""

    key: str
    session: SSHSession
    opened: float = attrs.Factory(time.time)
    last_used: float = attrs.Factory(time.monotonic)
    persist: float = DEFAULT_PERSIST
    users: int = 0
    uses: int = 0  # leases so far (the first one connected)
    known: tuple[Any, ...] = ()  # ``known_hosts_state`` when it connected
    retired: bool = False  # out of the pool: closed once its last user is done

    def info(self) -> dict[str, Any]:
        """What ``session list --connections`` shows of it."""
        s = self.session
        idle = 0.0 if self.users else time.monotonic() - self.last_used
        return {
            "target": s.location,
            "user": s.username,
            "host": s.host,
            "port": s.port,
            "channels": int(s.statistics()["channels_in_use"]),
            "uses": self.uses,
            "idle": round(idle, 1),
            "expires_in": None if self.users else round(max(0.0, self.persist - idle), 1),
            "opened_at": self.opened,
        }


class ConnectionPool:
    """Held connections by ``pool_key``; ``lease`` one (connecting if none is held or the held
    one is closed), ``expire`` closes those idle past their ``persist``, ``close`` all."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}
        self._connecting: dict[str, anyio.Lock] = {}

    def __len__(self) -> int:
        return len(self._held)

    def listed(self) -> list[dict[str, Any]]:
        return [h.info() for h in self._held.values()]

    @asynccontextmanager
    async def lease(
        self,
        target: Target,
        options: dict[str, Any],
        *,
        persist: float,
        connect: Any = None,
    ) -> AsyncIterator[tuple[SSHSession, ConnectTimings | None, bool]]:
        """A session to ``target``: ``(session, timings, warm)``. ``timings`` are the
        connection's own when this lease made it (else None), ``warm`` says it was held.
        ``connect`` (``(target, options) -> (conn, timings)``) makes a new connection, by
        default ``open_connection``; its errors propagate, and nothing is held then."""
        key = pool_key(target, options)
        lock = self._connecting.setdefault(key, anyio.Lock())
        async with lock:  # one connection per key: the others wait for it, then share it
            held = self._held.get(key)
            known = known_hosts_state(target, options)
            if held is not None and (
                held.session.closed or held.session.connection.is_closed() or held.known != known
            ):
                # Its host died or restarted (connect again, once), or known_hosts changed
                # since (a new connection checks the key again): this one is not used.
                del self._held[key]
                held.retired = True
                if not held.users:
                    await held.session.close()
                held = None
            timings: ConnectTimings | None = None
            warm = held is not None
            if held is None:
                conn, timings = await (connect or open_connection)(target, options)
                session = SSHSession(
                    conn, target, max_channels=DEFAULT_MAX_CHANNELS, timings=timings,
                    options=options,
                )  # fmt: skip
                held = Held(key, session, known=known)
                self._held[key] = held
            held.users += 1
            held.uses += 1
            held.persist = persist
        try:
            yield held.session, timings, warm
        finally:
            held.users -= 1
            held.last_used = time.monotonic()
            if held.retired and not held.users:
                await held.session.close()  # shielded itself

    async def expire(self, now: float | None = None) -> int:
        """Close the connections idle past their ``persist`` (and any found closed)."""
        now = time.monotonic() if now is None else now
        gone = [
            h
            for h in self._held.values()
            if not h.users and (now - h.last_used >= h.persist or h.session.connection.is_closed())
        ]
        for held in gone:
            if self._held.get(held.key) is held:
                del self._held[held.key]
            await held.session.close()
        return len(gone)

    async def close(self) -> None:
        held, self._held = list(self._held.values()), {}
        with anyio.CancelScope(shield=True):
            for h in held:
                await h.session.close()
