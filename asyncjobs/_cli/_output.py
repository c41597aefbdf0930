"""What the command line prints: Get-Job tables, the one ``--json`` document, records on the
right stream, a status line, error lines, exit statuses.

People get tables and tagged lines; programs get ``--json``: one document per command, always
the same keys (``SCHEMA``, documented in docs/cli.md), written as it is made (the records of a
big ``invoke`` or ``receive`` are never all in memory), or JSON lines with ``json_lines``.

How it reaches the terminal (blocks of bytes, tables fitted to the width, the status line) is
``_terminal``'s job.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from .._core.state import JobState
from ._terminal import BLOCKS
from ._text import cli_message, dumps, plain

if TYPE_CHECKING:
    from .._core.job import Job
    from .._core.models import Record
    from .._host.client import HostJobInfo
    from .._host.protocol import SessionInfo

#: The ``schema`` field of every ``--json`` document; bumped only on an incompatible change.
SCHEMA: Final = "asyncjobs-cli/1"
# -- exit statuses --------------------------------------------------------------------------


def exit_code(state: JobState | str, exit_status: int | None) -> int:
    """A job's result as a process exit status: 0 completed, the command's own status if it
    failed with one (128 + N for signal N), 143 stopped, 255 any other failure."""
    value = state.value if isinstance(state, JobState) else state
    if value == "Completed":
        return 0
    if value == "Failed" and exit_status is not None and exit_status != 0:
        return min(exit_status if exit_status > 0 else 128 - exit_status, 255)
    if value == "Stopped":
        return 143
    return 255


#: The exit status of a command interrupted by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED: Final = 130


# -- JSON shapes ----------------------------------------------------------------------------


def host_job_json(info: HostJobInfo, host: str | None = None) -> dict[str, Any]:
    """A job of a job host (local or over SSH) in the ``--json`` job shape; ``host``: the
    ``-H`` host whose job host holds it (None: this machine's)."""
    return {
        "id": info.id,
        "name": info.name,
        "kind": info.kind,
        "state": info.state.value,
        "has_more_data": info.has_more_data,
        "location": info.location,
        "command": info.command,
        "session": info.session,
        "reason": info.reason,
        "exit_status": info.exit_status,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "children": [],
        "host": host,
    }


def local_job_json(job: Job) -> dict[str, Any]:
    """A job of this process's ``JobManager`` (``invoke``'s parent and children)."""
    return {
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "state": job.state.value,
        "has_more_data": job.has_more_data,
        "location": job.location,
        "command": job.command,
        "session": None,
        "reason": None if job.reason is None else cli_message(job.reason),
        "exit_status": job.exit_status,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "children": [local_job_json(child) for child in job.children],
        "host": None if job.parent is None else job.location,  # invoke's child: its host
    }


def record_json(record: Record, host: str | None = None) -> dict[str, Any]:
    """A record in the ``--json`` shape; ``host`` as in ``host_job_json``."""
    return {
        "job_id": record.job_id,
        "seq": record.seq,
        "stream": record.stream,
        "value": plain(record.value),
        "location": record.location,
        "time": record.time,
        "host": host,
    }


def session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "state": info.state,
        "job_count": info.job_count,
        "idle_timeout": info.idle_timeout,
    }


class RecordLines:
    """The ``--json`` RECORDs of one job's lines, made without a dict or a ``json.dumps`` per
    line: the fields that all the lines of a chunk share are encoded once."""

    __slots__ = ("_head", "_location", "seq")

    def __init__(self, job_id: int, location: str) -> None:
        self._head = f'{{"job_id":{job_id},"seq":'
        self._location = encode_basestring(location)
        self.seq = 0  # the job's record number, across its streams, as lines=True counts

    def encode(self, stream: str, values: Iterable[Any], time: float) -> list[str]:
        """``values`` (str lines, or anything JSON takes) as RECORD texts, numbered on."""
        head = self._head
        loc = self._location  # an invoke's child: its location is its host, as written
        tail = f',"location":{loc},"time":{time!r},"host":{loc}}}'
        mid = f',"stream":"{stream}","value":'
        out: list[str] = []
        seq = self.seq
        for value in values:
            text = encode_basestring(value) if isinstance(value, str) else dumps(plain(value))
            out.append(f"{head}{seq}{mid}{text}{tail}")
            seq += 1
        self.seq = seq
        return out


@attrs.define
class Result:
    """What one command produced: the ``--json`` document and the exit status.

    Records are not kept: ``add_records`` writes them to stdout as they come, after the head
    of the document (``{"schema":...,"command":...,"records":[``); ``dump`` then writes the
    rest (``],"ok":...}``), or the whole document if no record came. With ``lines`` (JSON
    lines) each record is a line of its own and the document, its ``records`` empty, is the
    last line."""

    command: str
    jobs: list[dict[str, Any]] = attrs.Factory(list)
    records: list[dict[str, Any]] = attrs.Factory(list)
    sessions: list[dict[str, Any]] = attrs.Factory(list)
    #: What failed while the rest went on: a host of several, a job of several (FAILURE).
    failures: list[dict[str, Any]] = attrs.Factory(list)
    exit_status: int = 0
    error: dict[str, str] | None = None
    lines: bool = False
    _streamed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command succeeded: no error, and exit status 0."""
        return self.error is None and self.exit_status == 0

    def _tail(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_status": self.exit_status,
            "jobs": self.jobs,
            "sessions": self.sessions,
            "failures": self.failures,
            "error": self.error,
        }

    def document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "records": self.records,
        } | self._tail()

    def add_record(self, record: Mapping[str, Any]) -> None:
        self.add_records([dumps(record)])

    def add_records(self, texts: Sequence[str]) -> None:
        """RECORDs, already JSON text, written out now (in the current block)."""
        if not texts:
            return
        if self.lines:
            data = "\n".join(texts) + "\n"
        elif self._streamed:
            data = "," + ",".join(texts)
        else:
            head = f'{{"schema":"{SCHEMA}","command":{encode_basestring(self.command)},'
            data = head + '"records":[' + ",".join(texts)
        self._streamed = True
        BLOCKS.add(sys.stdout, data.encode("utf-8", "surrogateescape"))

    def dump(self, stream: TextIO) -> None:
        """The document (or what is left of it) on ``stream``, flushed."""
        BLOCKS.flush()
        if self._streamed and not self.lines:
            text = "]," + dumps(self._tail())[1:]
        else:
            text = dumps(self.document())
        stream.write(text)
        stream.write("\n")
        stream.flush()
