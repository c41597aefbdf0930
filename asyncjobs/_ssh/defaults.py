"""asyncjobs's own SSH client defaults, where they differ from asyncssh's, and how they yield.

- **Ciphers: AES-GCM first where the CPU has AES instructions.** asyncssh (like OpenSSH) offers
  ChaCha20-Poly1305 first. On a CPU with AES instructions, AES-GCM costs the controller about
  half the CPU per byte (measured here: 1.0-1.2 s/GB against 1.9-2.1 s/GB for asyncssh's
  ChaCha20-Poly1305), and a controller's CPU is what bounds a bulk stream and a wide fan-out.
  So, as Go's TLS does, AES-GCM goes first when the CPU accelerates it; elsewhere the order stays
  asyncssh's. Both are AEAD ciphers that OpenSSH enables by default; nothing weaker is offered.
- **Keepalives: every 15 s, 3 unanswered close the connection.** asyncssh sends none by
  default, so a silently cut network (no RST, no FIN: a dead link, a crashed router, a suspended
  VM) leaves a connection "open" for as long as TCP retransmits, about 15 minutes, and a job on
  it hangs that long. With keepalives the connection is declared lost within about a minute:
  a job on it fails (or, on a named session, becomes ``DISCONNECTED`` and resumes later).

The user's word wins: an explicit ``encryption_algs=`` / ``keepalive_interval=`` /
``keepalive_count_max=``, or the matching line in the SSH config files asyncssh reads
(``Ciphers``; ``ServerAliveInterval``, ``ServerAliveCountMax``), keeps asyncssh's behaviour
for that setting. A config with ``Include`` is left alone entirely, since what it includes is
not read here.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

#: The order offered where AES is accelerated: asyncssh's default ciphers, AES-GCM moved first.
AES_FIRST: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)

#: Seconds without data from the server before a keepalive is sent, and how many may go
#: unanswered before the connection counts as lost (OpenSSH's ServerAliveCountMax default).
KEEPALIVE_INTERVAL: Final = 15.0
KEEPALIVE_COUNT_MAX: Final = 3

_CIPHERS_SET: Final = re.compile(r"^\s*(ciphers|include)\b", re.IGNORECASE | re.MULTILINE)
_ALIVE_SET: Final = re.compile(
    r"^\s*(serveraliveinterval|serveralivecountmax|include)\b", re.IGNORECASE | re.MULTILINE
)


def with_client_defaults(options: dict[str, Any], *, aes: bool | None = None) -> dict[str, Any]:
    """``options`` for asyncssh with asyncjobs's defaults added where neither ``options`` nor
    the SSH config choose (``aes``: for tests; ``None`` asks the CPU). ``options`` itself is not
    changed; it is returned as it is when nothing is added."""
    added: dict[str, Any] = {}
    config: str | None = None

    def config_text() -> str:
        nonlocal config
        if config is None:
            config = "\n".join(_read(p) for p in _config_files(options.get("config", ())))
        return config

    has_aes = cpu_has_aes() if aes is None else aes
    if "encryption_algs" not in options and has_aes and not _CIPHERS_SET.search(config_text()):
        added["encryption_algs"] = list(AES_FIRST)
    if not {"keepalive_interval", "keepalive_count_max"} & options.keys() and not (
        _ALIVE_SET.search(config_text())
    ):
        added["keepalive_interval"] = KEEPALIVE_INTERVAL
        added["keepalive_count_max"] = KEEPALIVE_COUNT_MAX
    return {**options, **added} if added else options


def _config_files(config: object) -> list[Path]:
    """The SSH config files asyncssh will read for ``config=`` (``()``: ``~/.ssh/config``)."""
    if config is None:
        return []
    if config == ():
        return [Path("~", ".ssh", "config").expanduser()]
    if isinstance(config, str | os.PathLike):
        return [Path(config)]
    if isinstance(config, Sequence):
        return [Path(p) for p in config if isinstance(p, str | os.PathLike)]
    return []


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@functools.cache
def cpu_has_aes() -> bool:
    """True if this CPU has AES instructions (x86 AES-NI, ARMv8 crypto extensions).

    Linux says so in ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM); Apple silicon
    always has them. Anywhere else we cannot tell, and keep asyncssh's order. Cached: the CPU
    does not change while the process runs.
    """
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return "aes" in value.split()
    except OSError:
        pass
    return False
