"""Receive-once, acknowledged: ``take`` hands records out as a lease, ``ack`` settles it.

Records a ``take`` hands a controller are received for everyone else at once; the controller
says (``ack``) how many of them it handed on, and with ``release`` gives the rest back. What a
connection took and did not acknowledge when it ends is given back too: such records become
unreceived again and the next ``take`` of their streams hands them out first, in seq order
(``Deliveries.returned``). So a controller that dies loses nothing and repeats at most what it
had not acknowledged.
"""

from __future__ import annotations

import heapq
from array import array
from operator import itemgetter
from typing import Any

import attrs

from .._core.errors import JobArgumentError
from .._core.models import STREAMS
from .hostjob import HostedJobs
from .paging import Fetched, Turn, page, reading
from .store import Row, Store


@attrs.define(eq=False)
class Lease:
    """Records ``take`` handed to a controller that it has not acknowledged yet: received
    for everyone else, given back (``give_back``) unless the controller says it handed them
    on (``ack``)."""

    job: int
    seqs: array[int]  # of the records handed out, in order (8 bytes each, not the rows)
    done: int = 0  # how many of them (from the first) are acknowledged

    @property
    def rest(self) -> array[int]:
        return self.seqs[self.done :]


@attrs.define(eq=False)
class Leases:
    """What one connection took and has not acknowledged, by the id of the take request."""

    held: dict[int, Lease] = attrs.field(factory=dict)
    taking: set[int] = attrs.field(factory=set)  # take requests being answered
    abandoned: set[int] = attrs.field(factory=set)  # of those, released before they took


class Deliveries:
    """The host's receive-once bookkeeping over the store's per-record ``received`` flag."""

    def __init__(self, store: Store, jobs: HostedJobs) -> None:
        self.store = store
        self.jobs = jobs
        #: Records handed out by ``take`` and given back unacknowledged, per job, in seq
        #: order: the next ``take`` of their streams hands them out first.
        self.returned: dict[int, list[Row]] = {}

    def has_returned(self, job_id: int) -> bool:
        return bool(self.returned.get(job_id))

    def forget(self, job_id: int) -> None:
        """The job is removed: nothing of it is given back any more."""
        self.returned.pop(job_id, None)

    async def take(
        self,
        leases: Leases,
        job: int,
        streams: list[str] | None,
        limit: int | None,
        wait: float | None,
        turn: Turn,
        lease: int,
    ) -> dict[str, Any]:
        """``take``: the next unreceived records, as lease ``lease`` (the request's id)."""
        chosen = streams or list(STREAMS)

        def fetch() -> Fetched:
            if lease in leases.abandoned:  # its caller gave up already: take nothing
                return [], None
            return self._take(leases, job, chosen, limit, lease)

        leases.taking.add(lease)
        try:
            batch = await reading(self.jobs, job, wait, fetch, turn)
        finally:
            leases.taking.discard(lease)
            leases.abandoned.discard(lease)
        host_job = self.jobs.running.get(job)
        if host_job is not None:
            host_job.wake_producer()
        return batch

    def _take(
        self, leases: Leases, job_id: int, chosen: list[str], limit: int | None, lease: int
    ) -> Fetched:
        """Receive-once: the next unreceived records of ``chosen`` (given-back ones first,
        all in seq order), cut to what fits in a frame, handed out as a lease of the
        connection's: received for everyone else from now on, and given back if the
        controller does not acknowledge them (``ack``) before its connection ends."""
        back = [r for r in self.returned.get(job_id, ()) if r[1] in chosen]
        if limit is not None:
            del back[limit:]
        fresh = self.store.read_rows(job_id, 0, streams=chosen, limit=limit, unreceived_only=True)
        rows = list(heapq.merge(back, fresh)) if back else fresh
        if limit is not None:
            del rows[limit:]
        out = page(rows)
        if not out:
            return out, None
        taken = rows[: len(out)]
        if back:
            given = {r[0] for r in back}
            again = {r[0] for r in taken if r[0] in given}
            self.returned[job_id] = [r for r in self.returned[job_id] if r[0] not in again]
            if not self.returned[job_id]:
                del self.returned[job_id]
            n_fresh = len(taken) - len(again)
        else:
            n_fresh = len(taken)
        if n_fresh:  # exactly the first n_fresh unreceived records: those in ``taken``
            self.store.take_rows(job_id, chosen, limit=n_fresh)
        leases.held[lease] = Lease(job_id, array("q", map(itemgetter(0), taken)))
        return out, lease

    def give_back(self, job_id: int, seqs: array[int]) -> None:
        """Unacknowledged records become unreceived again, for the next ``take``."""
        if not seqs or self.store.job(job_id) is None:  # none, or the job is removed
            return
        wanted = set(seqs)
        span = self.store.read_rows(job_id, seqs[0], limit=seqs[-1] - seqs[0] + 1)
        rows = [r for r in span if r[0] in wanted]
        self.returned[job_id] = list(heapq.merge(self.returned.get(job_id, []), rows))
        host_job = self.jobs.running.get(job_id)
        if host_job is not None:
            host_job.wake_readers()

    def ack(self, leases: Leases, lease: int, count: int, release: bool) -> None:
        """``ack``: the first ``count`` records of lease ``lease`` were handed to the caller
        (received for good); with ``release``, the rest are given back and the lease ends."""
        held = leases.held.get(lease)
        if held is None and release and lease in leases.taking:  # before it took
            leases.abandoned.add(lease)
            return
        if held is None:
            raise JobArgumentError(
                f"ack: no unacknowledged batch {lease} on this connection (acknowledged "
                "already, or given back when an earlier connection ended)"
            )
        held.done = max(held.done, min(count, len(held.seqs)))
        if release or held.done == len(held.seqs):
            del leases.held[lease]
            self.give_back(held.job, held.rest)

    def give_back_all(self, leases: Leases) -> None:
        """The connection ended: what it held unacknowledged is given back."""
        held, leases.held = leases.held, {}
        for lease in held.values():
            self.give_back(lease.job, lease.rest)
