"""The receiving end of a remote command's SSH channel: its data straight into the job's log.

asyncssh calls ``data_received`` with each packet's payload from its protocol callback.
``CommandChannel`` splits it there (lines, or raw chunks with ``lines=False``) and appends the
items with ``append_nowait``: no reader task, no stream buffer, no task wake-up per chunk (that
hop cost a third of the throughput of a fast channel, and most of a short command's overhead).

Backpressure is asyncssh's own flow control: when a ``block`` buffer is full, reading is paused
on the channel, asyncssh stops opening the SSH window, and the remote writer blocks. The items
that did not fit wait in a short backlog that ``drain()`` appends (waiting for room) before it
resumes reading. ``drain()`` returns when the channel is closed and everything is in the log.

The remote command is wrapped so that its first stdout line carries its process group id (see
``runner``); that line is taken off here and never reaches the log.

Its stdin gets the job's input, if it has any, then EOF, as soon as the command has started (an
``ssh host cmd </dev/null`` without input): a remote command that reads stdin ends instead of
waiting for a terminal it does not have. The input is written from the channel's own callbacks
too, a chunk at a time while asyncssh's send buffer has room (``pause_writing`` /
``resume_writing``), so that sending and receiving overlap (a ``cat`` of more than the windows
hold cannot deadlock) and the input is never copied more than one chunk ahead of the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import asyncssh
import attrs

from .._core.jsonlines import JsonLines, append_values_nowait
from .._core.lines import Line, Splitter, splitter
from .._core.log import RecordLog
from .._core.models import StreamName

#: Starts the first stdout line of a wrapped command; the group id follows.
MARK: Final = b"\x1easyncjobs-pgid "
_HEAD_MAX: Final = 64  # a marker line is shorter than this

#: With ``lines=False``, the chunks one loop iteration delivers are joined into one item, up to
#: this size: one record per socket read, not one per 32 KiB SSH packet.
_RAW_ITEM: Final = 1 << 20

#: The input is handed to asyncssh this much at a time (its send buffer pauses us past 64 KiB).
_INPUT_CHUNK: Final = 1 << 16


@attrs.define
class CommandProgress:
    """What is learnt while a remote command runs (its timings, and what stop() needs)."""

    pgid: int | None = None
    channel_open: float | None = None
    first_byte: float | None = None
    exit: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    pgid_known: anyio.Event = attrs.field(factory=anyio.Event)
    group_gone: bool | None = None  # after a kill: did the remote group really end?
    killing: bool = False  # a stop's kill has been started
    ended_first: bool = False  # the command had ended on its own before the kill reached it
    went_idle: bool = False  # drain(idle=) gave up: the command sent nothing for that long


@final
class CommandChannel(asyncssh.SSHClientSession[bytes]):
    """An asyncssh session that appends a command's stdout and stderr to a ``RecordLog``."""

    def __init__(
        self,
        log: RecordLog,
        progress: CommandProgress,
        lines: bool,
        input: bytes | memoryview | None = None,
        parse: JsonLines | None = None,
    ) -> None:
        self._log = log
        #: ``output="json"``: stdout parsed into data records, appended one record each.
        self._parse = parse
        self._put: Callable[[StreamName, list[Any]], int] = log.append_lines_nowait
        if parse is not None:
            self._put = functools.partial(append_values_nowait, log)
        self._progress = progress
        self._lines = lines
        self._input = memoryview(input if input is not None else b"")
        self._input_at = 0  # how much of it asyncssh has taken
        self._input_done = False  # EOF sent, or stdin is closed over there: nothing more to write
        self._write_paused = False
        self._split: dict[StreamName, Splitter] = {
            "output": splitter(lines),
            "error": splitter(lines),
        }
        self._head: bytes | None = b""  # stdout bytes before the marker line is complete
        self._raw: dict[StreamName, list[bytes]] = {"output": [], "error": []}
        self._raw_size = 0
        self._flush_scheduled = False
        #: Lines a full ``block`` buffer did not take yet, in order: (stream, lines).
        self._backlog: deque[tuple[StreamName, list[Line]]] = deque()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._paused = False
        self._closed = False  # the channel is gone (connection_lost)
        self._discard = False  # we are closing it: what still arrives is dropped
        self._interrupted = False  # drain() returns early: the job is being stopped
        self._error: Exception | None = None  # raised by drain(): appending failed
        self._wake = anyio.Event()
        self._loop = asyncio.get_running_loop()  # remote jobs run on asyncio (asyncssh)
        self.t_open = time.perf_counter()
        #: When the command last sent something, or we last let it (resumed reading): the
        #: loop's clock, which anyio's deadlines use.
        self._last_data = self._loop.time()

    # -- asyncssh's callbacks (in its protocol, not in a task) -----------------------------------

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        self.t_open = time.perf_counter()

    def session_started(self) -> None:
        # The command runs now (its exec request was accepted): its stdin, then EOF.
        self._write_input()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_input()

    def _write_input(self) -> None:
        """Hand asyncssh input while its send buffer has room; EOF after the last byte. Runs
        in asyncssh's callbacks: nothing may be raised from here."""
        chan = self._chan
        if chan is None or self._input_done:
            return
        data, progress = self._input, self._progress
        try:
            while self._input_at < len(data) and not self._write_paused:
                chunk = data[self._input_at : self._input_at + _INPUT_CHUNK]
                chan.write(chunk)  # asyncssh copies it (into a bytearray)
                self._input_at += len(chunk)
                progress.bytes_out += len(chunk)
            if self._input_at >= len(data):
                self._input_done = True
                chan.write_eof()
        except Exception:  # closed for sending: the command is gone or stopped reading
            self._input_done = True
        if self._input_done:
            self._input = memoryview(b"")  # the caller's bytes are not held any longer

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._discard:
            return
        progress = self._progress
        self._last_data = self._loop.time()
        progress.bytes_in += len(data)
        if progress.first_byte is None:
            progress.first_byte = time.perf_counter() - self.t_open
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._take("error", data)
            return
        if self._head is not None:
            data = self._strip_marker(data)
            if not data:
                return
        self._take("output", data)

    def eof_received(self) -> bool:
        self._end_of_data()
        # True: send no EOF back. sshd closes the channel once the command has exited; an EOF
        # from us first costs a packet and, measured, ~1 ms per command (asyncssh's own
        # SSHClientProcess answers True as well).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_data()
        self._closed = True
        self._wake.set()

    # -- splitting and appending --------------------------------------------------------------

    def _strip_marker(self, data: bytes) -> bytes:
        """Hold stdout until its first line is complete; take the group id off it."""
        assert self._head is not None
        head = self._head + data
        newline = head.find(b"\n")
        if newline < 0 and len(head) < _HEAD_MAX:
            self._head = head
            return b""
        self._head = None
        if head.startswith(MARK) and newline >= 0:
            # An exception here would be raised inside asyncssh's protocol: a marker line that
            # is not a number is taken off all the same, and stop() then just closes.
            with contextlib.suppress(ValueError):
                self._progress.pgid = int(head[len(MARK) : newline])
            head = head[newline + 1 :]
        self._progress.pgid_known.set()
        return head

    def _take(self, stream: StreamName, data: bytes) -> None:
        if self._parse is not None and stream == "output":
            for name, values in self._parse.feed(data):
                self._append_lines(name, values)
            return
        if self._lines:
            self._append_lines(stream, self._split[stream].feed(data))
            return
        self._raw[stream].append(data)
        self._raw_size += len(data)
        if self._raw_size >= _RAW_ITEM:
            self._flush_raw()
        elif not self._flush_scheduled:
            # The rest of this socket read's packets are delivered before this runs.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_raw)

    def _flush_raw(self) -> None:
        self._flush_scheduled = False
        self._raw_size = 0
        for stream, chunks in self._raw.items():
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                if not self._discard:
                    self._append(stream, data)

    def _end_of_data(self) -> None:
        if self._head:  # short output without a newline (or no marker at all)
            head, self._head = self._head, None
            self._take("output", head)
        self._head = None
        self._progress.pgid_known.set()  # no marker (not a POSIX shell?): stop just closes
        if self._discard:
            return
        self._flush_raw()
        for stream, split in self._split.items():
            tail = split.flush()
            if tail is not None:
                self._append(stream, tail)
        for name, values in self._parse.flush() if self._parse is not None else ():
            self._append_lines(name, values)

    def _append(self, stream: StreamName, item: Line) -> None:
        self._append_lines(stream, [item])

    def _append_lines(self, stream: StreamName, items: list[Line]) -> None:
        """What one packet brought, as one batch in the log (no object per line). A full
        ``block`` buffer takes what fits; the rest waits in the backlog, the peer held."""
        if not items:
            return
        if not self._backlog:
            try:
                taken = self._put(stream, items)
            except Exception as exc:  # e.g. spilling failed (disk full)
                self._fail(exc)
                return
            if taken == len(items):
                return
            items = items[taken:]
            self._pause()  # a full block buffer: hold the peer
        self._backlog.append((stream, items))

    def _fail(self, exc: Exception) -> None:
        """An error here would be raised inside asyncssh's protocol and take the whole
        connection down: it ends this channel instead, and ``drain()`` raises it in the job's
        task, so that only this job fails."""
        if self._error is None:
            self._error = exc
        self.close()

    def _pause(self) -> None:
        if not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()
        self._wake.set()

    # -- the job's task -----------------------------------------------------------------------

    async def drain(self, idle: float | None = None) -> None:
        """Until the channel is closed: append what did not fit, then read on. Returns with
        every byte that arrived in the log (unless ``close()`` discarded the rest), or early
        after ``interrupt()``, with reading resumed: what arrives later is still appended.

        ``idle``: return early too, with ``went_idle`` set in the progress, once the command
        has sent nothing (stdout nor stderr) for that many seconds. Time the channel spends
        paused because the job's buffer is full is ours, not the command's: it never counts."""
        while True:
            if idle is None:
                await self._wake.wait()
            elif not await self._wait_or_idle(idle):
                self._progress.went_idle = True
                return
            self._wake = anyio.Event()
            while self._backlog and not self._discard:
                await self._append_backlog()
            if self._paused and self._chan is not None:
                self._paused = False
                self._last_data = self._loop.time()  # the pause was ours
                self._chan.resume_reading()  # delivers what asyncssh held, maybe pausing again
            if self._error is not None:
                raise self._error
            if (self._closed or self._interrupted) and not self._backlog:
                return

    async def _append_backlog(self) -> None:
        """Append the backlog's first batch: what fits now, then one line once there is room
        (waiting), so that every line is appended exactly once even if the wait is cancelled."""
        stream, items = self._backlog[0]  # replaced as it shrinks: later batches queue behind
        taken = self._put(stream, items)
        if taken < len(items):
            self._backlog[0] = (stream, items[taken:])
            await self._log.append(stream, items[taken])  # waits for room
            taken += 1
            if self._discard:  # close() has cleared the backlog meanwhile
                return
        if taken < len(items):
            self._backlog[0] = (stream, items[taken:])
        else:
            self._backlog.popleft()

    async def _wait_or_idle(self, idle: float) -> bool:
        """Wait for a wake-up: True when one came, False once nothing has arrived for
        ``idle`` seconds (one timer per wait, not per packet: data just moves the mark)."""
        while True:
            left = self._last_data + idle - self._loop.time()
            if left <= 0 and not self._paused:
                return False
            with anyio.move_on_after(max(left, idle) if self._paused else left):
                await self._wake.wait()
                return True

    def interrupt(self) -> None:
        """Make ``drain()`` return once its backlog is in the log (the job is being stopped,
        and its log takes records without waiting now): the kill runs in the drainer's task."""
        self._interrupted = True
        self._wake.set()

    def close(self) -> None:
        """Close the channel, dropping what has not reached the log (a stop, a timeout)."""
        self._discard = True
        self._backlog.clear()
        if self._chan is not None:
            self._chan.close()
            if self._paused:  # let asyncssh flush its held data (dropped) and finish closing
                self._paused = False
                self._chan.resume_reading()
        self._wake.set()

    @property
    def exit_status(self) -> int | None:
        """The remote exit status; None if it did not send one (or a signal ended it)."""
        status = self._chan.get_exit_status() if self._chan is not None else None
        return status if status is not None and status >= 0 else None

    @property
    def exit_signal(self) -> str | None:
        """The name of the signal that ended the remote command (``"KILL"``), if one did."""
        sig = self._chan.get_exit_signal() if self._chan is not None else None
        return sig[0] if sig else None
