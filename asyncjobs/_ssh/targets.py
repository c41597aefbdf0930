"""Host targets as users write them: ``host``, ``user@host``, ``user@host:port``, ``[::1]:2222``.

Parsed before anything connects, so a typo fails the whole call at once with a clear
``ValueError`` instead of one mysterious child failure among hundreds.
"""

from __future__ import annotations

import re

import attrs

from .._core.errors import JobArgumentError

_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")


@attrs.frozen
class Target:
    """Where a remote job runs: host, optional port and user."""

    host: str
    port: int | None = None
    username: str | None = None

    @property
    def location(self) -> str:
        """The host as ``job.location`` shows it (the port only when not 22)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port in (None, 22) else f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``[user@]host[:port]`` (IPv6 in brackets when a port follows)."""
        if not isinstance(text, str):
            raise JobArgumentError(f"a target must be a host string or a Session, got {text!r}")
        original = text
        if not text or text != text.strip() or any(c.isspace() for c in text):
            raise JobArgumentError(f"bad target {original!r}: empty or contains whitespace")
        username = None
        if "@" in text:
            username, _, text = text.rpartition("@")
            if not _USER.match(username):
                raise JobArgumentError(f"bad target {original!r}: {username!r} is not a user name")
        port: int | None = None
        if not text:
            raise JobArgumentError(f"bad target {original!r}: no host")
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or ":" not in host:
                raise JobArgumentError(
                    f"bad target {original!r}: brackets are for IPv6 ('[::1]:22')"
                )
            if rest:
                if not rest.startswith(":"):
                    raise JobArgumentError(f"bad target {original!r}: expected ':port' after ']'")
                port = _port(rest[1:], original)
        elif text.count(":") > 1:
            host = text  # a bare IPv6 address; write [addr]:port to give a port
        else:
            host, sep, port_text = text.partition(":")
            if sep:
                port = _port(port_text, original)
            if not _HOST.match(host):
                raise JobArgumentError(f"bad target {original!r}: {host!r} is not a host name")
        if not host:
            raise JobArgumentError(f"bad target {original!r}: no host")
        return cls(host, port, username)


def _port(text: str, original: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise JobArgumentError(f"bad target {original!r}: port {text!r} is not in 1..65535")
    return int(text)
