"""Where the job host of this user lives on this machine, and how it is started.

One job host per user per machine: a private directory (mode 0700) holds its socket, its lock and
its store. Whoever needs the host connects to the socket; if nobody answers, it starts one,
detached (own session, no controlling terminal, stdio on /dev/null), and waits for the socket.
The host takes an exclusive ``flock`` on its lock file for its whole life, so a second host
started by a race exits at once and the first one serves everybody.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import anyio

from .._core.errors import AsyncJobsError
from .hostdir import ENV_DIR as ENV_DIR
from .hostdir import LOCK as LOCK
from .hostdir import LOG as LOG
from .hostdir import SOCKET as SOCKET
from .hostdir import STORE as STORE
from .hostdir import host_dir as host_dir

ENV_IDLE: Final = "ASYNCJOBS_HOST_IDLE_EXIT"
ENV_READY: Final = "ASYNCJOBS_HOST_READY_FD"  # the pipe on which a new host says it serves
READY: Final = "ready"


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


def spawn_host(directory: Path, *, idle_exit: float | None = None, timeout: float = 15.0) -> None:
    """Start a detached job host for ``directory`` (it exits at once if one already runs)
    and wait until it serves, or raise ``AsyncJobsError`` with why it could not start: the
    host says so on a pipe (``ENV_READY``), since its log may be on the very disk that is
    full."""
    env = dict(os.environ)
    env[ENV_DIR] = str(directory)
    if idle_exit is not None:
        env[ENV_IDLE] = str(idle_exit)
    read_end, write_end = os.pipe()
    env[ENV_READY] = str(write_end)
    try:
        log = open(directory / LOG, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # The child forks again and this first child exits at once: the host is nobody's
            # child here (no zombie), runs in its own session, and keeps no terminal.
            subprocess.run(
                [sys.executable, "-m", "asyncjobs._host.daemon", "--daemonize"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                close_fds=True,
                pass_fds=(write_end,),
                check=True,
                timeout=30,
            )
        finally:
            log.close()
            os.close(write_end)
        answer = _read_ready(read_end, timeout)
    finally:
        os.close(read_end)
    if answer is None:
        return  # slow to say so: the caller goes on trying to connect until its deadline
    if answer != READY:
        raise AsyncJobsError(
            f"the job host in {directory} could not start: {answer or 'it exited at once'}"
            f"{_space_hint(directory)}"
        )


def _read_ready(fd: int, timeout: float) -> str | None:
    """What the host wrote on its ready pipe up to EOF ("" if nothing), None at timeout."""
    import selectors

    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return data.decode(errors="replace").strip()
            data += chunk
            if data.endswith(b"\n"):
                return data.decode(errors="replace").strip()
    return None


def _space_hint(directory: Path) -> str:
    """A hint when the file system of ``directory`` is (nearly) full."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return ""
    free = info.f_bavail * info.f_frsize
    if free >= 1 << 20:
        return ""
    return (
        f" (its file system has {free:,} bytes free: free some space, or set {ENV_DIR} to a "
        "directory on another one)"
    )


def report_ready(message: str = "") -> None:
    """In the job host: tell the spawner (if any) that it serves, or why it can't."""
    fd = os.environ.pop(ENV_READY, None)
    if fd is None:
        return
    try:
        os.write(int(fd), ((message or READY) + "\n").encode(errors="replace"))
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.close(int(fd))


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
                left = max(0.1, deadline - time.monotonic())
                start_one = functools.partial(spawn_host, directory, idle_exit=idle_exit)
                await anyio.to_thread.run_sync(functools.partial(start_one, timeout=left))
                spawned = True
            if time.monotonic() > deadline:
                raise AsyncJobsError(
                    f"the job host in {directory} did not come up within {timeout:g} s; "
                    f"see {directory / LOG}{_space_hint(directory)}"
                ) from exc
            await anyio.sleep(0.02)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""
    creds = _peer_credentials(sock)
    return None if creds is None else creds[1]


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket, where the kernel says."""
    creds = _peer_credentials(sock)
    return None if creds is None or creds[0] <= 0 else creds[0]


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return int(pid), int(uid), int(gid)


def describe_process(pid: int) -> str:
    """``pid 4242 (python3 build.py)``: a process as messages name it (its command line cut
    to 60 characters; just the pid where /proc does not tell)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    command = " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else ""
    command = command.split("; ", 1)[0]  # a message's "; " starts its advice
    if len(command) > 60:
        command = command[:59] + "…"
    return f"pid {pid} ({command})" if command else f"pid {pid}"
