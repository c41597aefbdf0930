"""What the command line prints: Get-Job tables, the one ``--json`` document, records on the
right stream, error lines, exit statuses.

People get tables and tagged lines on a terminal (through rich: colours, fitted to the width),
or plain aligned text when the output is a pipe; programs get ``--json``: one document per
command, always the same keys (``SCHEMA``, documented in docs/cli.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from .._state import JobState

if TYPE_CHECKING:
    from rich.console import Console

    from .._hostclient import HostJobInfo
    from .._job import Job
    from .._models import Record
    from .._protocol import SessionInfo

#: The ``schema`` field of every ``--json`` document; bumped only on an incompatible change.
SCHEMA: Final = "asyncjobs-cli/1"
JOB_COLUMNS: Final = ("Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command")
SESSION_COLUMNS: Final = ("Name", "State", "JobCount", "IdleTimeout")
#: Above this many rows a table is printed plainly even on a terminal: rich takes ~0.5 ms a row.
RICH_ROWS: Final = 500
STATE_STYLES: Final = {
    "Completed": "green",
    "Failed": "bold red",
    "Stopped": "yellow",
    "Running": "cyan",
    "Disconnected": "magenta",
}
_PREFIX: Final = {
    "warning": "WARNING: ",
    "verbose": "VERBOSE: ",
    "debug": "DEBUG: ",
    "progress": "PROGRESS: ",
}


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


# -- JSON shapes ----------------------------------------------------------------------------


def host_job_json(info: HostJobInfo) -> dict[str, Any]:
    """A job of a job host (local or over SSH) in the ``--json`` job shape."""
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
    }


def record_json(record: Record) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "seq": record.seq,
        "stream": record.stream,
        "value": _plain(record.value),
        "location": record.location,
        "time": record.time,
    }


def session_json(info: SessionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "state": info.state,
        "job_count": info.job_count,
        "idle_timeout": info.idle_timeout,
    }


def _plain(value: Any) -> Any:
    """A record's value as JSON can hold it (exceptions and other objects as text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return cli_message(value)
    return str(value)


@attrs.define
class Result:
    """What one command produced: the ``--json`` document and the exit status."""

    command: str
    jobs: list[dict[str, Any]] = attrs.Factory(list)
    records: list[dict[str, Any]] = attrs.Factory(list)
    sessions: list[dict[str, Any]] = attrs.Factory(list)
    exit_status: int = 0
    error: dict[str, str] | None = None

    def document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "ok": self.error is None,
            "exit_status": self.exit_status,
            "jobs": self.jobs,
            "records": self.records,
            "sessions": self.sessions,
            "error": self.error,
        }

    def dump(self, stream: TextIO) -> None:
        # dumps, not dump: dump streams through the pure-Python encoder, 10x slower.
        stream.write(json.dumps(self.document(), ensure_ascii=False, separators=(",", ":")))
        stream.write("\n")
        stream.flush()


# -- for people -----------------------------------------------------------------------------


def value_text(value: Any) -> str:
    """A record's value as one line of text (an error as its message, in CLI words)."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseException):
        return cli_message(value)
    return json.dumps(_plain(value), ensure_ascii=False)


@attrs.define
class Screen:
    """Where a command writes for people, and how: rich on a terminal, plain text otherwise."""

    json: bool = False
    out: TextIO = attrs.field(factory=lambda: sys.stdout)
    err: TextIO = attrs.field(factory=lambda: sys.stderr)
    _console: Console | None = None

    @property
    def tty(self) -> bool:
        return _isatty(self.out)

    @property
    def live(self) -> bool:
        """Progress displays: only for people at a terminal (stdout and stderr both: a live
        display shows the error lines too)."""
        return self.tty and _isatty(self.err) and not self.json and os.environ.get("TERM") != "dumb"

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False, soft_wrap=False)
        return self._console

    def write(self, text: str, *, err: bool = False) -> None:
        (self.err if err else self.out).write(text + "\n")

    def record(self, record: Record, tag: str | None = None) -> None:
        """One record, people's way: output (and information) to stdout, error to stderr,
        the other streams to stderr with PowerShell's prefix (``WARNING: ...``)."""
        text = value_text(record.value)
        prefix = _PREFIX.get(record.stream, "")
        line = f"{tag}: {prefix}{text}" if tag is not None else f"{prefix}{text}"
        self.write(line, err=record.stream not in ("output", "information"))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        err: bool = False,
        style_column: str | None = "State",
    ) -> None:
        if not rows:
            return
        stream = self.err if err else self.out
        if _isatty(stream) and len(rows) <= RICH_ROWS:
            self._rich_table(columns, rows, err=err, style_column=style_column)
        else:
            stream.write(plain_table(columns, rows))

    def _rich_table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        err: bool,
        style_column: str | None,
    ) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=self.err, highlight=False) if err else self.console
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
        for name in columns:
            last = name == columns[-1]
            table.add_column(name, overflow="ellipsis" if last else "fold", no_wrap=last)
        styled = columns.index(style_column) if style_column in columns else -1
        for row in rows:
            cells: list[Any] = list(row)
            if styled >= 0:
                from rich.text import Text

                cells[styled] = Text(row[styled], style=STATE_STYLES.get(row[styled], ""))
            table.add_row(*cells)
        console.print(table)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces and a dashed rule under the header, like PowerShell's
    Format-Table; no trailing blanks. Fast: 10,000 rows in a few milliseconds."""
    widths = [
        max(len(c), *map(len, cells))
        for c, cells in zip(columns, zip(*rows, strict=True), strict=True)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*columns), fmt.format(*("-" * len(c) for c in columns))]
    lines.extend(fmt.format(*row) for row in rows)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def job_rows(jobs: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """Get-Job rows of ``--json`` job shapes."""
    return [
        [
            str(j["id"]),
            _one_line(j["name"]),
            j["kind"],
            j["state"],
            "True" if j["has_more_data"] else "False",
            j["location"],
            _one_line(j["command"]),
        ]
        for j in jobs
    ]


def _one_line(text: str) -> str:
    return text.replace("\n", " ") if "\n" in text else text


def session_rows(sessions: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            s["name"],
            s["state"],
            str(s["job_count"]),
            "-" if s["idle_timeout"] is None else f"{s['idle_timeout']:g} s",
        ]
        for s in sessions
    ]


# -- errors -----------------------------------------------------------------------------------

#: The fixes library messages name (keyword arguments) as the command line spells them.
_CLI_HINTS: Final = (
    ("jobs.get() lists them", "'asyncjobs get' lists them"),
    ("or pass known_hosts=", "or pass --known-hosts FILE"),
    ("check username= and client_keys=", "check --user and -i/--identity"),
    ("(connect_timeout= sets the limit)", "(--connect-timeout sets the limit)"),
    ("stop it first or pass force=True", "stop it first or pass --force"),
    ("lower throttle_limit=", "lower --throttle"),
    ("; connect_local() starts one", ""),
)


def cli_message(exc: BaseException) -> str:
    """An exception as one line for the command line, its fix in command-line words."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for api, cli in _CLI_HINTS:
        text = text.replace(api, cli)
    return text


def error_json(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": cli_message(exc)}
