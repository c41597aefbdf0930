"""A job's record log: one append-only, seq-numbered log for all seven streams.

Readers never pop: ``read`` returns records from any seq on (keep semantics, and "everything after
N" for a second follower), ``peek`` returns what is not yet received, ``ack`` moves the per-stream
received cursors (receive-once). A ``Buffer`` is only the policy for what happens when the
unreceived part outgrows its bound: ``spill`` moves older records to a temporary file, ``block``
makes ``append`` wait, ``drop`` discards the oldest unreceived records and counts them.

Everything here runs on the event loop thread; other threads reach it through ``from_thread``.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final, final

import anyio

from ._errors import JobArgumentError, JobStateError
from ._models import STREAMS, Buffer, BufferStatistics, Record, StreamName
from ._spill import SpillFile

_ALL: Final = frozenset(STREAMS)


def sizeof(value: object) -> int:
    """A cheap estimate of a value's size, for ``max_bytes`` accounting."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) + 49
    return sys.getsizeof(value)


def stream_set(streams: Iterable[str] | None) -> frozenset[StreamName]:
    """Validate a ``streams=`` argument; ``None`` means all seven."""
    if streams is None:
        return _ALL
    if isinstance(streams, str):
        streams = (streams,)
    chosen = frozenset(streams)
    unknown = chosen - _ALL
    if unknown:
        raise JobArgumentError(
            f"unknown stream(s) {sorted(unknown)}; streams are {', '.join(STREAMS)}"
        )
    return chosen  # type: ignore[return-value]


