"""The streaming receive-once reader of a record log, behind ``job.stream()``: it takes
entries in batches and hands over one value or record at a time, acking exactly that."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from typing import Any, Final, final

from .entries import OVERHEAD, Batch, Entry, entry_end
from .log import RecordLog
from .models import Record, StreamName

#: What ``LogReader.next_value`` returns when it holds nothing more to hand over.
EMPTY: Final[Any] = object()


@final
class LogReader:
    """A streaming receive-once reader of one log (behind ``job.stream()``).

    ``fill`` queues the next unreceived entries of its streams (whole batches, no ``Record``
    per line); ``next_value`` / ``next_record`` hand over one at a time and ack it in the same
    step, so a consumer that breaks out or is cancelled leaves everything it was not handed
    unreceived, and nothing handed over is handed again. Lines another consumer received (or
    drop mode dropped) meanwhile are skipped.
    """

    __slots__ = (
        "_cursor",
        "_end",
        "_i",
        "_log",
        "_queue",
        "_seq",
        "_stream",
        "_streams",
        "_time",
        "_values",
    )

    def __init__(self, log: RecordLog, streams: Collection[str]) -> None:
        self._log = log
        self._streams = streams
        self._cursor = log._cursor
        self._queue: deque[Entry] = deque()
        self._values: list[Any] = []  # the batch being handed over: its lines,
        self._i = 0  # the index of the next one,
        self._end = 0  # how many it has,
        self._seq = 0  # the seq of its first,
        self._stream: StreamName = "output"  # its stream,
        self._time = 0.0  # and its time

    def fill(self, limit: int = 1024) -> bool:
        """Queue the next unreceived entries (about ``limit`` records); False if none."""
        log = self._log
        found = log._unreceived_start(self._streams)
        if found is None:
            return False
        start, wanted = found
        cursor, queue = self._cursor, self._queue
        queue.clear()
        got = 0
        for entry in log._entries(start):
            stream = entry.stream
            if stream in wanted and entry_end(entry) > cursor[stream]:
                queue.append(entry)
                got += entry_end(entry) - max(entry.seq, start)
                if got >= limit:
                    break
        return bool(queue)

    def next_value(self) -> Any:
        """The next value, acked; ``EMPTY`` if it holds no more (``fill``, or wait)."""
        i = self._i
        if i < self._end:
            seq = self._seq + i
            stream = self._stream
            cursor = self._cursor
            log = self._log
            if cursor[stream] <= seq and seq >= log._first:  # not received or dropped since
                value = self._values[i]
                self._i = i + 1
                cursor[stream] = seq + 1  # RecordLog.ack, for a line
                log._pending[stream] -= 1
                log._unreceived -= 1
                log._pending_bytes -= len(value) + OVERHEAD
                if log._waiting_producers:
                    log._notify()  # a producer held by block mode may go on
                return value
        record = self._next_slow()
        return EMPTY if record is None else record.value

    def next_record(self) -> Record | None:
        """The next record, acked; None if it holds no more (``fill``, or wait)."""
        i = self._i
        if i < self._end:
            seq = self._seq + i
            stream = self._stream
            cursor = self._cursor
            log = self._log
            if cursor[stream] <= seq and seq >= log._first:
                value = self._values[i]
                self._i = i + 1
                cursor[stream] = seq + 1
                log._pending[stream] -= 1
                log._unreceived -= 1
                log._pending_bytes -= len(value) + OVERHEAD
                if log._waiting_producers:
                    log._notify()
                return Record(stream, value, log.job_id, log.location, seq, self._time)
        return self._next_slow()

    def _next_slow(self) -> Record | None:
        """The next record past what the fast path could hand over: skipping what others
        received or drop mode dropped, then into the next queued entry."""
        log, cursor = self._log, self._cursor
        while True:
            i = self._i
            if i < self._end:
                seq = self._seq + i
                gone = max(cursor[self._stream], log._first)
                if seq < gone:
                    self._i = min(self._end, gone - self._seq)
                    continue
                self._i = i + 1
                record = Record(
                    self._stream, self._values[i], log.job_id, log.location, seq, self._time
                )
                log.ack(record, release=False)
                return record
            if not self._queue:
                return None
            entry = self._queue.popleft()
            if type(entry) is Batch:
                self._values, self._seq, self._end = entry.values, entry.seq, len(entry.values)
                self._stream, self._time, self._i = entry.stream, entry.time, 0
            elif log.ack(entry, release=False):  # another consumer may have taken it
                return entry
