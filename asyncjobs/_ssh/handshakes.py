"""Handshake slots: how many SSH handshakes are in flight at once, per destination and in all.

sshd drops unauthenticated connections beyond its ``MaxStartups`` (``10:30:100`` by default:
from the 11th connection still authenticating, 30 % are dropped at random, rising to all of
them at 100), so a fan-out of 200 targets behind one address, or one jump host, fails at
random. Every connection asyncjobs opens therefore holds a **slot of its destination** (the
resolved address and port: two names for one address share it) from the TCP connect until
authentication is done; then the slot is free again (the connection's channels never count).
At most ``DEFAULT_PER_DESTINATION`` (8, below sshd's 10) slots per destination are held at
once, per event loop (a ``RunVar``: every fan-out and ``connect()`` of a program share them).
A jump host (``ProxyJump``, ``tunnel=``) is a destination of its own: a connection through it
holds a slot of each hop too. ``invoke(max_startups=N)`` adds a cap over all destinations of
one fan-out, held the same way.

Slots are taken in one order (sorted by destination), so two connections that share hops can
never wait for each other.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final, final

import anyio
import attrs
from anyio.lowlevel import RunVar

#: Handshakes in flight per destination (address, port) at most: below sshd's default
#: ``MaxStartups`` of 10, from which it starts dropping connections.
DEFAULT_PER_DESTINATION: Final = 8

#: A destination: an address (or, where it can't be resolved here, the name) and a port.
Destination = tuple[str, int]


@final
@attrs.define(eq=False)
class HandshakeLimits:
    """The handshake slots of one event loop, by destination (``handshake_limits()``).

    ``per_destination`` may be changed while connections wait (the waiting ones see it).
    ``statistics()`` counts the handshakes in flight and the most seen at once on one
    destination (``peak``)."""

    per_destination: int = DEFAULT_PER_DESTINATION
    _slots: dict[Destination, anyio.CapacityLimiter] = attrs.field(factory=dict, init=False)
    _peak: int = attrs.field(default=0, init=False)

    def _limiter(self, destination: Destination) -> anyio.CapacityLimiter:
        limiter = self._slots.get(destination)
        if limiter is None:
            limiter = self._slots[destination] = anyio.CapacityLimiter(self.per_destination)
        elif limiter.total_tokens != self.per_destination:
            limiter.total_tokens = self.per_destination
        return limiter

    @asynccontextmanager
    async def slots(
        self, destinations: Sequence[Destination], overall: anyio.CapacityLimiter | None = None
    ) -> AsyncIterator[None]:
        """Hold a slot of ``overall`` (if given) and of every one of ``destinations``, waiting
        for each in turn, for the duration of the block (a handshake)."""
        async with AsyncExitStack() as stack:
            if overall is not None:
                await stack.enter_async_context(overall)
            for destination in sorted(set(destinations)):
                limiter = self._limiter(destination)
                stack.callback(self._released, destination, limiter)
                await limiter.acquire()
                # Released before the forgetting callback above runs (exit order is reversed).
                stack.callback(limiter.release)
                self._peak = max(self._peak, int(limiter.borrowed_tokens))
            yield

    def _released(self, destination: Destination, limiter: anyio.CapacityLimiter) -> None:
        """Forget a destination nobody holds or waits for (the table stays small)."""
        stats = limiter.statistics()
        idle = not stats.borrowed_tokens and not stats.tasks_waiting
        if idle and self._slots.get(destination) is limiter:
            del self._slots[destination]

    def statistics(self) -> dict[str, Any]:
        limiters = list(self._slots.values())
        return {
            "per_destination": self.per_destination,
            "in_flight": sum(int(limiter.borrowed_tokens) for limiter in limiters),
            "waiting": sum(limiter.statistics().tasks_waiting for limiter in limiters),
            "destinations": len(limiters),
            "peak": self._peak,
        }

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<asyncjobs HandshakeLimits per_destination={self.per_destination} "
            f"in_flight={stats['in_flight']} destinations={stats['destinations']}>"
        )


_LIMITS: RunVar[HandshakeLimits] = RunVar("asyncjobs_handshake_limits")


def handshake_limits() -> HandshakeLimits:
    """This event loop's handshake slots (made on first use)."""
    try:
        return _LIMITS.get()
    except LookupError:
        limits = HandshakeLimits()
        _LIMITS.set(limits)
        return limits


async def destination(host: str, port: int, *, resolve: bool = True) -> Destination:
    """``(address, port)`` of ``host`` as this machine resolves it (the first address), so
    that two names of one address share its slots. A name that does not resolve (or, with
    ``resolve=False``, a name a jump host resolves) stays a name: connecting then says why."""
    bare = host.strip("[]")
    try:
        return str(ipaddress.ip_address(bare)), port
    except ValueError:
        pass
    if not resolve:
        return bare.lower(), port
    try:
        found = await anyio.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except OSError:
        return bare.lower(), port
    return (str(found[0][4][0]), port) if found else (bare.lower(), port)


def parse_hop(text: str) -> tuple[str, int | None]:
    """One hop of a ``ProxyJump`` list (``[user@]host[:port]``, ``[::1]:22``): host and port."""
    text = text.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :]
    _, _, hostport = text.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:
        host, port = hostport, ""
    return host, int(port) if port.isdigit() else None
