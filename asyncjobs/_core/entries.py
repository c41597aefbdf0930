"""The entries of a record log: one ``Record``, or a ``Batch`` of lines of one stream (what one
pipe read brought: consecutive seqs, one time, no Python object per line), and their sizes as
``max_bytes`` counts them."""

from __future__ import annotations

import sys
from typing import Any, Final, TypeAlias, final

from .models import Record, StreamName

TEXT: Final = frozenset({str, bytes, bytearray})

#: What ``sizeof`` adds to a text's length (a line of a batch counts the same).
OVERHEAD: Final = 49


def sizeof(value: object) -> int:
    """A cheap estimate of a value's size, for ``max_bytes`` accounting."""
    if type(value) in TEXT:
        return len(value) + OVERHEAD  # type: ignore[arg-type]
    return sys.getsizeof(value)


def lines_size(lines: list[Any]) -> int:
    """``sum(sizeof(line) for line in lines)`` for lines (str or bytes), in C."""
    return sum(map(len, lines)) + OVERHEAD * len(lines)


@final
class Batch:
    """Lines of one stream appended at once (what one pipe read brought): seqs ``seq`` to
    ``seq + len(values) - 1``, one time. The log's own; readers get ``Record``s or values."""

    __slots__ = ("seq", "stream", "time", "values")

    def __init__(self, stream: StreamName, values: list[Any], seq: int, t: float) -> None:
        self.stream = stream
        self.values = values
        self.seq = seq
        self.time = t

    @property
    def end(self) -> int:
        """The seq after its last line."""
        return self.seq + len(self.values)

    def __repr__(self) -> str:
        return f"<Batch {self.stream} seq={self.seq} lines={len(self.values)}>"


#: An entry of the log: one record, or a batch of lines.
Entry: TypeAlias = Record | Batch


def entry_end(entry: Entry) -> int:
    return entry.seq + len(entry.values) if type(entry) is Batch else entry.seq + 1
