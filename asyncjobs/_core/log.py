"""A job's record log: one append-only, seq-numbered log for all seven streams.

Readers never pop: ``read`` returns records from any seq on (keep semantics, and "everything after
N" for a second follower), ``peek`` returns what is not yet received, ``ack`` moves the per-stream
received cursors (receive-once). A ``Buffer`` is only the policy for what happens when the
unreceived part outgrows its bound: ``spill`` moves older records to a temporary file, ``block``
makes ``append`` wait, ``drop`` discards the oldest unreceived records and counts them.

A spill that fails (a full disk) loses nothing: the records stay in memory, the failure becomes
the log's last record (an error record holding a ``SpillError``) and the append that needed the
spill raises it, so the producer stops and its job fails; every later append is refused.

Everything here runs on the event loop thread; other threads reach it through ``from_thread``.
"""

from __future__ import annotations

import errno
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final, final

import anyio

from . import checks
from .errors import JobStateError, SpillError
from .models import STREAMS, Buffer, BufferStatistics, Record, StreamName
from .spill import SpillFile

_ALL: Final = frozenset(STREAMS)


_TEXT: Final = frozenset({str, bytes, bytearray})


def sizeof(value: object) -> int:
    """A cheap estimate of a value's size, for ``max_bytes`` accounting."""
    if type(value) in _TEXT:
        return len(value) + 49  # type: ignore[arg-type]
    return sys.getsizeof(value)


def stream_set(streams: Iterable[str] | None) -> frozenset[StreamName]:
    """Validate a ``streams=`` argument; ``None`` means all seven."""
    return checks.streams(streams)


