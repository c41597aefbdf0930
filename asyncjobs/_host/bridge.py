"""The bridge: run on a host over SSH, it joins the SSH channel to this user's job host.

``python3 -m asyncjobs._host.bridge`` (from the runtime zip, see ``runtime.bridge_command``)
connects to the job host's Unix socket (starting the host if it does not run) and copies bytes
both ways: stdin to the socket, the socket to stdout. So the controller reaches the job host
through the SSH connection it already has: no extra port, no extra credentials. Plain threads
and blocking sockets: it moves bytes and nothing else.

Two things it must not pass on:

- **The SSH session it runs in.** The job host it starts outlives this connection, and its jobs
  belong to no connection at all (as a cron job): sshd's per-session variables
  (``SSH_CONNECTION``, ``SSH_CLIENT``, ``SSH_TTY``, a forwarded agent's ``SSH_AUTH_SOCK``) are
  taken out of the job host's environment, and the runtime zip is on the host's ``sys.path``
  only, never in its ``PYTHONPATH``: a job's ``python3`` imports the user's packages, not the
  zip's (a ``PYTHONPATH`` the user had is theirs and stays as it was).
- **A controller that went away.** When the controller's connection drops or resets, sshd
  closes the bridge's stdin and stdout. The bridge then tells the job host it is done (EOF),
  throws away what the host still sends (an answer in flight) until the host closes its end, at
  most ``LINGER`` seconds, and exits: the host sees an orderly end of one connection, not a
  reset with its last answer unread, and no bridge is left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .directory import ENV_DIR, LOG, ensure_private_dir, host_dir, socket_path

#: sshd's variables of one SSH session (what a job host started from it must not keep).
SESSION_VARIABLES: Final = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_ORIGINAL_COMMAND")
#: The socket of an agent that sshd forwards for one connection (``/tmp/ssh-XXXX/agent.PID``).
_FORWARDED_AGENT: Final = re.compile(r"/ssh-[^/]+/agent\.\d+\Z")
#: How long a bridge whose controller is gone waits for the job host to close its end.
LINGER: Final = 2.0
_CHUNK: Final = 1 << 16

#: Runs the job host with the runtime on ``sys.path`` (``argv[1]``) and its environment cleaned
#: first (in the host process: see ``clean_environment``).
HOST_BOOT: Final = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "import asyncjobs._host.bridge as b; b.clean_environment(); "
    "import asyncjobs._host.daemon as h; sys.exit(h.main())"
)


def _package_parent() -> str:
    """What holds the ``asyncjobs`` package: site-packages, a checkout, or the runtime zip."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def runtime_path() -> str | None:
    """The runtime zip this code runs from, or None for an installed asyncjobs."""
    root = _package_parent()
    return root if os.path.isfile(root) else None


def job_host_environment(environ: Mapping[str, str], runtime: str | None) -> dict[str, str]:
    """``environ`` without this SSH session's variables and without ``runtime`` in
    ``PYTHONPATH`` (an empty ``PYTHONPATH`` left by that is dropped)."""
    env = {k: v for k, v in environ.items() if k not in SESSION_VARIABLES}
    agent = env.get("SSH_AUTH_SOCK")
    if agent is not None and _FORWARDED_AGENT.search(agent):
        del env["SSH_AUTH_SOCK"]  # gone with the connection that forwarded it
    path = env.get("PYTHONPATH")
    if path is not None and runtime is not None:
        entries = [p for p in path.split(os.pathsep) if p != runtime]
        if entries:
            env["PYTHONPATH"] = os.pathsep.join(entries)
        else:
            del env["PYTHONPATH"]
    return env


def clean_environment() -> None:
    """In the job host's process, before anything runs: its environment, and so every job's,
    without the SSH session that started it (see ``job_host_environment``). What
    ``/proc/PID/environ`` shows keeps the original (it is the process's initial memory)."""
    clean = job_host_environment(os.environ, runtime_path())
    for key in set(os.environ) - set(clean):
        del os.environ[key]
    os.environ.update(clean)


def host_argv() -> list[str]:
    """How this bridge starts the job host: this Python, isolated (``-I``: no user
    ``PYTHONPATH`` or user site over the runtime's packages) when it runs from the zip."""
    runtime = runtime_path()
    if runtime is None:
        return [sys.executable, "-c", HOST_BOOT, _package_parent(), "--daemonize"]
    return [sys.executable, "-I", "-c", HOST_BOOT, runtime, "--daemonize"]


def _spawn_host(directory: Path) -> None:
    """Start a detached job host for ``directory`` (as ``directory.spawn_host``; it exits at
    once if one already runs), in the user's home, as ``ssh`` runs commands."""
    env = dict(os.environ)
    env[ENV_DIR] = str(directory)
    log = open(directory / LOG, "ab")  # noqa: SIM115 - handed to the child, closed right after
    try:
        subprocess.run(
            host_argv(),
            env=env,
            cwd=os.path.expanduser("~"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            close_fds=True,
            check=True,
            timeout=30,
        )
    finally:
        log.close()


def _connect(timeout: float = 15.0) -> socket.socket:
    directory = ensure_private_dir(host_dir())
    path = str(socket_path(directory))
    deadline = time.monotonic() + timeout
    spawned = False
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if not spawned:
                _spawn_host(directory)
                spawned = True
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"asyncjobs bridge: the job host in {directory} did not start"
                ) from None
            time.sleep(0.02)
        else:
            return sock


def _stdin_to_socket(sock: socket.socket) -> None:
    try:
        while data := os.read(0, _CHUNK):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _linger(sock: socket.socket, seconds: float = LINGER) -> None:
    """The controller is gone: EOF to the job host, then read and drop what it still sends
    until it closes (at most ``seconds``), so that it never meets a reset."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(_CHUNK):
                return


def main() -> int:
    sock = _connect()
    threading.Thread(target=_stdin_to_socket, args=(sock,), name="stdin", daemon=True).start()
    try:
        while data := sock.recv(_CHUNK):
            view = memoryview(data)
            while view:  # os.write may take part of it (a pipe)
                view = view[os.write(1, view) :]
    except OSError:  # stdout is closed (the channel is gone), or the socket failed
        _linger(sock)
    os._exit(0)  # the stdin thread may sit in read(): the channel is done either way


if __name__ == "__main__":
    main()
