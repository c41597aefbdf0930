"""Pages of records: what one ``read`` or ``take`` answers, and the one-large-answer rule.

A page is the longest run of store rows whose values fit well inside a frame (``PAGE_BYTES``),
as the wire's record rows. Ops whose answer may be large (``Op.paged``) take their connection's
one ``Turn`` to fetch and send it, so that a controller can't make the host hold more than one
large answer of its in memory; a long-poll (``wait``) waits without it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate, repeat
from operator import add, itemgetter, methodcaller
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from .hosted import unpack_value
from .protocol import encode_value, encoded_rows
from .store import Row
from .wire import STREAM_CODES

if TYPE_CHECKING:
    from .hostjob import HostedJobs

#: Bytes of record values in one answer: well inside the protocol's frame limit, even for
#: bytes values (base64) and JSON's quoting.
PAGE_BYTES: Final = 6 * 1024 * 1024
WireRow = tuple[int, int, Any, float]  # a record as the wire has it: seq, stream code, value, time
#: What a page's fetch gives: its rows, and the lease that holds them (``take``'s) or None.
Fetched = tuple[list[WireRow], int | None]
_TEXT: Final = ord("s")  # pack_value's kind byte of a str
_decode_text: Final = methodcaller("decode", "utf-8", "surrogatepass")


def page(records: list[Row]) -> list[WireRow]:
    """The longest prefix of ``records`` whose values fit in ``PAGE_BYTES`` (at least one),
    as the wire's record rows: ``(seq, stream code, value, time)``, values unpacked and
    encoded (``encode_records``'s rows). A page of text (command output: the usual case) is
    made by C loops over its columns, with no Python code per record."""
    if not records:
        return []
    seqs, streams, blobs, stamps = zip(*records, strict=True)
    sizes = list(accumulate(map(add, map(len, blobs), repeat(32))))
    cut = max(1, bisect_right(sizes, PAGE_BYTES))
    if cut < len(records):
        seqs, streams, blobs, stamps = seqs[:cut], streams[:cut], blobs[:cut], stamps[:cut]
    values: Iterable[Any]
    if set(map(itemgetter(0), blobs)) == {_TEXT}:
        values = map(_decode_text, map(itemgetter(slice(1, None)), blobs))
    else:
        values = [encode_value(unpack_value(blob)) for blob in blobs]
    return list(zip(seqs, map(STREAM_CODES.__getitem__, streams), values, stamps, strict=True))


@final
class Turn:
    """One request's hold on its connection's lock for large answers: taken at most once,
    given back at the end of the request (or while it long-polls)."""

    __slots__ = ("_held", "_lock")

    def __init__(self, lock: anyio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def acquire(self) -> None:
        if not self._held:
            await self._lock.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


async def reading(
    jobs: HostedJobs,
    job_id: int,
    wait: float | None,
    fetch: Callable[[], Fetched],
    turn: Turn,
) -> dict[str, Any]:
    """Fetch records in the connection's turn; if none and ``wait`` > 0 while the job runs,
    long-poll for more (out of turn). The turn is kept until the answer is sent. The answer
    is a ``Batch`` as the wire has it, its rows encoded already."""
    await turn.acquire()
    jobs.row(job_id)
    records, lease = fetch()
    host_job = jobs.running.get(job_id)
    if not records and wait and host_job is not None and not host_job.done.is_set():
        turn.release()
        with anyio.move_on_after(wait):
            await host_job.appended.wait()
        await turn.acquire()
        records, lease = fetch()
    row = jobs.row(job_id)
    next_seq = records[-1][0] + 1 if records else row.next_seq
    # A Batch on the wire, its rows encoded already (a Batch object would encode them).
    info = jobs.info(row).to_wire()
    batch = {"records": encoded_rows(records), "next_seq": next_seq, "job": info}
    if lease is not None:
        batch["lease"] = lease
    return batch


async def read_page(
    jobs: HostedJobs,
    job: int,
    from_seq: int,
    streams: list[str] | None,
    limit: int | None,
    wait: float | None,
    unreceived: bool,
    turn: Turn,
) -> dict[str, Any]:
    """``read``: a page of records from ``from_seq`` on; moves nothing (keep)."""

    def fetch() -> Fetched:
        rows = jobs.store.read_rows(
            job, from_seq, streams=streams, limit=limit, unreceived_only=unreceived
        )
        return page(rows), None

    return await reading(jobs, job, wait, fetch, turn)
