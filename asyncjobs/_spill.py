"""The spill file of a record log: older records leave memory for an unlinked temporary file.

Records are pickled (the file is ours and never leaves this process) with their stream and time;
an index of offsets per seq lets a reader fetch any range with one read. Values that cannot be
pickled stay in memory beside the file, so spilling never loses or refuses a record.
"""

from __future__ import annotations

import pickle
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import IO, Any, Final

_PINNED: Final = -1  # offset marker: this record could not be pickled and stays in memory


class SpillFile:
    """Records ``first .. first+len-1`` of one log, on disk. Append-only; ``discard_below``
    forgets the front, and the file is emptied once nothing in it is wanted any more."""

    __slots__ = ("_end", "_file", "_first", "_offsets", "_pinned", "spilled_total")

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._offsets = array("q")  # per seq: start offset in the file, or _PINNED
        self._pinned: dict[int, tuple[str, Any, float]] = {}
        self._first = 0  # seq of _offsets[0]
        self._end = 0  # bytes written
        self.spilled_total = 0

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def first(self) -> int:
        return self._first

    def write(self, first_seq: int, rows: Iterable[tuple[str, Any, float]]) -> None:
        """Append rows (stream, value, time) that carry seqs ``first_seq, first_seq+1, ...``."""
        if not self._offsets:
            self._first = first_seq
        chunks: list[bytes] = []
        seq = first_seq
        for row in rows:
            try:
                blob = pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                self._offsets.append(_PINNED)
                self._pinned[seq] = row
            else:
                self._offsets.append(self._end)
                self._end += len(blob)
                chunks.append(blob)
            seq += 1
            self.spilled_total += 1
        if chunks:
            file = self._open()
            file.seek(0, 2)
            file.write(b"".join(chunks))

    def read(self, start: int, stop: int) -> Iterator[tuple[int, str, Any, float]]:
        """Yield (seq, stream, value, time) for seqs in ``[start, stop)`` held here."""
        start = max(start, self._first)
        stop = min(stop, self._first + len(self._offsets))
        if start >= stop:
            return
        lo, hi = start - self._first, stop - self._first
        ends = [self._next_offset(i) for i in range(lo, hi)]
        begin = next((self._offsets[i] for i in range(lo, hi) if self._offsets[i] != _PINNED), -1)
        data = b""
        if begin >= 0 and self._file is not None:
            self._file.flush()
            self._file.seek(begin)
            data = self._file.read(max(e for e in ends if e >= 0) - begin)
        for i in range(lo, hi):
            seq = self._first + i
            off = self._offsets[i]
            if off == _PINNED:
                stream, value, t = self._pinned[seq]
            else:
                stream, value, t = pickle.loads(data[off - begin : ends[i - lo] - begin])
            yield seq, stream, value, t

    def _next_offset(self, i: int) -> int:
        if self._offsets[i] == _PINNED:
            return -1
        for j in range(i + 1, len(self._offsets)):
            if self._offsets[j] != _PINNED:
                return self._offsets[j]
        return self._end

    def discard_below(self, seq: int) -> None:
        """Forget records below ``seq``; empty the file when nothing in it is wanted."""
        if seq <= self._first:
            return
        n = min(seq - self._first, len(self._offsets))
        for s in range(self._first, self._first + n):
            self._pinned.pop(s, None)
        del self._offsets[:n]
        self._first += n
        if not self._offsets and self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._end = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="asyncjobs-spill-")  # noqa: SIM115 - closed by close()
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
