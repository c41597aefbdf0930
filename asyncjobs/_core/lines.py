"""Lines to and from a program: our own splitter for its output, the encoder for its input.

A pipe delivers bytes in arbitrary chunks. ``LineSplitter`` turns them into lines the way a user
reading the program's output expects, with three promises that a ready-made reader does not keep
(anyio's ``receive_until`` raises on a long line, ``TextIOWrapper`` raises or replaces on bad
bytes):

- a line is split on ``b"\\n"`` only; the newline is removed, a ``"\\r"`` before it is kept;
- a line that is valid UTF-8 becomes a ``str``; one that is not stays ``bytes``, untouched;
- a line longer than ``max_line`` bytes comes out in pieces of at most ``max_line`` bytes (cut
  between UTF-8 characters when possible), so memory stays bounded and joining the pieces gives
  the line back.

It is fast because the common case never loops over bytes in Python: the complete lines of a chunk
are decoded in one call and split in one call; only a chunk that is not valid UTF-8, or that holds
an over-long line, is handled line by line.

With ``lines=False`` a job's output is not split at all: ``RawChunks`` passes each chunk read
from the pipe through as one ``bytes`` item (joining the items gives the stream back exactly),
which is what binary output (an archive, an image) and bulk transfers want: one record per
chunk instead of one per line.

Input lines go the other way: ``input_chunks`` encodes them (UTF-8, a newline added where missing)
and joins them into chunks, so that feeding stdin is one write per chunk, not one per line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, TypeAlias, cast, final

from .errors import JobArgumentError

#: A line of output: text when it is valid UTF-8, else the raw bytes.
Line: TypeAlias = str | bytes

#: The longest line kept whole; longer lines are emitted in pieces of this many bytes.
MAX_LINE: Final = 1024 * 1024

#: How much is read from a pipe, or written to one, at a time.
CHUNK: Final = 64 * 1024


def decode_line(data: bytes) -> Line:
    """``data`` as text if it is valid UTF-8, else ``data`` itself: never an exception."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _cut_point(data: bytes | bytearray, start: int, limit: int) -> int:
    """Where to end a piece of at most ``limit`` bytes from ``start`` (``data`` is longer):
    before the UTF-8 character that straddles the limit, if there is one (a character is at most
    4 bytes, its continuation bytes are ``0b10xxxxxx``); at the limit if it is not UTF-8 anyway."""
    end = start + limit
    for cut in range(end, end - 4, -1):
        if data[cut] & 0xC0 != 0x80:
            return cut
    return end


def split_long(line: bytes, limit: int) -> list[Line]:
    """A line of any length as decoded pieces of at most ``limit`` bytes."""
    out: list[Line] = []
    while len(line) > limit:
        cut = _cut_point(line, 0, limit)
        out.append(decode_line(line[:cut]))
        line = line[cut:]
    out.append(decode_line(line))
    return out


@final
class LineSplitter:
    """Bytes in, lines out: ``feed(chunk)`` returns the lines the chunk completed, ``flush()``
    the last line if the output did not end with a newline.

    At most ``max_line`` bytes of an unfinished line are held between calls.
    """

    __slots__ = ("_max", "_partial")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if not isinstance(max_line, int) or isinstance(max_line, bool) or max_line < 4:
            raise ValueError(f"max_line must be an int of at least 4 (bytes), got {max_line!r}")
        self._max = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[Line]:
        """The lines that ``data`` completes (maybe none), plus pieces of an over-long line."""
        body, cut = self.feed_body(data)
        if body is None:
            return cut
        lines = self.split_body(body)
        lines.extend(cut)
        return lines

    def feed_body(self, data: bytes) -> tuple[bytes | None, list[Line]]:
        """``feed`` before the split: the bytes of the complete lines that ``data`` completes
        (every byte up to, not including, the last newline; None if it completes none), and
        pieces cut off an over-long unfinished line (which come after those lines). For a
        reader that turns a batch of lines into something else in one go (the job host)."""
        last = data.rfind(b"\n")
        if last < 0:
            self._partial += data
            return None, self._cut_partial() if len(self._partial) > self._max else []
        if self._partial:
            self._partial += memoryview(data)[:last]
            body = bytes(self._partial)
            self._partial.clear()
        else:
            body = data[:last]
        self._partial += memoryview(data)[last + 1 :]
        return body, self._cut_partial() if len(self._partial) > self._max else []

    def flush(self) -> Line | None:
        """The unfinished last line (the output ended without a newline), or ``None``."""
        if not self._partial:
            return None
        line = decode_line(bytes(self._partial))
        self._partial.clear()
        return line

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held until its newline (or ``flush``)."""
        return len(self._partial)

    def split_body(self, body: bytes) -> list[Line]:
        """Complete lines: ``body`` is every byte up to (not including) a chunk's last newline
        (what ``feed_body`` returns)."""
        if len(body) <= self._max:  # no line in it can be too long
            try:
                return cast("list[Line]", body.decode("utf-8").split("\n"))
            except UnicodeDecodeError:
                return [decode_line(line) for line in body.split(b"\n")]
        out: list[Line] = []
        for line in body.split(b"\n"):
            if len(line) > self._max:
                out.extend(split_long(line, self._max))
            else:
                out.append(decode_line(line))
        return out

    def _cut_partial(self) -> list[Line]:
        """Emit full pieces of the unfinished line, keeping at most ``max_line`` bytes of it."""
        out: list[Line] = []
        partial = self._partial
        start = 0
        while len(partial) - start > self._max:
            cut = _cut_point(partial, start, self._max)
            out.append(decode_line(bytes(partial[start:cut])))
            start = cut
        del partial[:start]
        return out

    def __repr__(self) -> str:
        return f"<LineSplitter max_line={self._max} pending={len(self._partial)}>"


@final
class RawChunks:
    """The ``lines=False`` splitter: every chunk is one item, as it was read."""

    __slots__ = ()

    def feed(self, data: bytes) -> list[Line]:
        return [bytes(data)] if data else []

    def flush(self) -> Line | None:
        return None

    @property
    def pending(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<RawChunks>"


#: What a job's reader splits its pipe's bytes with.
Splitter: TypeAlias = LineSplitter | RawChunks


def check_lines(value: object) -> bool:
    """The ``lines=`` argument: a bool, nothing else (``lines="no"`` would be true)."""
    if not isinstance(value, bool):
        raise JobArgumentError(
            f"lines must be True (split output into lines) or False (raw bytes chunks), "
            f"got {value!r}"
        )
    return value


def splitter(lines: bool, max_line: int = MAX_LINE) -> Splitter:
    """A ``LineSplitter`` when ``lines``, else ``RawChunks``."""
    return LineSplitter(max_line) if lines else RawChunks()


def encode_line(item: object, index: int) -> bytes:
    """Line ``index`` of an ``input=`` iterable as bytes ending in a newline."""
    if isinstance(item, str):
        data = item.encode("utf-8")
    elif isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
    else:
        raise JobArgumentError(
            f"input line {index} must be str or bytes, got {type(item).__name__}: {item!r}"
        )
    return data if data.endswith(b"\n") else data + b"\n"


def input_chunks(lines: Iterable[object], size: int = CHUNK) -> Iterator[bytes]:
    """``lines`` encoded and joined into chunks of about ``size`` bytes, lazily: a generator
    given as ``input=`` is consumed only as fast as the program reads."""
    batch: list[bytes] = []
    held = 0
    for index, item in enumerate(lines):
        line = encode_line(item, index)
        batch.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(batch)
            batch, held = [], 0
    if batch:
        yield b"".join(batch)
