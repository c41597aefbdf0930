"""The records of a job's log as the store keeps them: packed in chunks, and scanned back.

Each ``append`` stores its batch as one row (a few if it is large) of ``chunks(job, first_seq,
count, data)``; ``data`` is columnar so that ``struct`` and ``join`` do the work in C: ``count``
stream codes (u8, ``wire.STREAM_NAMES``), times (f64 LE), value lengths (u32 LE), then the values
back to back. A read seeks the chunk that holds ``from_seq`` and walks on (``scan``), keeping
the records it wants (``select``). No Python code runs per record on either side.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from itertools import accumulate, chain, islice
from struct import pack, unpack_from
from typing import Final, NamedTuple

from .._core.models import StreamName
from .wire import STREAM_CODES, STREAM_NAMES

_CHUNK_RECORDS: Final = 4096  # a chunk holds at most this many records
_CHUNK_BYTES: Final = 1 << 20  # and this many value bytes (or one bigger value)
#: A job's chunks from the one that holds seq ``?2`` on.
_CHUNKS_FROM: Final = (
    "SELECT first_seq, count, data FROM chunks WHERE job = ?1 AND first_seq >= coalesce("
    "(SELECT max(first_seq) FROM chunks WHERE job = ?1 AND first_seq <= ?2), 0) ORDER BY first_seq"
)


class StoredRecord(NamedTuple):
    """One record of a job's log; ``value`` is opaque bytes (the protocol layer decodes it).
    A named tuple: a reattach reads a million of them."""

    seq: int
    stream: StreamName
    value: bytes
    time: float


def pack_records(
    records: Sequence[tuple[str, bytes, float]],
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """The records' stream codes, and the records packed in chunks: ``[(first index, count,
    data), ...]``. The work is done by C loops (``zip``, ``map``, ``struct``, ``join``)."""
    streams, values, times = zip(*records, strict=True)
    n, first = len(values), streams[0]
    if streams.count(first) == n:  # the usual batch: one stream
        codes = bytes((STREAM_CODES[first],)) * n
    else:
        codes = bytes(map(STREAM_CODES.__getitem__, streams))
    lens = list(map(len, values))
    bounds = [(0, n)] if n <= _CHUNK_RECORDS and sum(lens) <= _CHUNK_BYTES else _cut(lens)
    return codes, [
        (a, b - a, b"".join((codes[a:b], pack(f"<{b - a}d", *times[a:b]),
                             pack(f"<{b - a}I", *lens[a:b]), *values[a:b])))
        for a, b in bounds
    ]  # fmt: skip


class Piece(NamedTuple):
    """Records of one stream packed as a chunk holds them, for ``Store.append_pieces``:
    ``count`` values, their lengths as u32 LE (``lens``) and the values back to back
    (``values``), all stamped ``time``. A job host's command job packs a pipe's lines into
    pieces with ``bytes`` operations (no Python object per line); the store joins them."""

    stream: StreamName
    records: int
    time: float
    lens: bytes
    values: bytes

    @classmethod
    def of(cls, stream: StreamName, values: Sequence[bytes], time: float) -> Piece:
        """A piece of ``values``, one record each."""
        lens = pack(f"<{len(values)}I", *map(len, values))
        return cls(stream, len(values), time, lens, b"".join(values))

    def cut(self, n: int) -> tuple[Piece, Piece]:
        """The first ``n`` records (0 < n < count), and the rest."""
        size = sum(unpack_from(f"<{n}I", self.lens))
        return (
            Piece(self.stream, n, self.time, self.lens[: 4 * n], self.values[:size]),
            Piece(self.stream, self.records - n, self.time, self.lens[4 * n :], self.values[size:]),
        )

    def fits(self) -> int:
        """How many of its first records fit in one chunk (at least 1)."""
        if self.records <= _CHUNK_RECORDS and len(self.values) <= _CHUNK_BYTES:
            return self.records
        lens = unpack_from(f"<{min(self.records, _CHUNK_RECORDS)}I", self.lens)
        return _cut(list(lens))[0][1]


def chunks_of(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped (and cut) into chunks of at most ``_CHUNK_RECORDS`` records and
    ``_CHUNK_BYTES`` value bytes (or one bigger value)."""
    group: list[Piece] = []
    count = size = 0
    for piece in pieces:
        while piece.records:
            if group and (
                count + piece.records > _CHUNK_RECORDS or size + len(piece.values) > _CHUNK_BYTES
            ):
                yield group
                group, count, size = [], 0, 0
            n = piece.fits()
            head, piece = piece.cut(n) if n < piece.records else (piece, piece._replace(records=0))
            group.append(head)
            count += head.records
            size += len(head.values)
    if group:
        yield group


def join_pieces(pieces: list[Piece]) -> bytes:
    """One chunk's ``data`` from its pieces: codes, times, lengths, values."""
    return b"".join(
        [
            *(bytes((STREAM_CODES[p.stream],)) * p.records for p in pieces),
            *(pack("<d", p.time) * p.records for p in pieces),
            *(p.lens for p in pieces),
            *(p.values for p in pieces),
        ]
    )


def _cut(lens: list[int]) -> list[tuple[int, int]]:
    """Bounds of chunks of at most ``_CHUNK_RECORDS`` records and ``_CHUNK_BYTES`` value bytes
    (or one bigger value)."""
    bounds: list[tuple[int, int]] = []
    lo = size = 0
    for i, length in enumerate(lens):
        if i > lo and (i - lo >= _CHUNK_RECORDS or size + length > _CHUNK_BYTES):
            bounds.append((lo, i))
            lo, size = i, 0
        size += length
    return [*bounds, (lo, len(lens))]


#: A record as ``read_rows`` gives it: ``(seq, stream, value, time)``, a plain tuple made by C.
Row = tuple[int, StreamName, bytes, float]


def scan(conn: sqlite3.Connection, job_id: int, start: int) -> Generator[Iterator[Row]]:
    """Every record of a job from seq ``start`` on, an iterator of rows per chunk (who stops
    early reads little). The rows are made by C loops (``zip``, ``map``, ``slice``): no Python
    code runs per record."""
    cursor = conn.execute(_CHUNKS_FROM, (job_id, start))
    try:
        for first, n, data in cursor:
            i = max(0, start - first)
            stamps = unpack_from(f"<{n}d", data, n)
            ends = list(accumulate(unpack_from(f"<{n}I", data, 9 * n), initial=13 * n))
            values = map(data.__getitem__, map(slice, ends[i:n], ends[i + 1 :]))
            codes = map(STREAM_NAMES.__getitem__, data[i:n])
            yield zip(range(first + i, first + n), codes, values, stamps[i:], strict=True)
    finally:
        cursor.close()


def select(
    chunks: Generator[Iterator[Row]],
    want: Collection[str],
    cursors: dict[str, int] | None,
    bound: int | None,
) -> list[Row]:
    """At most ``bound`` records of streams ``want`` (only unreceived ones with ``cursors``;
    ``None``: every record from where the scan starts is wanted)."""
    with closing(chunks):
        if bound == 0:
            return []
        rows = chain.from_iterable(chunks)
        if cursors is None and len(want) == len(STREAM_NAMES):
            return list(islice(rows, bound))
        out: list[Row] = []
        for row in rows:
            if row[1] in want and (cursors is None or row[0] >= cursors[row[1]]):
                out.append(row)
                if len(out) == bound:
                    break
        return out


def unreceived_from(start: int, want: Collection[str], cursors: dict[str, int]) -> bool:
    """Whether every record of ``want`` from seq ``start`` on is unreceived (no filter needed)."""
    return all(cursors[s] <= start for s in want)
