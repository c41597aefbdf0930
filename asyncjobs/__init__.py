"""asyncjobs: PowerShell's job system for async Python.

Thread, process and command jobs (and, later, remote jobs over SSH) as awaitable state machines
with bounded, receive-once-or-keep output, on asyncio and on trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

__all__ = [
    "STREAMS",
    "AsyncJobsError",
    "Buffer",
    "BufferStatistics",
    "ClockOffset",
    "CommandFailed",
    "ConnectionFailed",
    "HostInfo",
    "HostJobInfo",
    "HostKeyError",
    "HostSession",
    "Job",
    "JobArgumentError",
    "JobFailed",
    "JobManager",
    "JobState",
    "JobStateError",
    "JobStatistics",
    "JobStopped",
    "JsonLineError",
    "ManagerStatistics",
    "NoSuchJob",
    "Progress",
    "ProtocolError",
    "Record",
    "RemoteError",
    "RemoteTimings",
    "Session",
    "SessionInfo",
    "SpillError",
    "StateChange",
    "connect",
    "connect_local",
    "emit",
    "get_sessions",
    "progress",
    "stop_requested",
    "timings_jsonl",
]

if TYPE_CHECKING:
    from ._core.context import emit as emit
    from ._core.context import progress as progress
    from ._core.context import stop_requested as stop_requested
    from ._core.errors import AsyncJobsError as AsyncJobsError
    from ._core.errors import CommandFailed as CommandFailed
    from ._core.errors import ConnectionFailed as ConnectionFailed
    from ._core.errors import HostKeyError as HostKeyError
    from ._core.errors import JobArgumentError as JobArgumentError
    from ._core.errors import JobFailed as JobFailed
    from ._core.errors import JobStateError as JobStateError
    from ._core.errors import JobStopped as JobStopped
    from ._core.errors import NoSuchJob as NoSuchJob
    from ._core.errors import ProtocolError as ProtocolError
    from ._core.errors import RemoteError as RemoteError
    from ._core.errors import SpillError as SpillError
    from ._core.job import Job as Job
    from ._core.jsonlines import JsonLineError as JsonLineError
    from ._core.models import STREAMS as STREAMS
    from ._core.models import Buffer as Buffer
    from ._core.models import BufferStatistics as BufferStatistics
    from ._core.models import JobStatistics as JobStatistics
    from ._core.models import ManagerStatistics as ManagerStatistics
    from ._core.models import Progress as Progress
    from ._core.models import Record as Record
    from ._core.models import StateChange as StateChange
    from ._core.state import JobState as JobState
    from ._host.client import HostSession as HostSession
    from ._host.client import connect_local as connect_local
    from ._host.protocol import SessionInfo as SessionInfo
    from ._host.records import HostJobInfo as HostJobInfo
    from ._local.manager import JobManager as JobManager
    from ._remote.clock import ClockOffset as ClockOffset
    from ._remote.connect import connect as connect
    from ._remote.connect import get_sessions as get_sessions
    from ._remote.fanout import to_jsonl as timings_jsonl
    from ._remote.probe import HostInfo as HostInfo
    from ._remote.session import Session as Session
    from ._ssh.runner import RemoteTimings as RemoteTimings

# Every name is imported on first use. ``import asyncjobs`` itself loads nothing but the
# version: the command line's start-up (``_cli._forkclient`` is standard library only) does
# not pay for attrs (the errors and models), anyio (the job machinery) or asyncssh (the remote
# names, ~150 ms), and local jobs and a remote machine's job host never load asyncssh.
_LAZY = {
    "AsyncJobsError": ("._core.errors", "AsyncJobsError"),
    "CommandFailed": ("._core.errors", "CommandFailed"),
    "ConnectionFailed": ("._core.errors", "ConnectionFailed"),
    "HostKeyError": ("._core.errors", "HostKeyError"),
    "JobArgumentError": ("._core.errors", "JobArgumentError"),
    "JobFailed": ("._core.errors", "JobFailed"),
    "JobStateError": ("._core.errors", "JobStateError"),
    "JobStopped": ("._core.errors", "JobStopped"),
    "NoSuchJob": ("._core.errors", "NoSuchJob"),
    "ProtocolError": ("._core.errors", "ProtocolError"),
    "RemoteError": ("._core.errors", "RemoteError"),
    "SpillError": ("._core.errors", "SpillError"),
    "STREAMS": ("._core.models", "STREAMS"),
    "Buffer": ("._core.models", "Buffer"),
    "BufferStatistics": ("._core.models", "BufferStatistics"),
    "JobStatistics": ("._core.models", "JobStatistics"),
    "ManagerStatistics": ("._core.models", "ManagerStatistics"),
    "Progress": ("._core.models", "Progress"),
    "Record": ("._core.models", "Record"),
    "StateChange": ("._core.models", "StateChange"),
    "JobState": ("._core.state", "JobState"),
    "emit": ("._core.context", "emit"),
    "progress": ("._core.context", "progress"),
    "stop_requested": ("._core.context", "stop_requested"),
    "Job": ("._core.job", "Job"),
    "JobManager": ("._local.manager", "JobManager"),
    "RemoteTimings": ("._ssh.runner", "RemoteTimings"),
    "timings_jsonl": ("._remote.fanout", "to_jsonl"),
    "Session": ("._remote.session", "Session"),
    "connect": ("._remote.connect", "connect"),
    "get_sessions": ("._remote.connect", "get_sessions"),
    "connect_local": ("._host.client", "connect_local"),
    "HostSession": ("._host.client", "HostSession"),
    "HostJobInfo": ("._host.records", "HostJobInfo"),
    "SessionInfo": ("._host.protocol", "SessionInfo"),
    # for benchmark harnesses (docs/harness.md)
    "JsonLineError": ("._core.jsonlines", "JsonLineError"),
    "ClockOffset": ("._remote.clock", "ClockOffset"),
    "HostInfo": ("._remote.probe", "HostInfo"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}") from None
    from ._core.util import fixup_module_metadata

    value = getattr(importlib.import_module(module, __name__), attribute)
    fixup_module_metadata(__name__, {name: value})
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
