"""asyncjobs: PowerShell's job system for async Python.

Thread, process and command jobs (and, later, remote jobs over SSH) as awaitable state machines
with bounded, receive-once-or-keep output, on asyncio and on trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import AsyncJobsError as AsyncJobsError
from ._errors import CommandFailed as CommandFailed
from ._errors import ConnectionFailed as ConnectionFailed
from ._errors import HostKeyError as HostKeyError
from ._errors import JobArgumentError as JobArgumentError
from ._errors import JobFailed as JobFailed
from ._errors import JobStateError as JobStateError
from ._errors import JobStopped as JobStopped
from ._errors import NoSuchJob as NoSuchJob
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import SpillError as SpillError
from ._models import STREAMS as STREAMS
from ._models import Buffer as Buffer
from ._models import BufferStatistics as BufferStatistics
from ._models import JobStatistics as JobStatistics
from ._models import ManagerStatistics as ManagerStatistics
from ._models import Progress as Progress
from ._models import Record as Record
from ._models import StateChange as StateChange
from ._state import JobState as JobState
from ._util import fixup_module_metadata as _fixup_module_metadata

__version__ = "0.1.0"

__all__ = [
    "STREAMS",
    "AsyncJobsError",
    "Buffer",
    "BufferStatistics",
    "CommandFailed",
    "ConnectionFailed",
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

_fixup_module_metadata(__name__, globals())

if TYPE_CHECKING:
    from ._context import emit as emit
    from ._context import progress as progress
    from ._context import stop_requested as stop_requested
    from ._hostclient import HostJobInfo as HostJobInfo
    from ._hostclient import HostSession as HostSession
    from ._hostclient import connect_local as connect_local
    from ._hostclient import get_sessions as get_sessions
    from ._job import Job as Job
    from ._manager import JobManager as JobManager
    from ._protocol import SessionInfo as SessionInfo
    from ._remote import RemoteTimings as RemoteTimings
    from ._remote import to_jsonl as timings_jsonl
    from ._ssh import Session as Session
    from ._ssh import connect as connect

# Remote names load asyncssh (~150 ms), so they are imported on first use: local jobs, the
# job host on a remote machine and the command line's start-up never pay for it.
_LAZY = {
    # anyio and the job machinery load on first use too: the command line's --help, and
    # code that only needs the errors or the models, start without them.
    "emit": ("._context", "emit"),
    "progress": ("._context", "progress"),
    "stop_requested": ("._context", "stop_requested"),
    "Job": ("._job", "Job"),
    "JobManager": ("._manager", "JobManager"),
    "RemoteTimings": ("._remote", "RemoteTimings"),
    "timings_jsonl": ("._remote", "to_jsonl"),
    "Session": ("._ssh", "Session"),
    "connect": ("._ssh", "connect"),
    "connect_local": ("._hostclient", "connect_local"),
    "get_sessions": ("._hostclient", "get_sessions"),
    "HostSession": ("._hostclient", "HostSession"),
    "HostJobInfo": ("._hostclient", "HostJobInfo"),
    "SessionInfo": ("._protocol", "SessionInfo"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'asyncjobs' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attribute)
    _fixup_module_metadata(__name__, {name: value})
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
