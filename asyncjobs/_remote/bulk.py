"""A connection made ready for bulk data (copy and gather): fewer packets, fewer writes.

Two things asyncssh does per packet cost a process that moves hundreds of MiB most of its CPU
(measured with ``benchmarks/bench_copy.py``, 4 hosts, 256 MiB each):

- **An SSH_MSG_IGNORE before every packet.** asyncssh inserts one ahead of each packet it
  encrypts: the old defence of CBC ciphers against a predictable IV (RFC 4251, 9.3.1). Under an
  AEAD cipher (AES-GCM, ChaCha20-Poly1305) or a counter mode there is no such IV to predict, so
  the empty packet only doubles the packets to frame, encrypt and write. ``quiet_ignores``
  drops exactly those (an empty ignore from asyncssh itself) when the negotiated cipher is not
  a CBC one; under CBC nothing changes.
- **One socket write per packet.** ``coalesced_writes`` gathers the packets sent in one turn of
  the event loop and writes them with one ``write``: the kernel gets a few large writes instead
  of many 32 KiB ones. What is gathered is written before the transport closes or aborts, and
  at once past ``FLUSH_AT`` bytes, so it is never held back or reordered.

Both act on one connection, the one a copy or gather child opened for itself (never a session
the caller owns), and fall back to doing nothing if asyncssh's internals are not as expected.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import asyncssh

#: Write what is gathered at once beyond this (the rest of the turn starts a new batch).
FLUSH_AT: Final = 1 << 20
_EMPTY_IGNORE: Final = (b"\0\0\0\0",)  # asyncssh's String(b"")


class _Unlogged:
    """The ``handler`` asyncssh's ``send_packet`` logs a sent packet through (only that): one
    that formats nothing, for when packet logging is off (asyncssh's debug level below 3, where
    its own logger would format the line and then drop it)."""

    def log_sent_packet(self, *args: Any, **kwargs: Any) -> None:
        pass


_UNLOGGED: Final = _Unlogged()


def prepare(conn: asyncssh.SSHClientConnection) -> None:
    """Both of the module docstring's changes on ``conn`` (each only if it can be made)."""
    quiet_ignores(conn)
    coalesced_writes(conn)


def quiet_ignores(conn: asyncssh.SSHClientConnection) -> bool:
    """Stop asyncssh's ignore-before-every-packet on ``conn`` unless its cipher is CBC."""
    cipher = conn.get_extra_info("send_cipher")
    send = getattr(conn, "send_packet", None)
    if not isinstance(cipher, str) or "cbc" in cipher.lower() or send is None:
        return False
    ignore = asyncssh.constants.MSG_IGNORE
    logged = getattr(asyncssh.logging.SSHLogger, "_debug_level", 3) >= 3

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == ignore and args == _EMPTY_IGNORE and handler is None:
            return
        send(pkttype, *args, handler=handler if logged else _UNLOGGED)

    conn.send_packet = send_packet  # type: ignore[method-assign]
    return True


def coalesced_writes(conn: asyncssh.SSHClientConnection) -> bool:
    """Write the packets of one event loop turn with one transport write."""
    transport = getattr(conn, "_transport", None)
    if not isinstance(transport, asyncio.Transport) or not callable(getattr(conn, "_send", None)):
        return False
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []
    size = [0]
    write = transport.write

    def flush() -> None:
        if pending:
            data = b"".join(pending)
            pending.clear()
            size[0] = 0
            if not transport.is_closing():
                write(data)

    def send(data: bytes) -> None:
        if not pending:
            loop.call_soon(flush)
        pending.append(data)
        size[0] += len(data)
        if size[0] >= FLUSH_AT:
            flush()

    close, abort = transport.close, transport.abort

    def closing() -> None:
        flush()
        close()

    def aborting() -> None:
        pending.clear()
        abort()

    conn._send = send  # type: ignore[method-assign]
    transport.close = closing  # type: ignore[method-assign]
    transport.abort = aborting  # type: ignore[method-assign]
    return True
