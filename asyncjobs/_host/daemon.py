"""``python -m asyncjobs._host.daemon``: the job host as a process (``--daemonize`` detaches).

``main`` detaches if asked (double fork, a session of its own, stdin and stdout on /dev/null;
stderr stays on the ``host.log`` the spawner opened), raises the descriptor limit, takes the
host lock (one job host per directory: a second one reports ready and exits), and runs the
server (``server.JobHost``) on asyncio until it is idle long enough or TERM/INT stops it. The
spawner waits on the readiness pipe (``directory.report_ready``): it hears that the socket
listens, or why the host could not start (``host.log`` may be on a full disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio

from .._core.errors import AsyncJobsError
from .directory import ENV_IDLE, LOCK, ensure_private_dir, host_dir, report_ready, socket_path
from .hostlog import log
from .server import DEFAULT_IDLE_EXIT, JobHost


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """Hold the host lock for the life of the process; False if another host holds it."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def _use_pidfd_watcher() -> None:
    """On Python 3.9-3.11, asyncio waits for each child in a thread of its own (started per
    spawn); a pidfd in the event loop costs no thread. 3.12+ does that by itself. The job host
    owns its process and event loop, so it may choose; where pidfds are missing, nothing
    changes."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return  # an older kernel
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def _run(directory: Path, idle_exit: float) -> None:
    _use_pidfd_watcher()
    path = socket_path(directory)
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a host that died; we hold the lock
        listener = await anyio.create_unix_listener(path, mode=0o600)
        try:
            host = JobHost(directory, idle_exit=idle_exit)
        except BaseException:
            await listener.aclose()
            raise
    except (OSError, AsyncJobsError) as exc:  # the spawner says it; host.log may be full
        report_ready(f"{exc}")
        log(f"can't start: {exc}")
        raise SystemExit(1) from None
    report_ready()
    try:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                # TERM/INT: a clean shutdown: the job table stops its jobs and reaps them.
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        await host.shutdown()
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_signals)
            await host.serve(listener)
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        host.store.close()


def _raise_descriptor_limit() -> None:
    """Raise the soft limit of open files to the hard one, as clush does: every controller
    and every job's pipes hold descriptors, and 1024 is soon reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = ensure_private_dir(host_dir())
    idle_exit = float(os.environ.get(ENV_IDLE, DEFAULT_IDLE_EXIT))
    if "--daemonize" in args:
        if os.fork() > 0:
            return 0  # the first child: exit, so that the host is nobody's child
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # stderr stays on the log file the spawner opened
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _raise_descriptor_limit()
    try:
        with _exclusive(directory) as mine:
            if not mine:
                report_ready()  # another job host serves this directory
                return 0
            anyio.run(_run, directory, idle_exit, backend="asyncio")
    except OSError as exc:  # its lock: the spawner hears why (host.log may be on a full disk)
        report_ready(f"can't take the lock {directory / LOCK}: {exc}")
        log(f"can't start: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
