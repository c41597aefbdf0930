"""The terminal side of the command line: bytes out in blocks, tables fitted to the width,
tagged and coloured lines, the status line.

Everything is written as bytes, in blocks (``Blocks``): the lines of a batch of records are
joined and written with one ``os.write`` per stream, after the batch (the event loop's next
turn), never one ``print`` per line. On a terminal a table is fitted to its width (the long
column cut with an ellipsis, the others in full), the State column and the host tags are
coloured (not with ``NO_COLOR``), and a status line (``StatusLine``) is drawn under the output
at most ten times a second; nothing is ever wrapped or re-coloured by us.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from ._text import cli_message, plain

if TYPE_CHECKING:
    from .._core.models import Record

JOB_COLUMNS: Final = ("Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command")
#: The job table's columns that give way on a narrow terminal, the first first; the others
#: (Id, Name, Kind, State, HasMoreData) are always shown in full.
JOB_FLEXIBLE: Final = ("Command", "Location")
SESSION_COLUMNS: Final = ("Name", "State", "JobCount", "IdleTimeout")
SESSION_FLEXIBLE: Final = ("Name",)
#: SGR colours of the states in the State column (a terminal, no ``NO_COLOR``).
STATE_COLOURS: Final = {
    "Completed": "32",
    "Failed": "1;31",
    "Stopped": "33",
    "Running": "36",
    "Blocked": "1;33",
    "Disconnected": "35",
}
#: The colour of a host's tag: before its output lines, before its error lines.
TAG_COLOUR: Final = "36"
ERROR_TAG_COLOUR: Final = "31"
ELLIPSIS: Final = "…"
#: A block is written at once when it holds this much, else at the event loop's next turn.
BLOCK: Final = 256 * 1024
#: The status line is redrawn at most this often (seconds).
STATUS_EVERY: Final = 0.1
_PREFIX: Final = {
    "warning": "WARNING: ",
    "verbose": "VERBOSE: ",
    "debug": "DEBUG: ",
    "progress": "PROGRESS: ",
}


# -- bytes out, in blocks -------------------------------------------------------------------


def _fileno(stream: TextIO) -> int | None:
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` on ``fd``, also if it is non-blocking (a pipe or pty set so by another
    program): waits until it can be written rather than dropping anything."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        view = view[written:]


class StatusLine:
    """A line under the output on a terminal (stderr): drawn, erased before output is written
    over it, redrawn by its owner's ticker (at most every ``STATUS_EVERY`` s)."""

    def __init__(self, stream: TextIO, *, colour: bool) -> None:
        self.stream = stream
        self.fd = stream.fileno()
        self.colour = colour
        self.shown = False
        self.draws = 0

    def erase(self) -> None:
        if self.shown:
            self.shown = False
            write_all(self.fd, b"\r\x1b[2K")

    def draw(self, text: str) -> None:
        width = terminal_width(self.stream) or 80
        text = fit(clean(text), max(width - 1, 1))
        body = f"\x1b[2m{text}\x1b[0m" if self.colour else text
        write_all(self.fd, ("\r\x1b[2K" + body).encode("utf-8", "replace"))
        self.shown = True
        self.draws += 1


