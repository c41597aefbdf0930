"""The spill file of a record log: older records leave memory for an unlinked temporary file.

Records are pickled (the file is ours and never leaves this process) with their stream and time;
a batch of lines (what one pipe read brought) is one pickle. Three arrays index it, first seq,
start and end offset per entry, so a reader fetches any range with one read per chunk and stops as
soon as it has enough. Values that cannot be pickled stay in memory
beside the file, so spilling never loses or refuses a record.

A write is all or nothing: the index learns of a batch only once all its bytes are in the file,
and a write that fails (a full disk) cuts the file back to where it was, so the file always
holds whole records only and everything spilled before stays readable. The caller still has
the batch (``RecordLog`` keeps it in memory and fails the job with ``SpillError``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import tempfile
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final

from .errors import SpillError as SpillError

_PINNED: Final = -1  # start offset marker: this record could not be pickled and stays in memory
_READ_RECORDS: Final = 4096  # entries per file read, at most ...
_READ_BYTES: Final = 1 << 20  # ... and about this many bytes


class SpillFile:
    """Records ``first .. first+len-1`` of one log, on disk. Append-only; ``discard_below``
    forgets the front, and the file is emptied once nothing in it is wanted any more.

    An entry is one record ``(stream, value, time)`` or a batch of lines ``(stream, lines,
    time, first_seq)``, pickled as one blob; the index holds one row per entry (its first seq,
    start and end offset), so a batch of lines costs the index nothing per line."""

    __slots__ = (
        "_dead",
        "_directory",
        "_end",
        "_ends",
        "_file",
        "_first",
        "_next",
        "_pinned",
        "_seqs",
        "_starts",
        "spilled_total",
    )

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._seqs = array("q")  # per entry: its first seq
        self._starts = array("q")  # per entry: start offset in the file, or _PINNED
        self._ends = array("q")  # per entry: end offset (== start for a pinned record)
        self._pinned: dict[int, tuple[str, Any, float]] = {}
        self._first = 0  # the first live seq (in entry _dead, maybe not at its start)
        self._next = 0  # the seq after the last entry
        self._dead = 0  # entries wholly before _first, not yet compacted away
        self._end = 0  # bytes written
        self._directory: str | None = None  # where the file is (made at the first write)
        self.spilled_total = 0

    def __len__(self) -> int:
        return self._next - self._first

    @property
    def first(self) -> int:
        return self._first

    @property
    def directory(self) -> str:
        """The directory the file is (or would be) made in: ``tempfile.gettempdir()``, which
        ``TMPDIR`` chooses when the process first asks."""
        if self._directory is None:
            try:
                self._directory = tempfile.gettempdir()
            except OSError:  # no usable directory at all (what the write failed of)
                return "the temporary directory (none is usable; set TMPDIR)"
        return self._directory

    def write(self, first_seq: int, rows: Iterable[tuple[Any, ...]]) -> None:
        """Append rows that carry seqs ``first_seq, ...`` in order: ``(stream, value, time)``
        for one record, ``(stream, lines, time, seq)`` for a batch of ``len(lines)`` records.

        All or nothing: an ``OSError`` (a full disk) leaves the file and the index as they
        were, so the caller still owns every row of the batch."""
        seqs, starts, ends = array("q"), array("q"), array("q")
        pinned: dict[int, tuple[str, Any, float]] = {}
        chunks: list[bytes] = []
        end = self._end if len(self) else 0
        seq = first_seq
        dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
        for row in rows:
            seqs.append(seq)
            try:
                blob = dumps(row, protocol=protocol)
            except Exception:  # any value that will not pickle stays in memory
                starts.append(_PINNED)
                ends.append(end)
                pinned[seq] = row
            else:
                starts.append(end)
                end += len(blob)
                ends.append(end)
                chunks.append(blob)
            seq += len(row[1]) if len(row) == 4 else 1
        if not len(self):  # nothing live: the file starts over at this batch
            if chunks:
                self._append(b"".join(chunks), 0)
            del self._seqs[:], self._starts[:], self._ends[:]
            self._dead = 0
            self._first = first_seq
        elif chunks:
            self._append(b"".join(chunks), self._end)
        self._seqs.extend(seqs)
        self._starts.extend(starts)
        self._ends.extend(ends)
        self._pinned.update(pinned)
        self._end = end
        self._next = seq
        self.spilled_total += seq - first_seq

    def _append(self, data: bytes, at: int) -> None:
        """Write ``data`` at offset ``at`` (looping over short writes); on failure cut the
        file back to ``at`` and raise."""
        fd = self._open().fileno()
        try:
            _write_all(fd, data, at)
        except OSError:
            # What is past ``at`` is not indexed: never read, and overwritten next time.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, at)
            raise

    def read(self, start: int, stop: int) -> Iterator[tuple[int, str, Any, float]]:
        """Yield (seq, stream, value, time) for seqs in ``[start, stop)`` held here, a batch's
        lines one by one (see ``entries``)."""
        for seq, stream, value, t, batch in self.entries(start, stop):
            if not batch:
                yield seq, stream, value, t
                continue
            lo, hi = max(start, self._first, seq), min(stop, seq + len(value))
            for i in range(lo, hi):
                yield i, stream, value[i - seq], t

    def entries(self, start: int, stop: int) -> Iterator[tuple[int, str, Any, float, bool]]:
        """Yield ``(seq, stream, value, time, False)`` for a record and ``(seq, stream, lines,
        time, True)`` for a batch (``seq``: its first line's; it may begin before ``start``),
        for the entries holding seqs in ``[start, stop)``, reading the file a chunk at a time
        (a reader that stops early reads little). A file shorter than its index says raises
        ``OSError`` (``EIO``), never a half-read record."""
        start = max(start, self._first)
        stop = min(stop, self._next)
        if start >= stop:
            return
        seqs, starts, ends, loads = self._seqs, self._starts, self._ends, pickle.loads
        i = bisect_right(seqs, start, self._dead) - 1
        count = len(seqs)
        while i < count and seqs[i] < stop:
            top = i + 1  # this chunk: entries i .. top-1
            while top < count and top - i < _READ_RECORDS and seqs[top] < stop:
                if starts[top] != _PINNED and ends[top] - starts[i] > _READ_BYTES:
                    break
                top += 1
            begin = next((starts[j] for j in range(i, top) if starts[j] != _PINNED), -1)
            data = memoryview(b"")
            if begin >= 0:
                data = memoryview(self._read_at(begin, ends[top - 1] - begin))
            for j in range(i, top):
                off = starts[j]
                if off == _PINNED:
                    stream, value, t = self._pinned[seqs[j]]
                    yield seqs[j], stream, value, t, False
                    continue
                row = loads(data[off - begin : ends[j] - begin])
                yield seqs[j], row[0], row[1], row[2], len(row) == 4
            i = top

    def _read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset`` (looping over short reads)."""
        if self._file is None:
            raise OSError(errno.EIO, "the spill file is closed")
        fd = self._file.fileno()
        parts: list[bytes] = []
        got = 0
        while got < size:
            part = os.pread(fd, size - got, offset + got)
            if not part:
                raise OSError(
                    errno.EIO,
                    f"the spill file ends {size - got} bytes short of its index "
                    f"(at offset {offset + got} of {self._end})",
                )
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def discard_below(self, seq: int) -> None:
        """Forget records below ``seq``; empty the file when nothing in it is wanted.

        Index entries are dropped in bulk (when the dead front is large) so that acking one
        record at a time stays O(1) amortised."""
        if seq <= self._first:
            return
        first = self._first = min(seq, self._next)
        if self._pinned:
            for s in [s for s in self._pinned if s < first]:
                del self._pinned[s]
        seqs, count = self._seqs, len(self._seqs)
        dead = self._dead
        while dead + 1 < count and seqs[dead + 1] <= first:
            dead += 1
        self._dead = dead
        if first == self._next:
            del self._seqs[:], self._starts[:], self._ends[:]
            self._dead = 0
            self._end = 0
            if self._file is not None:  # nothing in it is indexed: it is overwritten from 0
                with contextlib.suppress(OSError):
                    os.ftruncate(self._file.fileno(), 0)
        elif dead > 4096 and dead * 2 > count:
            del self._seqs[:dead], self._starts[:dead], self._ends[:dead]
            self._dead = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._directory = tempfile.gettempdir()
            # Unbuffered: every byte written is in the file when pwrite returns, and reads
            # and writes go by offset (no file position, no buffer to get out of step).
            self._file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                prefix="asyncjobs-spill-", dir=self._directory, buffering=0
            )
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_all(fd: int, data: bytes, at: int) -> None:
    """``data`` written at offset ``at``, however many writes it takes."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        if n <= 0:  # a regular file never does this for a non-empty write: don't spin
            raise OSError(errno.EIO, "the spill file took no bytes")
        at += n
        view = view[n:]
