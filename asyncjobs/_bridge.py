"""The bridge: run on a host over SSH, it joins the SSH channel to this user's job host.

``python3 -m asyncjobs._bridge`` connects to the job host's Unix socket (starting the host if
it does not run) and copies bytes both ways: stdin to the socket, the socket to stdout. So the
controller reaches the job host through the SSH connection it already has: no extra port, no
extra credentials. Plain threads and blocking sockets: it moves bytes and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

from ._hostdir import ensure_private_dir, host_dir, socket_path, spawn_host


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
                spawn_host(directory)
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
        while data := os.read(0, 1 << 16):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def main() -> int:
    sock = _connect()
    threading.Thread(target=_stdin_to_socket, args=(sock,), name="stdin").start()
    try:
        while data := sock.recv(1 << 16):
            os.write(1, data)
    except OSError:
        pass
    sys.stdout.flush()
    os._exit(0)  # the stdin thread may sit in read(): the channel is done either way


if __name__ == "__main__":
    main()
