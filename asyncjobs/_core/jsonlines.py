"""Structured output (``output="json"``): each stdout line of a program parsed as JSON.

A benchmark that prints one JSON object per line wants data records, not text to parse again.
``JsonLines`` is a splitter for a command's stdout (local, or a remote command's channel) that
turns each line into the value ``json.loads`` gives: dicts, lists, numbers, strings, bools and
``None``, data only (no ``object_hook``, nothing is ever executed or imported). What it promises:

- a line that is not JSON (truncated, not UTF-8, a huge number, nested too deep) is never lost:
  it becomes an *error* record holding a ``JsonLineError`` whose ``.line`` is the line itself
  (``str``, or ``bytes`` when it is not UTF-8) and whose message names the host or job and the
  line number; the records around it keep their order (one ``seq`` order, as always);
- a line of only whitespace carries nothing and is skipped (jq does the same);
- a line longer than ``JSON_MAX_LINE`` (16 MiB) is not held whole: it comes out in pieces as
  ``lines=True`` cuts it, each an error record (``.piece`` 1, 2, ...), so memory stays bounded and
  joining the pieces' ``.line`` gives the line back. Lines up to that size (a 10 MB histogram)
  parse as one record.

The common case (every line of a read is JSON) costs one decode and one ``json.loads`` per line.
``feed`` returns *segments*, ``(stream, values)`` runs in order, since one read may hold both
output (the parsed lines) and error records (the lines that were not JSON).
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal, TypeAlias, final

import anyio

from .errors import AsyncJobsError, JobArgumentError
from .lines import Line, LineSplitter, split_long
from .log import RecordLog
from .models import StreamName

#: The longest stdout line parsed whole with ``output="json"``; a longer one comes in pieces.
JSON_MAX_LINE: Final = 16 * 1024 * 1024

#: What ``output=`` takes: ``"text"`` (lines as ``str``, the default) or ``"json"``.
OutputMode: TypeAlias = Literal["text", "json"]

#: Runs of consecutive records of one stream, in order: what one read of stdout became.
Segments: TypeAlias = list[tuple[StreamName, list[Any]]]


class JsonLineError(AsyncJobsError):
    """A stdout line that ``output="json"`` could not parse: the value of an *error* record.

    ``line`` is the line, kept (``str``; ``bytes`` if it is not UTF-8); ``lineno`` its number
    among the command's stdout lines (from 1); ``where`` the host (``"host h1:22"``) or job;
    ``piece`` the piece number of a line too long to parse (None for a whole line)."""

    def __init__(
        self, message: str, *, where: str, lineno: int, line: Line, piece: int | None = None
    ) -> None:
        super().__init__(message)
        self.where = where
        self.lineno = lineno
        self.line = line
        self.piece = piece

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the CLI's JSON lines): the line as text (bytes decoded with
        replacement characters: a JSON line can't carry raw bytes)."""
        line = self.line if isinstance(self.line, str) else self.line.decode("utf-8", "replace")
        row: dict[str, Any] = {"error": str(self), "lineno": self.lineno, "line": line}
        if self.piece is not None:
            row["piece"] = self.piece
        return row


def check_output(value: object, *, lines: bool = True) -> OutputMode:
    """The ``output=`` argument: ``"text"`` or ``"json"``; ``"json"`` needs ``lines=True``."""
    if value not in ("text", "json"):
        raise JobArgumentError(
            f"output must be 'text' (lines as str) or 'json' (each stdout line parsed as "
            f"JSON into a data record), got {value!r}"
        )
    if value == "json" and not lines:
        raise JobArgumentError(
            "output='json' parses lines: it needs lines=True (lines=False passes raw chunks)"
        )
    return value


def _why(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc)


@final
class JsonLines:
    """Bytes of a command's stdout in, segments of data records and error records out.

    ``where`` names the source in error messages (``"host h1:22"``, ``"job 3 ('bench')"``)."""

    __slots__ = ("_lineno", "_long", "_max", "_split", "where")

    def __init__(self, where: str, max_line: int = JSON_MAX_LINE) -> None:
        self.where = where
        self._max = max_line
        self._split = LineSplitter(max_line)
        self._lineno = 0  # lines finished so far
        self._long = 0  # pieces given out of the unfinished over-long line (0: none)

    def feed(self, data: bytes) -> Segments:
        """The records the lines ``data`` completes become, plus pieces of an over-long line."""
        body, cut = self._split.feed_body(data)
        out: Segments = []
        if body is not None:
            self._body(body, out)
        for piece in cut:
            self._piece(piece, out)
        return out

    def flush(self) -> Segments:
        """The last line, if the output did not end with a newline."""
        out: Segments = []
        tail = self._split.flush()
        if tail is not None:
            raw = tail.encode("utf-8") if isinstance(tail, str) else tail
            self._one(raw, out)
        return out

    @property
    def lineno(self) -> int:
        """Stdout lines finished so far."""
        return self._lineno

    def _body(self, body: bytes, out: Segments) -> None:
        if not self._long and len(body) <= self._max:
            try:  # the common case: every line of the read is JSON
                values = [json.loads(t) for t in body.decode("utf-8").split("\n") if t.strip()]
            except (ValueError, RecursionError):
                pass
            else:
                self._lineno += body.count(b"\n") + 1
                if values:
                    out.append(("output", values))
                return
        for raw in body.split(b"\n"):
            self._one(raw, out)

    def _one(self, raw: bytes, out: Segments) -> None:
        """One finished line: the tail of an over-long one, too long itself, or parsed."""
        if self._long or len(raw) > self._max:  # the tail of a long line may be long too
            for piece in split_long(raw, self._max):
                self._piece(piece, out)
            self._long = 0
        else:
            self._parse(raw, out)
        self._lineno += 1

    def _parse(self, raw: bytes, out: Segments) -> None:
        lineno = self._lineno + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            why = "not UTF-8"
            _add(out, "error", self._error(f"is not JSON ({why})", lineno, raw))
            return
        if not text.strip():
            return
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            _add(out, "error", self._error(f"is not JSON ({_why(exc)})", lineno, text))
        else:
            _add(out, "output", value)

    def _piece(self, piece: Line, out: Segments) -> None:
        self._long += 1
        what = f"is longer than {self._max // (1024 * 1024)} MiB: not parsed, piece {self._long}"
        _add(out, "error", self._error(what, self._lineno + 1, piece, self._long))

    def _error(self, what: str, lineno: int, line: Line, piece: int | None = None) -> JsonLineError:
        message = f"{self.where}: stdout line {lineno} {what}; the line is kept in .line"
        return JsonLineError(message, where=self.where, lineno=lineno, line=line, piece=piece)

    def __repr__(self) -> str:
        return f"<JsonLines {self.where} lines={self._lineno}>"


def _add(out: Segments, stream: StreamName, value: Any) -> None:
    if out and out[-1][0] == stream:
        out[-1][1].append(value)
    else:
        out.append((stream, [value]))


def append_values_nowait(log: RecordLog, stream: StreamName, values: list[Any]) -> int:
    """``RecordLog.append_lines_nowait`` for values that are not lines (data records, errors):
    one record each, as many as fit now in a ``block`` buffer; how many were taken."""
    for taken, value in enumerate(values):
        try:
            log.append_nowait(stream, value)
        except anyio.WouldBlock:
            return taken
    return len(values)
