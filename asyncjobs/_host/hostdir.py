"""Where this user's job host lives, and whether one serves there now: standard library only,
so that the command line's fast paths (``_cli._fastget``, ``_cli._forkclient``) can ask
without loading the job machinery. ``directory`` starts and reaches the host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

SOCKET: Final = "host.sock"
LOCK: Final = "host.lock"
STORE: Final = "store.sqlite"
LOG: Final = "host.log"
ENV_DIR: Final = "ASYNCJOBS_HOST_DIR"


def host_dir() -> Path:
    """``$ASYNCJOBS_HOST_DIR``, else ``$XDG_STATE_HOME/asyncjobs`` (default
    ``~/.local/state/asyncjobs``): state, not runtime, since the store must survive a logout."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "asyncjobs"


def host_pid(directory: Path) -> int | None:
    """The pid of the job host serving ``directory`` now: the pid its lock file names, if it
    is alive and is a job host (the lock itself is not touched: a starting host must get it)."""
    try:
        pid = int((directory / LOCK).read_text().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if pid > 0 and b"asyncjobs._host" in f.read() else None
    except (OSError, ValueError):
        return None
