"""``asyncjobs get`` on this machine, read straight from the job host's store.

The job host answers ``get`` from its store, one job at a time (a snapshot object, a count of
unreceived records, the wire encoding and its validation on both ends): ~0.5 s for 10,000 jobs.
The store is SQLite in WAL mode in the user's private job host directory, and readers never
block its writer, so the command line reads the same rows with the store's own read-only
``read_jobs`` (one query, no event loop: the store imports no anyio) and selects them with the
host's own ``select_jobs``. It does so only while a job host runs there (it recovered the store
when it started: no job of a dead host shows as running), and else leaves ``get`` to the host,
which it starts; a store it can't read (another schema) is also left to the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._host.hostdir import STORE, host_pid
from .._host.records import select_jobs
from .._host.store import StoreError
from .._host.store import read_jobs as read_store
from ._output import host_job_json


def local_jobs(
    directory: Path, *, name: str | None = None, state: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """``read_jobs`` of the job host in ``directory``, if one runs there; else None."""
    if host_pid(directory) is None:
        return None
    return read_jobs(directory / STORE, name=name, state=state, kind=kind)


def read_jobs(
    store: Path, *, name: str | None = None, state: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """The store's jobs in the ``--json`` job shape, filtered like ``jobs.get``; None if the
    store can't be read here (then ask the host)."""
    try:
        jobs = read_store(store)
    except StoreError:
        return None
    return [host_job_json(job) for job in select_jobs(jobs, name=name, state=state, kind=kind)]
