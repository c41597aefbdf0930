"""A job's record log: one append-only, seq-numbered log for all seven streams.

Readers never pop: ``read`` returns records from any seq on (keep semantics, and "everything after
N" for a second follower), ``peek`` returns what is not yet received, ``ack`` moves the per-stream
received cursors (receive-once), and a ``LogReader`` (in ``reader``) hands over one value or
record at a time (``stream()``), acking exactly what it handed over.

What one pipe read brings is appended in one go (``append_lines``): a ``Batch`` of lines of one
stream with consecutive seqs and one time, so that a line costs no Python object until a reader
asks for it. A batch counts as its lines everywhere (seqs, bounds, bytes, drops, statistics);
``read`` and ``peek`` make its ``Record``s on demand, ``take_values`` hands its lines over in bulk.

A ``Buffer`` is only the policy for what happens when the unreceived part outgrows its bound:
``spill`` moves older records to a temporary file, ``block`` makes ``append`` wait, ``drop``
discards the oldest unreceived records and counts them.

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
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Final, final

import anyio

from . import checks
from .entries import OVERHEAD, Batch, Entry, entry_end, lines_size, sizeof
from .errors import JobStateError, SpillError
from .models import STREAMS, Buffer, BufferStatistics, Record, StreamName
from .spill import SpillFile

_ALL: Final = frozenset(STREAMS)


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
        self._mem: deque[Entry] = deque()
        self._sizes: deque[int] = deque()  # sizeof of each entry in _mem (a batch: its lines')
        self._mem_items = 0  # records in _mem (a batch counts its lines)
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
            await self._wait_for_room()
        return self.append_nowait(stream, value)

    def append_nowait(self, stream: StreamName, value: Any) -> Record:
        """Add a record now; in ``block`` mode raise ``anyio.WouldBlock`` when full. A spill
        that fails raises ``SpillError`` and adds nothing (see the module doc)."""
        if self._ended or self._broken is not None:
            return self._refuse(stream, value)
        if self._mode == "block" and self._full() and not self._unbounded:
            raise anyio.WouldBlock
        seq = self._next
        self._next = seq + 1
        record = Record(stream, value, self.job_id, self.location, seq, time.time())
        self._add(record, 1, sizeof(value))
        return record

    async def append_lines(self, stream: StreamName, lines: list[Any]) -> None:
        """Add ``lines`` as ``append_lines_nowait`` does; in ``block`` mode wait for room for
        those that do not fit (meanwhile the caller reads nothing more: backpressure)."""
        while lines:
            taken = self.append_lines_nowait(stream, lines)
            if taken == len(lines):
                return
            lines = lines[taken:]
            await self._wait_for_room()

    def append_lines_nowait(self, stream: StreamName, lines: list[Any]) -> int:
        """Add ``lines`` (``str`` or ``bytes``, what one read of a pipe brought) to ``stream``
        as one batch: consecutive seqs, one time, no object per line; the log keeps the list.

        Returns how many lines it took: all of them, except in ``block`` mode, which takes as
        many as one ``append_nowait`` per line would before one raised ``WouldBlock`` (maybe
        none). A spill that fails raises ``SpillError`` and adds nothing."""
        n = len(lines)
        if not n:
            return 0
        if self._ended or self._broken is not None:
            self._refuse(stream, lines[0])
        size = lines_size(lines)
        if self._mode == "block" and not self._unbounded:
            fit = self._fitting(lines, size)
            if fit < n:
                if not fit:
                    return 0
                lines, n = lines[:fit], fit
                size = lines_size(lines)
        if n == 1:  # a record of its own, as append_nowait makes
            self.append_nowait(stream, lines[0])
            return 1
        seq = self._next
        self._next = seq + n
        self._add(Batch(stream, lines, seq, time.time()), n, size)
        return n

    def _add(self, entry: Entry, n: int, size: int) -> None:
        """Account for ``entry`` (``n`` records of ``size`` bytes), apply the buffer's policy,
        wake whoever waits."""
        self._mem.append(entry)
        self._sizes.append(size)
        self._mem_items += n
        self._mem_bytes += size
        self._pending[entry.stream] += n
        self._pending_bytes += size
        self._unreceived += n
        mode = self._mode
        if mode == "spill":
            if self._mem_items > self._max_items or self._mem_bytes > self._max_bytes:
                try:
                    self._spill_older()
                except OSError as exc:
                    self._unappend(entry, n, size)
                    raise self._spill_failed(exc) from exc
        elif mode == "drop":
            self._drop_oldest()
        if self._unreceived > self._high_water:
            self._high_water = self._unreceived
        if self._changed is not None or self._listeners:
            self._notify()

    def _fitting(self, lines: list[Any], size: int) -> int:
        """How many of ``lines`` a ``block`` log takes now: each line goes in while the
        unreceived part is under both bounds before it (as ``append_nowait`` decides)."""
        room_items = self._max_items - self._unreceived
        room_bytes = self._max_bytes - self._pending_bytes
        if room_items <= 0 or room_bytes <= 0:
            return 0
        fit = min(len(lines), room_items)
        if size - sizeof(lines[-1]) < room_bytes:  # every line starts under the byte bound
            return fit
        before = list(itertools.accumulate((len(x) + OVERHEAD for x in lines), initial=0))
        return min(fit, bisect_left(before, room_bytes, 0, len(lines)))

    async def _wait_for_room(self) -> None:
        while self._full() and not self._ended and not self._unbounded:
            self._waiting_producers += 1
            try:
                await self.changed().wait()
            finally:
                self._waiting_producers -= 1

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

    def _unappend(self, entry: Entry, n: int, size: int) -> None:
        """Take back the entry ``_add`` just added (its spill failed)."""
        assert self._mem and self._mem[-1] is entry
        self._mem.pop()
        self._sizes.pop()
        self._mem_items -= n
        self._mem_bytes -= size
        self._pending[entry.stream] -= n
        self._pending_bytes -= size
        self._unreceived -= n
        self._next = entry.seq

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

    def _pop_front(self) -> tuple[Entry, int]:
        entry = self._mem.popleft()
        size = self._sizes.popleft()
        self._mem_bytes -= size
        self._mem_items -= len(entry.values) if type(entry) is Batch else 1
        return entry, size

    def _cut_front(self, k: int) -> int:
        """Forget the first ``k`` lines of the batch at the front (not all of them); return
        their size."""
        batch = self._mem[0]
        assert type(batch) is Batch and 0 < k < len(batch.values)
        size = lines_size(batch.values[:k])
        self._mem[0] = Batch(batch.stream, batch.values[k:], batch.seq + k, batch.time)
        self._sizes[0] -= size
        self._mem_bytes -= size
        self._mem_items -= k
        return size

    def _drop_oldest(self) -> None:
        while (
            self._unreceived > self._max_items or self._pending_bytes > self._max_bytes
        ) and self._mem:
            if type(self._mem[0]) is Batch:
                self._drop_lines()
                continue
            record, size = self._pop_front()
            self._first = record.seq + 1
            if record.seq >= self._cursor[record.stream]:
                self._pending[record.stream] -= 1
                self._unreceived -= 1
                self._pending_bytes -= size
                self._dropped += 1

    def _drop_lines(self) -> None:
        """Drop mode, a batch at the front: its received lines go, then as many unreceived
        ones as the bounds need, each counted (what dropping record by record would do)."""
        batch = self._mem[0]
        assert type(batch) is Batch
        stream, values, seq = batch.stream, batch.values, batch.seq
        n = len(values)
        done = min(n, max(0, self._cursor[stream] - seq))  # lines received already
        k = max(0, self._unreceived - self._max_items)
        over_bytes = self._pending_bytes - self._max_bytes
        if over_bytes > 0:
            rest = itertools.islice(values, done, None)
            sums = list(itertools.accumulate(len(x) + OVERHEAD for x in rest))
            k = max(k, bisect_left(sums, over_bytes) + 1)
        k = min(k, n - done)
        gone = done + k
        if gone == n:
            self._pop_front()
        else:
            self._cut_front(gone)
        self._first = seq + gone
        if k:
            self._pending[stream] -= k
            self._unreceived -= k
            self._pending_bytes -= lines_size(values[done:gone])
            self._dropped += k

    def _spill_older(self) -> None:
        # Spill down to half the bound so that spilling is amortised over many appends.
        # A write that fails leaves the file as it was: the entries go back to memory.
        keep_items, keep_bytes = self._max_items // 2, self._max_bytes // 2
        rows: list[tuple[Any, ...]] = []
        popped: list[tuple[Entry, int]] = []
        first = self._mem[0].seq
        while self._mem and (self._mem_items > keep_items or self._mem_bytes > keep_bytes):
            entry, size = self._pop_front()
            popped.append((entry, size))
            if type(entry) is Batch:
                rows.append((entry.stream, entry.values, entry.time, entry.seq))
            else:
                rows.append((entry.stream, entry.value, entry.time))
        if self._spill is None:
            self._spill = SpillFile()
        try:
            self._spill.write(first, rows)
        except OSError:
            for entry, size in reversed(popped):
                self._mem.appendleft(entry)
                self._sizes.appendleft(size)
                self._mem_bytes += size
                self._mem_items += entry_end(entry) - entry.seq
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
        start = max(from_seq, self._first)
        return self._gather(start, streams, limit, unreceived_only=False, values=False)[0]

    def peek(self, streams: Collection[str] = _ALL, limit: int | None = None) -> list[Record]:
        """The unreceived records of ``streams`` in seq order; consumes nothing (``keep=True``)."""
        return self._peek(streams, limit, values=False)

    def peek_values(self, streams: Collection[str] = _ALL) -> list[Any]:
        """``peek`` of the values only: a batch's lines go over in one slice, no ``Record``s."""
        return self._peek(streams, None, values=True)

    def take(self, streams: Collection[str] = _ALL) -> list[Record]:
        """Receive-once: the unreceived records of ``streams``, now marked received."""
        return self._take(streams, values=False)

    def take_values(self, streams: Collection[str] = _ALL) -> list[Any]:
        """``take`` of the values only (``receive()``): no ``Record`` per line."""
        return self._take(streams, values=True)

    def _unreceived_start(self, streams: Collection[str]) -> tuple[int, set[str]] | None:
        """Where the unreceived records of ``streams`` begin, and the streams that have any."""
        wanted = {s for s in streams if self._pending[s]}
        if not wanted:
            return None
        return min(self._cursor[s] for s in wanted), wanted

    def _peek(self, streams: Collection[str], limit: int | None, *, values: bool) -> list[Any]:
        found = self._unreceived_start(streams)
        if found is None:
            return []
        start, wanted = found
        return self._gather(start, wanted, limit, unreceived_only=True, values=values)[0]

    def _take(self, streams: Collection[str], *, values: bool) -> list[Any]:
        found = self._unreceived_start(streams)
        items: list[Any] = []
        if found is not None:
            start, wanted = found
            everything = self.pending(wanted) == self._unreceived  # then no bytes stay pending
            items, size = self._gather(
                start, wanted, None, unreceived_only=True, values=values, sizes=not everything
            )
            self._pending_bytes = 0 if everything else self._pending_bytes - size
        for s in streams:
            self._unreceived -= self._pending[s]
            self._pending[s] = 0
            self._cursor[s] = self._next
        self._release()
        return items

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
        freed = False
        while mem and mem[0].seq < trim:
            front = mem[0]
            if type(front) is Batch and front.end > trim:
                self._cut_front(trim - front.seq)  # its lines from trim on are not received
            else:
                self._pop_front()
            freed = True
        if self._spill is not None:
            self._spill.discard_below(trim)
        if trim > self._first:
            self._first = trim
            freed = True
        if (always or freed) and (self._changed is not None or self._waiting_producers):
            self._notify()

    def _entries(self, start: int) -> Iterator[Entry]:
        """The entries that hold seqs from ``start`` on, in seq order, from the spill file and
        then from memory (the first may begin before ``start``: a batch)."""
        mem = self._mem
        mem_first = mem[0].seq if mem else self._next
        spill = self._spill
        if start < mem_first and spill is not None and len(spill):
            if self._released:
                raise JobStateError(
                    f"{self._name}: its spilled records were released when its JobManager "
                    "closed; receive them inside the 'async with JobManager()' block",
                    job=self._name,
                )
            job_id, location = self.job_id, self.location
            try:
                for seq, stream, value, t, batch in spill.entries(start, mem_first):
                    if batch:
                        yield Batch(stream, value, seq, t)  # type: ignore[arg-type]
                    else:
                        yield Record(stream, value, job_id, location, seq, t)  # type: ignore[arg-type]
            except OSError as exc:
                raise SpillError(
                    exc.errno or errno.EIO,
                    f"{self._name}: can't read its spilled records back from "
                    f"{spill.directory!r}: {exc.strerror or exc}",
                ) from exc
        skip = 0
        if start > mem_first:
            if self._mem_items == len(mem):  # no batch in memory: one entry per seq
                skip = start - mem_first
            else:
                for entry in mem:
                    if entry_end(entry) > start:
                        break
                    skip += 1
        yield from itertools.islice(mem, skip, None)

    def _gather(
        self,
        start: int,
        streams: Collection[str],
        limit: int | None,
        *,
        unreceived_only: bool,
        values: bool,
        sizes: bool = False,
    ) -> tuple[list[Any], int]:
        """Records (or their values) of ``streams`` from seq ``start`` on, at most ``limit``,
        and (if ``sizes``) their size in bytes."""
        out: list[Any] = []
        size = 0
        room = sys.maxsize if limit is None else limit
        cursor = self._cursor
        job_id, location = self.job_id, self.location
        for entry in self._entries(start):
            stream = entry.stream
            if stream not in streams:
                continue
            lo = max(start, cursor[stream]) if unreceived_only else start
            if type(entry) is Batch:
                seq = entry.seq
                skip = lo - seq if lo > seq else 0
                part = entry.values[skip : skip + room - len(out)]
                if not part:
                    continue
                if values:
                    out.extend(part)
                else:
                    t = entry.time
                    out.extend(
                        [
                            Record(stream, v, job_id, location, s, t)
                            for s, v in enumerate(part, seq + skip)
                        ]
                    )
                if sizes:
                    size += lines_size(part)
            elif entry.seq >= lo:
                out.append(entry.value if values else entry)
                if sizes:
                    size += sizeof(entry.value)
            else:
                continue
            if len(out) >= room:
                break
        return out, size

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
            in_memory=self._mem_items,
            spilled=self._spill.spilled_total if self._spill is not None else 0,
            dropped=self._dropped,
            high_water=self._high_water,
            next_seq=self._next,
            blocked_producers=self._waiting_producers,
        )

    def __repr__(self) -> str:
        return (
            f"<RecordLog {self._name} {self.buffer.mode} next_seq={self._next} "
            f"unreceived={self.unreceived} in_memory={self._mem_items}>"
        )
