"""Processes, read from ``/proc``: which are alive, their trees, their environment."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def proc_table() -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, uid, start time in clock ticks) for every live (non-zombie) process."""
    table: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            uid = os.stat(f"/proc/{name}").st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            table[int(name)] = (int(fields[1]), uid, int(fields[19]))
    return table


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (with the pid, it names one process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` started with, if it has one."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = name.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return None


def comm(pid: int) -> str:
    """The process's command name (``/proc/PID/comm``), or "" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; a process already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pids: Iterable[int], deadline: float) -> list[int]:
    """Wait until none of ``pids`` is alive (or the deadline passes); return those still alive."""
    left = set(pids)
    while left:
        left = {p for p in left if pid_alive(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return sorted(left)
