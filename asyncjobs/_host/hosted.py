"""How the job host runs a command: from its pipes straight into the store, in batches.

An in-process command job turns every line into a ``Record`` in its ``RecordLog``; on the job
host that would be done only to be undone at once (the records go to the store, and readers
read the store). Here a pipe's bytes become store ``Piece``\\ s instead: the complete lines of a
read are split, checked for UTF-8 and packed with a handful of ``bytes`` calls (``split``,
``isascii``/``decode``, ``join``, ``struct.pack``), and a ``Sink`` appends what the pipes
gave, in arrival order, in one transaction per batch. The lines are what ``LineSplitter``
makes of them: split on ``\\n`` only, text when valid UTF-8 else the raw bytes, a line over
``MAX_LINE`` bytes in pieces; only a batch that is not UTF-8 or holds an over-long line is
packed line by line.

The job itself is an ordinary ``Job`` run by ``run_in_slot`` (the runner API) with the
command machinery of ``_local.command`` (spawn, stdin feeding, stop escalation, exit status):
only the pumps differ. Its ``RecordLog`` stays empty unless the spawn fails (the error record
goes there).
"""

from __future__ import annotations

import json
import operator
import time
from itertools import repeat
from struct import pack
from typing import Any, Final, Protocol, final

import anyio
from anyio.abc import ByteReceiveStream

from .._core.lines import CHUNK, MAX_LINE, LineSplitter
from .._core.models import StreamName
from .._core.runner import Run
from .._local.command import CommandSpec, run_command
from .store import Piece
from .wire import decode_value, encode_value

#: Pending records a sink appends at once rather than waiting for ``FLUSH_DELAY`` to pass.
FLUSH_RECORDS: Final = 4096
FLUSH_BYTES: Final = 1 << 20
#: How long read lines may wait in memory for more to join their batch (latency of a follower).
FLUSH_DELAY: Final = 0.005
#: How much a pump asks its pipe for at once.
READ_SIZE: Final = 4 * CHUNK


def pack_value(value: Any) -> bytes:
    """A record's value as the store keeps it: text and bytes raw (the common case: command
    output), anything else as the wire's JSON. Never pickle: the store holds data only."""
    if type(value) is str:
        return b"s" + value.encode("utf-8", "surrogatepass")
    if type(value) is bytes:
        return b"b" + value
    return b"j" + json.dumps(encode_value(value), separators=(",", ":")).encode()


def unpack_value(blob: bytes) -> Any:
    kind, body = blob[:1], blob[1:]
    if kind == b"s":
        return body.decode("utf-8", "surrogatepass")
    if kind == b"b":
        return bytes(body)
    return decode_value(json.loads(body))


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@final
class LinePacker:
    """One pipe's bytes in, ``Piece``\\ s of its lines out (``LineSplitter``'s lines, packed
    as ``pack_value`` packs them: ``b"s"`` + UTF-8, or ``b"b"`` + bytes that are not).

    ``feed(data)`` returns the pieces of the lines ``data`` completed; ``flush()`` those of an
    unfinished last line. At most ``max_line`` bytes of an unfinished line are held."""

    __slots__ = ("_max", "_split", "stream")

    def __init__(self, stream: StreamName, max_line: int = MAX_LINE) -> None:
        self.stream = stream
        self._max = max_line
        self._split = LineSplitter(max_line)  # holds the unfinished line, cuts it if too long

    def feed(self, data: bytes) -> list[Piece]:
        now = time.time()
        body, cut = self._split.feed_body(data)
        pieces = [] if body is None else self._pack(body, now)
        if cut:
            pieces.extend(self._slow(cut, now))
        return pieces

    def flush(self) -> list[Piece]:
        """The unfinished last line (the output ended without a newline), if any."""
        line = self._split.flush()
        return [] if line is None else self._slow([line], time.time())

    @property
    def pending(self) -> int:
        return self._split.pending

    def _pack(self, body: bytes, now: float) -> list[Piece]:
        """Complete lines (``body``: up to, not including, the last newline) as pieces: the
        fast path when the batch is UTF-8 and no line is too long (each value is then ``b"s"``
        and the line's bytes)."""
        lines = body.split(b"\n")
        n = len(lines)
        short = len(body) <= self._max or max(map(len, lines)) <= self._max
        if short and _utf8(body):
            lens = pack(f"<{n}I", *map(operator.add, map(len, lines), repeat(1, n)))
            return [Piece(self.stream, n, now, lens, b"s" + b"s".join(lines))]
        return self._slow(self._split.split_body(body), now)

    def _slow(self, values: list[Any], now: float) -> list[Piece]:
        return [Piece.of(self.stream, [pack_value(v) for v in values], now)]


class Sink(Protocol):
    """Where a host command's pieces go (the job host's per-job writer)."""

    def add(self, pieces: list[Piece]) -> None:
        """Take pieces (maybe appending them to the store at once)."""

    @property
    def holding(self) -> bool:
        """Whether pieces wait in memory for a later append."""

    def flush(self) -> None:
        """Append the pieces held back so far (as many as ``output_buffering`` lets in)."""

    async def room(self) -> None:
        """Return once the job may produce more (``output_buffering="block"`` holds it)."""


async def run_host_command(run: Run, spec: CommandSpec, sink: Sink) -> None:
    """The body of a job host's command job (see ``run_in_slot``; ``run`` is its handle on
    the job): ``run_command`` with pumps that feed ``sink``. Whatever ends it, the process
    group is terminated and reaped, and every line read is in ``sink`` (the last one too,
    stopped mid-line)."""

    async def pump(stream: ByteReceiveStream, name: StreamName) -> None:
        await _pump(stream, sink, name)

    await run_command(run, spec, pump)


async def _pump(stream: ByteReceiveStream, sink: Sink, name: StreamName) -> None:
    """Pack every line of ``stream`` into ``sink`` until EOF. Lines wait in the sink up to
    ``FLUSH_DELAY`` for more to join their transaction: while the pipe keeps delivering they
    go in batches, and once it is quiet they are appended at once."""
    packer = LinePacker(name)
    receive = stream.receive
    try:
        while True:
            await sink.room()
            try:
                if sink.holding:
                    data = b""
                    with anyio.move_on_after(FLUSH_DELAY):
                        data = await receive(READ_SIZE)
                    if not data:  # quiet for FLUSH_DELAY: what is held goes in now
                        sink.flush()
                        continue
                else:
                    data = await receive(READ_SIZE)
            except anyio.EndOfStream:
                break
            sink.add(packer.feed(data))
    finally:
        sink.add(packer.flush())  # also when stopped: a line read is never lost
        sink.flush()