@final
class RecordLog:
    """The records of one job, in the order produced, bounded by a ``Buffer`` policy."""

    def __init__(self, *, job_id: int, location: str, buffer: Buffer, name: str = "") -> None:
        self.job_id = job_id
        self.location = location
        self.buffer = buffer
        self._name = name or f"job {job_id}"
        self._mem: deque[Record] = deque()
        self._mem_bytes = 0  # bytes of the records in _mem
        self._spill: SpillFile | None = None
        self._next = 0  # seq of the next record
        self._first = 0  # lowest seq still held (received or dropped records below it are gone)
        self._cursor: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._pending: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._pending_bytes = 0
        self._dropped = 0
        self._high_water = 0
        self._waiting_producers = 0
        self._ended = False
        self._unbounded = False  # set by unblock(): a stopping job's producer must not hang
        self._released = False
        self._changed: anyio.Event | None = None  # made only when someone waits
        self._listeners: list[Callable[[], None]] = []

    # -- writing ---------------------------------------------------------------------------

    async def append(self, stream: StreamName, value: Any) -> Record:
        """Add a record. In ``block`` mode wait while the unreceived part is at its bound."""
        if self.buffer.mode == "block":
            while self._full() and not self._ended and not self._unbounded:
                self._waiting_producers += 1
                try:
                    await self.changed().wait()
                finally:
                    self._waiting_producers -= 1
        return self.append_nowait(stream, value)

    def append_nowait(self, stream: StreamName, value: Any) -> Record:
        """Add a record now; in ``block`` mode raise ``anyio.WouldBlock`` when full."""
        if self._ended:
            raise JobStateError(
                f"{self._name} is finished: it takes no more records", job=self._name
            )
        if self.buffer.mode == "block" and self._full() and not self._unbounded:
            raise anyio.WouldBlock
        record = Record(stream, value, self.job_id, self.location, self._next, time.time())
        size = sizeof(value)
        self._next += 1
        self._mem.append(record)
        self._mem_bytes += size
        self._pending[stream] += 1
        self._pending_bytes += size
        if self.buffer.mode == "drop":
            self._drop_oldest()
        elif self.buffer.mode == "spill":
            self._maybe_spill()
        self._high_water = max(self._high_water, self.unreceived)
        self._notify()
        return record

    def end(self) -> None:
        """No more records will come (the job is finished); wakes every waiting reader."""
        self._ended = True
        self._notify()

    def unblock(self) -> None:
        """Let waiting and future appends through regardless of the bound (the job is being
        stopped: a producer held by ``block`` mode must be free to notice and end)."""
        self._unbounded = True
        self._notify()

    def _full(self) -> bool:
        b = self.buffer
        return (b.max_items is not None and self.unreceived >= b.max_items) or (
            b.max_bytes is not None and self._pending_bytes >= b.max_bytes
        )

    def _over(self, count: int, nbytes: int) -> bool:
        b = self.buffer
        return (b.max_items is not None and count > b.max_items) or (
            b.max_bytes is not None and nbytes > b.max_bytes
        )

    def _drop_oldest(self) -> None:
        while self._over(self.unreceived, self._pending_bytes) and self._mem:
            record = self._mem.popleft()
            size = sizeof(record.value)
            self._mem_bytes -= size
            self._first = record.seq + 1
            if record.seq >= self._cursor[record.stream]:
                self._pending[record.stream] -= 1
                self._pending_bytes -= size
                self._dropped += 1

    def _maybe_spill(self) -> None:
        if not self._over(len(self._mem), self._mem_bytes):
            return
        # Spill down to half the bound so that spilling is amortised over many appends.
        b = self.buffer
        keep_items = (b.max_items or sys.maxsize) // 2
        keep_bytes = (b.max_bytes or sys.maxsize) // 2
        rows: list[tuple[str, Any, float]] = []
        first = self._mem[0].seq
        while self._mem and (len(self._mem) > keep_items or self._mem_bytes > keep_bytes):
            record = self._mem.popleft()
            self._mem_bytes -= sizeof(record.value)
            rows.append((record.stream, record.value, record.time))
        if self._spill is None:
            self._spill = SpillFile()
        self._spill.write(first, rows)

    # -- reading ---------------------------------------------------------------------------

    @property
    def unreceived(self) -> int:
        return sum(self._pending.values())

    def pending(self, streams: Collection[str] = _ALL) -> int:
        """How many records of ``streams`` are not received yet."""
        return sum(self._pending[s] for s in streams)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def first_seq(self) -> int:
        """The lowest seq still held; records below it were received (or dropped) and released."""
        return self._first

    @property
    def dropped(self) -> int:
        return self._dropped

    def read(
        self, from_seq: int = 0, *, streams: Collection[str] = _ALL, limit: int | None = None
    ) -> list[Record]:
        """Records with ``seq >= from_seq`` of ``streams``, whether received or not; consumes
        nothing. Records already released (received, or dropped) are no longer held."""
        return self._collect(max(from_seq, self._first), streams, limit, unreceived_only=False)

    def peek(self, streams: Collection[str] = _ALL, limit: int | None = None) -> list[Record]:
        """The unreceived records of ``streams`` in seq order; consumes nothing (``keep=True``)."""
        wanted = [s for s in streams if self._pending[s]]
        if not wanted:
            return []
        start = min(self._cursor[s] for s in wanted)
        return self._collect(start, wanted, limit, unreceived_only=True)

    def take(self, streams: Collection[str] = _ALL) -> list[Record]:
        """Receive-once: the unreceived records of ``streams``, now marked received."""
        records = self.peek(streams)
        self._pending_bytes -= sum(sizeof(r.value) for r in records)
        for s in streams:
            self._pending[s] = 0
            self._cursor[s] = self._next
        self._release()
        return records

    def ack(self, record: Record) -> bool:
        """Mark one record (and the earlier ones of its stream) received. False if it already was,
        so that two consumers never both get it."""
        if record.seq < self._cursor[record.stream] or record.seq < self._first:
            return False
        self._pending[record.stream] -= 1
        self._pending_bytes -= sizeof(record.value)
        self._cursor[record.stream] = record.seq + 1
        self._release()
        return True

    def _release(self) -> None:
        """Forget records that every stream has received; wake producers waiting for room."""
        held = [self._cursor[s] for s in STREAMS if self._pending[s]]
        trim = min(held, default=self._next)
        while self._mem and self._mem[0].seq < trim:
            self._mem_bytes -= sizeof(self._mem.popleft().value)
        if self._spill is not None:
            self._spill.discard_below(trim)
        self._first = max(self._first, trim)
        self._notify()

    def _collect(
        self, start: int, streams: Collection[str], limit: int | None, *, unreceived_only: bool
    ) -> list[Record]:
        out: list[Record] = []
        want = set(streams)
        cursor = self._cursor

        def wanted(seq: int, stream: str) -> bool:
            return stream in want and (not unreceived_only or seq >= cursor[stream])

        mem_first = self._mem[0].seq if self._mem else self._next
        if start < mem_first and self._spill is not None and len(self._spill):
            if self._released:
                raise JobStateError(
                    f"{self._name}: its spilled records were released when its JobManager "
                    "closed; receive them inside the 'async with JobManager()' block",
                    job=self._name,
                )
            for seq, stream, value, t in self._spill.read(start, mem_first):
                if wanted(seq, stream):
                    out.append(Record(stream, value, self.job_id, self.location, seq, t))  # type: ignore[arg-type]
                    if limit is not None and len(out) >= limit:
                        return out
        skip = max(0, start - mem_first)
        for i, record in enumerate(self._mem):
            if i < skip:
                continue
            if wanted(record.seq, record.stream):
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # -- waiting ---------------------------------------------------------------------------

    def changed(self) -> anyio.Event:
        """The event set at the next append, receive or end; take it *before* checking."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every change (a parent job merges its children's changes)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        for callback in self._listeners:
            callback()

    # -- lifetime --------------------------------------------------------------------------

    def release(self) -> None:
        """Close the spill file. Records still in memory stay readable; spilled ones are gone."""
        self._released = True
        if self._spill is not None:
            self._spill.close()

    def statistics(self) -> BufferStatistics:
        return BufferStatistics(
            mode=self.buffer.mode,
            items=self.unreceived,
            bytes=self._pending_bytes,
            in_memory=len(self._mem),
            spilled=self._spill.spilled_total if self._spill is not None else 0,
            dropped=self._dropped,
            high_water=self._high_water,
            next_seq=self._next,
            blocked_producers=self._waiting_producers,
        )

    def __repr__(self) -> str:
        return (
            f"<RecordLog {self._name} {self.buffer.mode} next_seq={self._next} "
            f"unreceived={self.unreceived} in_memory={len(self._mem)}>"
        )