class Blocks:
    """Bytes bound for stdout and stderr, written in blocks: ``add`` appends to the pending
    block (the parts for one stream joined, the order across streams kept) and arranges for
    a ``flush`` at the event loop's next turn, or at once past ``BLOCK`` bytes. A status line
    on the terminal is erased before a block is written; its ticker redraws it."""

    def __init__(self) -> None:
        self._parts: list[tuple[TextIO, bytearray]] = []
        self._size = 0
        self._scheduled = False
        self._broken: OSError | None = None  # a write failed (EPIPE: ``| head``): raised on
        self.status: StatusLine | None = None

    def add(self, stream: TextIO, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        parts = self._parts
        if parts and parts[-1][0] is stream:
            parts[-1][1].extend(data)
        else:
            parts.append((stream, bytearray(data)))
        self._size += len(data)
        if self._size >= BLOCK:
            self.flush()
        elif not self._scheduled:
            import asyncio

            try:
                asyncio.get_running_loop().call_soon(self._flush_later)
            except RuntimeError:  # no event loop: now
                self.flush()
                return
            self._scheduled = True

    def _flush_later(self) -> None:
        """``flush`` from the event loop: a failed write is kept and raised by the next ``add``
        or ``flush``, in the task that writes (an error in a loop callback would only be
        logged, once per block)."""
        with contextlib.suppress(OSError):  # kept in _broken
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._broken is not None:
            raise self._broken
        if not self._parts:
            return
        parts, self._parts, self._size = self._parts, [], 0
        try:
            if self.status is not None:
                self.status.erase()
            for stream, data in parts:
                fd = _fileno(stream)
                if fd is None:
                    stream.write(data.decode("utf-8", "replace"))
                else:
                    write_all(fd, data)
        except OSError as exc:
            self._broken = exc
            raise

    def draw_status(self, text: str) -> None:
        """Draw the status line under what has been written."""
        self.flush()
        if self.status is not None:
            self.status.draw(text)

    def end_status(self) -> None:
        """What is pending written, the status line erased and gone."""
        self.flush()
        if self.status is not None:
            self.status.erase()
            self.status = None


#: The one writer of this process (commands run one at a time).
BLOCKS: Final = Blocks()


# -- terminals and cells --------------------------------------------------------------------


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def colour_for(stream: TextIO) -> bool:
    """Colours on ``stream``: a terminal, ``NO_COLOR`` unset or empty, ``TERM`` not dumb."""
    return _isatty(stream) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def terminal_width(stream: TextIO) -> int | None:
    """The columns of the terminal ``stream`` is (``COLUMNS`` if it can't be asked); None if it
    is not a terminal."""
    if not _isatty(stream):
        return None
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        try:
            return int(os.environ.get("COLUMNS", "80"))
        except ValueError:
            return 80


_CONTROLS: Final = {c: "?" for c in [*range(32), 127, *range(128, 160)]} | {
    9: " ",
    10: " ",
    13: " ",
}


def clean(text: str) -> str:
    """A table cell or status text on one line, with no control character (no escape code
    from a job's name or command reaches the terminal)."""
    return text if text.isprintable() else text.translate(_CONTROLS)


def _char_cells(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def cells(text: str) -> int:
    """The terminal columns ``text`` takes (wide East Asian characters take two)."""
    return len(text) if text.isascii() else sum(map(_char_cells, text))


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in an ellipsis if it was cut."""
    if cells(text) <= width:
        return text
    if width <= 0:
        return ""
    if text.isascii():
        return text[: width - 1] + ELLIPSIS
    used = 0
    for i, char in enumerate(text):
        used += _char_cells(char)
        if used > width - 1:
            return text[:i] + ELLIPSIS
    return text


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cells(text))


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None = None,
    colour: bool = False,
    style_column: str | None = "State",
    flexible: Sequence[str] = (),
) -> str:
    """Columns aligned with two spaces and a dashed rule under the header, like PowerShell's
    Format-Table; no trailing blanks, never wrapped. Within ``width`` columns (a terminal's)
    the ``flexible`` columns give way, the first first, down to their header's width, cut
    with an ellipsis; every other column is shown in full. Fast: 10,000 rows in a few ms."""
    head = [clean(c) for c in columns]
    body = [[clean(c) for c in row] for row in rows]
    by_column = list(zip(*body, strict=True)) if body else [()] * len(head)
    widths = [
        max(cells(c), max(map(cells, col), default=0))
        for c, col in zip(head, by_column, strict=True)
    ]
    cut = [False] * len(widths)
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        for name in flexible:
            if over <= 0:
                break
            if name not in columns:
                continue
            i = columns.index(name)
            give = min(over, widths[i] - max(cells(head[i]), 3))
            if give > 0:
                widths[i] -= give
                over -= give
                cut[i] = True
    styled = columns.index(style_column) if style_column in columns else -1
    last = len(widths) - 1

    def line(cells_: Sequence[str], *, header: bool = False) -> str:
        out: list[str] = []
        for i, text in enumerate(cells_):
            if cut[i]:
                text = fit(text, widths[i])
            shown = text
            if colour and header:
                shown = f"\x1b[1m{text}\x1b[0m"
            elif colour and i == styled and text in STATE_COLOURS:
                shown = f"\x1b[{STATE_COLOURS[text]}m{text}\x1b[0m"
            pad = "" if i == last else " " * (widths[i] - cells(text))
            out.append(shown + pad)
        return "  ".join(out).rstrip()

    lines = [line(head, header=True), line(["-" * cells(c) for c in head])]
    lines.extend(line(row) for row in body)
    return "\n".join(lines) + "\n"


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``render_table`` for a pipe or a file: no colours, nothing cut."""
    return render_table(columns, rows)


# -- for people -----------------------------------------------------------------------------


def value_text(value: Any) -> str:
    """A record's value as one line of text (an error as its message, in CLI words)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return cli_message(value)
    return json.dumps(plain(value), ensure_ascii=False)


def tag_bytes(location: str, *, colour: bool, error: bool = False) -> bytes:
    """``web01: `` as written before each of a host's lines: only the name coloured."""
    name = clean(location)
    if colour:
        name = f"\x1b[{ERROR_TAG_COLOUR if error else TAG_COLOUR}m{name}\x1b[0m"
    return f"{name}: ".encode("utf-8", "replace")


@attrs.define
class Screen:
    """Where a command writes for people, and how: bytes in blocks; on a terminal, colours,
    tables fitted to its width and a status line."""

    json: bool = False
    json_lines: bool = False
    out: TextIO = attrs.field(factory=lambda: sys.stdout)
    err: TextIO = attrs.field(factory=lambda: sys.stderr)
    _colours: dict[int, bool] = attrs.field(factory=dict, init=False, repr=False)

    @property
    def tty(self) -> bool:
        return _isatty(self.out)

    @property
    def live(self) -> bool:
        """Progress displays: only for people at a terminal (stdout and stderr both: the
        status line must be erased before anything is written under it)."""
        return (
            self.tty
            and _isatty(self.err)
            and not self.json
            and not self.json_lines
            and os.environ.get("TERM") != "dumb"
        )

    @property
    def blocks(self) -> Blocks:
        return BLOCKS

    def colour(self, *, err: bool = False) -> bool:
        """Whether stdout (``err``: stderr) gets colours (asked once)."""
        known = self._colours.get(err)
        if known is None:
            known = self._colours[err] = colour_for(self.err if err else self.out)
        return known

    def write(self, text: str, *, err: bool = False) -> None:
        """A line of our own (not a job's), written at once."""
        BLOCKS.add(self.err if err else self.out, (text + "\n").encode("utf-8", "replace"))
        BLOCKS.flush()

    def record(self, record: Record, tag: str | None = None) -> None:
        """One record, people's way: output (and information) to stdout, error to stderr,
        the other streams to stderr with PowerShell's prefix (``WARNING: ...``), a line as it
        is (bytes that are not UTF-8 too); with ``tag``, after the host's tag. Written with
        the next block."""
        err = record.stream not in ("output", "information")
        value = record.value
        head = _PREFIX.get(record.stream, "").encode()
        if tag is not None:
            head = tag_bytes(tag, colour=self.colour(err=err), error=err) + head
        if not isinstance(value, bytes):
            value = value_text(value).encode("utf-8", "surrogateescape")
        BLOCKS.add(self.err if err else self.out, b"".join((head, value, b"\n")))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        err: bool = False,
        style_column: str | None = "State",
        flexible: Sequence[str] | None = None,
    ) -> None:
        """A table, written at once: on a terminal fitted to its width (``flexible`` give
        way, by default the last column) and coloured; else plain."""
        if not rows:
            return
        stream = self.err if err else self.out
        text = render_table(
            columns,
            rows,
            width=terminal_width(stream),
            colour=colour_for(stream),
            style_column=style_column,
            flexible=columns[-1:] if flexible is None else flexible,
        )
        BLOCKS.add(stream, text.encode("utf-8", "replace"))
        BLOCKS.flush()

    def start_status(self) -> StatusLine | None:
        """The status line on stderr, if this is a terminal (``live``); ``end_status`` ends it."""
        if not self.live:
            return None
        BLOCKS.flush()
        BLOCKS.status = StatusLine(self.err, colour=colour_for(self.err))
        return BLOCKS.status

    def end_status(self) -> None:
        BLOCKS.end_status()


async def run_status(screen: Screen, text: Callable[[], str]) -> None:
    """Redraw the status line every ``STATUS_EVERY`` s until cancelled (then it is erased)."""
    import anyio

    if screen.start_status() is None:
        return
    try:
        while True:
            BLOCKS.draw_status(text())
            await anyio.sleep(STATUS_EVERY)
    finally:
        screen.end_status()


def state_counts(states: Iterable[str]) -> str:
    """``pending 1  running 2  done 7  failed 0``: jobs or hosts by where they are."""
    tally = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for state in states:
        if state == "NotStarted":
            tally["pending"] += 1
        elif state == "Completed":
            tally["done"] += 1
        elif state in ("Failed", "Stopped"):
            tally["failed"] += 1
        else:
            tally["running"] += 1
    return "  ".join(f"{k} {v}" for k, v in tally.items())


def job_rows(jobs: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """Get-Job rows of ``--json`` job shapes."""
    return [
        [
            str(j["id"]),
            j["name"],
            j["kind"],
            j["state"],
            "True" if j["has_more_data"] else "False",
            j["location"],
            j["command"],
        ]
        for j in jobs
    ]


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
