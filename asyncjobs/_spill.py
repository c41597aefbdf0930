"""The spill file of a record log: older records leave memory for an unlinked temporary file.

Records are pickled (the file is ours and never leaves this process) with their stream and time.
Two arrays index it, start and end offset per seq, so a reader fetches any range with one read
per chunk and stops as soon as it has enough. Values that cannot be pickled stay in memory
beside the file, so spilling never loses or refuses a record.
"""

from __future__ import annotations

import pickle
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final

_PINNED: Final = -1  # start offset marker: this record could not be pickled and stays in memory
_READ_CHUNK: Final = 4096  # records per file read


class SpillFile:
    """Records ``first .. first+len-1`` of one log, on disk. Append-only; ``discard_below``
    forgets the front, and the file is emptied once nothing in it is wanted any more."""

    __slots__ = ("_dead", "_end", "_ends", "_file", "_first", "_pinned", "_starts", "spilled_total")

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._starts = array("q")  # per seq: start offset in the file, or _PINNED
        self._ends = array("q")  # per seq: end offset (== start for a pinned record)
        self._pinned: dict[int, tuple[str, Any, float]] = {}
        self._first = 0  # seq of index _dead (the first live record)
        self._dead = 0  # index entries before _first, not yet compacted away
        self._end = 0  # bytes written
        self.spilled_total = 0

    def __len__(self) -> int:
        return len(self._starts) - self._dead

    @property
    def first(self) -> int:
        return self._first

    def write(self, first_seq: int, rows: Iterable[tuple[str, Any, float]]) -> None:
        """Append rows (stream, value, time) that carry seqs ``first_seq, first_seq+1, ...``."""
        if len(self) == 0:
            del self._starts[:], self._ends[:]
            self._dead = 0
            self._first = first_seq
        chunks: list[bytes] = []
        seq = first_seq
        dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
        for row in rows:
            try:
                blob = dumps(row, protocol=protocol)
            except Exception:  # any value that will not pickle stays in memory
                self._starts.append(_PINNED)
                self._ends.append(self._end)
                self._pinned[seq] = row
            else:
                self._starts.append(self._end)
                self._end += len(blob)
                self._ends.append(self._end)
                chunks.append(blob)
            seq += 1
        self.spilled_total += seq - first_seq
        if chunks:
            file = self._open()
            file.seek(0, 2)
            file.write(b"".join(chunks))

    def read(self, start: int, stop: int) -> Iterator[tuple[int, str, Any, float]]:
        """Yield (seq, stream, value, time) for seqs in ``[start, stop)`` held here, reading
        the file a chunk at a time (a reader that stops early reads little)."""
        base = self._first - self._dead  # seq of index 0
        lo = max(start, self._first) - base
        hi = min(stop, self._first + len(self)) - base
        starts, ends, loads = self._starts, self._ends, pickle.loads
        while lo < hi:
            top = min(hi, lo + _READ_CHUNK)
            begin = next((starts[i] for i in range(lo, top) if starts[i] != _PINNED), -1)
            data = b""
            if begin >= 0 and self._file is not None:
                self._file.flush()
                self._file.seek(begin)
                data = self._file.read(ends[top - 1] - begin)
            for i in range(lo, top):
                seq = base + i
                off = starts[i]
                if off == _PINNED:
                    stream, value, t = self._pinned[seq]
                else:
                    stream, value, t = loads(data[off - begin : ends[i] - begin])
                yield seq, stream, value, t
            lo = top

    def discard_below(self, seq: int) -> None:
        """Forget records below ``seq``; empty the file when nothing in it is wanted.

        Index entries are dropped in bulk (when the dead front is large) so that acking one
        record at a time stays O(1) amortised."""
        if seq <= self._first:
            return
        n = min(seq - self._first, len(self._starts) - self._dead)
        if self._pinned:
            for s in range(self._first, self._first + n):
                self._pinned.pop(s, None)
        self._first += n
        self._dead += n
        if self._dead == len(self._starts):
            del self._starts[:], self._ends[:]
            self._dead = 0
            if self._file is not None:
                self._file.seek(0)
                self._file.truncate()
                self._end = 0
        elif self._dead > 4096 and self._dead * 2 > len(self._starts):
            del self._starts[: self._dead], self._ends[: self._dead]
            self._dead = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="asyncjobs-spill-")  # noqa: SIM115 - closed by close()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
