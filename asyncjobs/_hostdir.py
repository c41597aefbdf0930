"""Where the job host of this user lives on this machine, and how it is started.

One job host per user per machine: a private directory (mode 0700) holds its socket, its lock and
its store. Whoever needs the host connects to the socket; if nobody answers, it starts one,
detached (own session, no controlling terminal, stdio on /dev/null), and waits for the socket.
The host takes an exclusive ``flock`` on its lock file for its whole life, so a second host
started by a race exits at once and the first one serves everybody.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import anyio

from ._errors import AsyncJobsError

SOCKET: Final = "host.sock"
LOCK: Final = "host.lock"
STORE: Final = "store.sqlite"
LOG: Final = "host.log"
ENV_DIR: Final = "ASYNCJOBS_HOST_DIR"
ENV_IDLE: Final = "ASYNCJOBS_HOST_IDLE_EXIT"


def host_dir() -> Path:
    """``$ASYNCJOBS_HOST_DIR``, else ``$XDG_STATE_HOME/asyncjobs`` (default
    ``~/.local/state/asyncjobs``): state, not runtime, since the store must survive a logout."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "asyncjobs"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that it is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise AsyncJobsError(
            f"job host directory {path} belongs to uid {info.st_uid}, not to you "
            f"({os.getuid()}); set {ENV_DIR} to a directory of your own"
        )
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def socket_path(directory: Path) -> Path:
    path = directory / SOCKET
    if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes on Linux
        raise AsyncJobsError(
            f"job host socket path {path} is too long for a Unix socket; "
            f"set {ENV_DIR} to a shorter directory"
        )
    return path


def spawn_host(directory: Path, *, idle_exit: float | None = None) -> None:
    """Start a detached job host for ``directory`` (it exits at once if one already runs)."""
    env = dict(os.environ)
    env[ENV_DIR] = str(directory)
    if idle_exit is not None:
        env[ENV_IDLE] = str(idle_exit)
    log = open(directory / LOG, "ab")  # noqa: SIM115 - handed to the child, closed right after
    try:
        # The child forks again and this first child exits at once: the host is nobody's
        # child here (no zombie), runs in its own session, and keeps no terminal.
        subprocess.run(
            [sys.executable, "-m", "asyncjobs._host", "--daemonize"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            close_fds=True,
            check=True,
            timeout=30,
        )
    finally:
        log.close()


async def connect_socket(
    directory: Path, *, start: bool = True, timeout: float = 15.0, idle_exit: float | None = None
) -> anyio.abc.SocketStream:
    """Connect to the job host's socket, starting the host first if nobody answers."""
    ensure_private_dir(directory)
    path = socket_path(directory)
    deadline = time.monotonic() + timeout
    spawned = False
    while True:
        try:
            return await anyio.connect_unix(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if not start:
                raise AsyncJobsError(
                    f"no job host is running in {directory}; connect_local() starts one"
                ) from exc
            if not spawned:
                await anyio.to_thread.run_sync(lambda: spawn_host(directory, idle_exit=idle_exit))
                spawned = True
            if time.monotonic() > deadline:
                raise AsyncJobsError(
                    f"the job host in {directory} did not come up within {timeout:g} s; "
                    f"see {directory / LOG}"
                ) from exc
            await anyio.sleep(0.02)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