@final
class RecordLog:
    """The records of one job, in the order produced, bounded by a ``Buffer`` policy."""

    def __init__(self, *, job_id: int, location: str, buffer: Buffer, name: str = "") -> None:
        self.job_id = job_id
        self.location = location
        self.buffer = buffer
        self._name = name or f"job {job_id}"
        self._mem: deque[Record] = deque()
        self._sizes: deque[int] = deque()  # sizeof of each record in _mem
        self._mem_bytes = 0  # bytes of the records in _mem
        self._mode = buffer.mode
        self._max_items = buffer.max_items or sys.maxsize
        self._max_bytes = buffer.max_bytes or sys.maxsize
        self._spill: SpillFile | None = None
        self._next = 0  # seq of the next record
        self._first = 0  # lowest seq still held (received or dropped records below it are gone)
        self._cursor: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._pending: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self._pending_bytes = 0
        self._unreceived = 0  # sum of _pending, kept as a counter: append is the hot path
        self._dropped = 0
        self._high_water = 0
        self._waiting_producers = 0
        self._ended = False
        self._unbounded = False  # set by unblock(): a stopping job's producer must not hang
        self._released = False
        self._broken: SpillError | None = None  # a spill failed: no more appends
        self._broken_record: Record | None = None  # ... and this error record says why
        self._changed: anyio.Event | None = None  # made only when someone waits
        self._listeners: list[Callable[[], None]] = []

    # -- writing ---------------------------------------------------------------------------

    async def append(self, stream: StreamName, value: Any) -> Record:
        """Add a record. In ``block`` mode wait while the unreceived part is at its bound."""
        if self._mode == "block":
            while self._full() and not self._ended and not self._unbounded:
                self._waiting_producers += 1
                try:
                    await self.changed().wait()
                finally:
                    self._waiting_producers -= 1
        return self.append_nowait(stream, value)

    def append_nowait(self, stream: StreamName, value: Any) -> Record:
        """Add a record now; in ``block`` mode raise ``anyio.WouldBlock`` when full. A spill
        that fails raises ``SpillError`` and adds nothing (see the module doc)."""
        if self._ended or self._broken is not None:
            return self._refuse(stream, value)
        mode = self._mode
        if mode == "block" and self._full() and not self._unbounded:
            raise anyio.WouldBlock
        seq = self._next
        self._next = seq + 1
        record = Record(stream, value, self.job_id, self.location, seq, time.time())
        size = sizeof(value)
        self._mem.append(record)
        self._sizes.append(size)
        self._mem_bytes += size
        self._pending[stream] += 1
        self._pending_bytes += size
        self._unreceived += 1
        if mode == "spill":
            if len(self._mem) > self._max_items or self._mem_bytes > self._max_bytes:
                try:
                    self._spill_older()
                except OSError as exc:
                    self._unappend(record, size)
                    raise self._spill_failed(exc) from exc
        elif mode == "drop":
            self._drop_oldest()
        if self._unreceived > self._high_water:
            self._high_water = self._unreceived
        if self._changed is not None or self._listeners:
            self._notify()
        return record

    def _refuse(self, stream: StreamName, value: Any) -> Record:
        if self._ended:
            raise JobStateError(
                f"{self._name} is finished: it takes no more records", job=self._name
            )
        broken, record = self._broken, self._broken_record
        assert broken is not None and record is not None
        if stream == "error" and value is broken:  # its runner reports the failure: it's in
            return record
        raise SpillError(broken.errno, broken.strerror) from broken

    def _unappend(self, record: Record, size: int) -> None:
        """Take back the record ``append_nowait`` just added (its spill failed)."""
        assert self._mem and self._mem[-1] is record
        self._mem.pop()
        self._sizes.pop()
        self._mem_bytes -= size
        self._pending[record.stream] -= 1
        self._pending_bytes -= size
        self._unreceived -= 1
        self._next = record.seq

    def _spill_failed(self, exc: OSError) -> SpillError:
        """The spill file took no more: keep what is held in memory from now on, add the
        error record that says why, refuse further appends."""
        directory = self._spill.directory if self._spill is not None else "the temp directory"
        code = exc.errno or errno.EIO
        if code in (errno.ENOSPC, errno.EDQUOT):
            why = f"the disk is full ({exc.strerror or 'no space left on device'})"
            fix = "free space there, or start the program with TMPDIR set to a directory with room"
        else:
            why = exc.strerror or str(exc)
            fix = "check that directory, or start the program with TMPDIR set to another one"
        error = SpillError(
            code,
            f"{self._name} can't spill its records to {directory!r}: {why}; its "
            f"{self._next} records so far are kept and can be received; {fix}",
        )
        self._max_items = self._max_bytes = sys.maxsize  # nothing more goes to the file
        self._broken_record = self.append_nowait("error", error)
        self._broken = error
        return error

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
        return self._unreceived >= self._max_items or self._pending_bytes >= self._max_bytes

    def _pop_front(self) -> tuple[Record, int]:
        record = self._mem.popleft()
        size = self._sizes.popleft()
        self._mem_bytes -= size
        return record, size

    def _drop_oldest(self) -> None:
        while (
            self._unreceived > self._max_items or self._pending_bytes > self._max_bytes
        ) and self._mem:
            record, size = self._pop_front()
            self._first = record.seq + 1
            if record.seq >= self._cursor[record.stream]:
                self._pending[record.stream] -= 1
                self._unreceived -= 1
                self._pending_bytes -= size
                self._dropped += 1

    def _spill_older(self) -> None:
        # Spill down to half the bound so that spilling is amortised over many appends.
        # A write that fails leaves the file as it was: the batch goes back to memory.
        keep_items, keep_bytes = self._max_items // 2, self._max_bytes // 2
        rows: list[tuple[str, Any, float]] = []
        popped: list[tuple[Record, int]] = []
        first = self._mem[0].seq
        while self._mem and (len(self._mem) > keep_items or self._mem_bytes > keep_bytes):
            record, size = self._pop_front()
            popped.append((record, size))
            rows.append((record.stream, record.value, record.time))
        if self._spill is None:
            self._spill = SpillFile()
        try:
            self._spill.write(first, rows)
        except OSError:
            for record, size in reversed(popped):
                self._mem.appendleft(record)
                self._sizes.appendleft(size)
                self._mem_bytes += size
            raise

    # -- reading ---------------------------------------------------------------------------

    @property
    def unreceived(self) -> int:
        return self._unreceived

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
            self._unreceived -= self._pending[s]
            self._pending[s] = 0
            self._cursor[s] = self._next
        self._release()
        return records

    def ack(self, record: Record, *, release: bool = True) -> bool:
        """Mark one record (and the earlier ones of its stream) received. False if it already was,
        so that two consumers never both get it. ``release=False`` leaves forgetting received
        records to a later ``release_received()`` (a streaming reader acks one by one)."""
        stream, seq = record.stream, record.seq
        if seq < self._cursor[stream] or seq < self._first:
            return False
        self._pending[stream] -= 1
        self._unreceived -= 1
        self._pending_bytes -= sizeof(record.value)
        self._cursor[stream] = seq + 1
        if release:
            self._release()
        elif self._waiting_producers:
            self._notify()  # a producer held by block mode may go on
        return True

    def release_received(self) -> None:
        """Forget what every stream has received (after ``ack(release=False)`` calls). Wakes
        waiters only if that made room: a streaming reader calls it before it waits, and
        waking itself each time would spin the loop (and starve a producer thread)."""
        self._release(always=False)

    def _release(self, *, always: bool = True) -> None:
        """Forget records that every stream has received; wake producers waiting for room
        (and readers: a receive is a change), unless ``always`` is False and nothing went."""
        pending, cursor = self._pending, self._cursor
        trim = min((cursor[s] for s in STREAMS if pending[s]), default=self._next)
        mem = self._mem
        freed = bool(mem) and mem[0].seq < trim
        while mem and mem[0].seq < trim:
            self._pop_front()
        if self._spill is not None:
            self._spill.discard_below(trim)
        if trim > self._first:
            self._first = trim
            freed = True
        if (always or freed) and (self._changed is not None or self._waiting_producers):
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
            try:
                for seq, stream, value, t in self._spill.read(start, mem_first):
                    if wanted(seq, stream):
                        out.append(Record(stream, value, self.job_id, self.location, seq, t))  # type: ignore[arg-type]
                        if limit is not None and len(out) >= limit:
                            return out
            except OSError as exc:
                raise SpillError(
                    exc.errno or errno.EIO,
                    f"{self._name}: can't read its spilled records back from "
                    f"{self._spill.directory!r}: {exc.strerror or exc}",
                ) from exc
        for record in itertools.islice(self._mem, max(0, start - mem_first), None):
            if record.stream in want and (
                not unreceived_only or record.seq >= cursor[record.stream]
            ):
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
