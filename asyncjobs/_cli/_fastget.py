"""``asyncjobs get`` on this machine, read straight from the job host's store.

The job host answers ``get`` from its store, one job at a time (a snapshot object, a count of
unreceived records, the wire encoding and its validation on both ends): ~0.5 s for 10,000 jobs.
The store is SQLite in WAL mode in the user's private job host directory, and readers never
block its writer, so the command line reads the same rows with one query, read-only, and
computes the same ``has_more_data`` (``_host.JobHost._info``). It does so only while a job host
runs there (it recovered the store when it started: no job of a dead host shows as running),
and else leaves ``get`` to the host, which it starts; a store it can't read (another schema)
is also left to the host.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from pathlib import Path
from typing import Any, Final

from .._core.models import STREAMS
from .._core.state import ACTIVE_VALUES
from .._host.directory import LOCK, STORE

#: The store schema this reader knows (``_store.SCHEMA_VERSION``; a test keeps them equal):
#: not imported from ``_store``, whose import costs more than this whole read.
SCHEMA_VERSION: Final = 1
_ACTIVE: Final = ACTIVE_VALUES
_QUERY: Final = (
    "SELECT id, name, kind, state, location, command, session, reason, exit_status, "
    f"started_at, finished_at, {' + '.join(f'n_{s}' for s in STREAMS)} FROM jobs ORDER BY id"
)


def host_running(directory: Path) -> bool:
    """Whether a job host serves ``directory`` now: the pid its lock file names is alive and
    is a job host (the lock itself is not touched: a starting host must get it)."""
    try:
        pid = int((directory / LOCK).read_text().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid > 0 and b"asyncjobs._host" in f.read()
    except (OSError, ValueError):
        return False


def local_jobs(
    directory: Path, *, name: str | None = None, state: str | None = None
) -> list[dict[str, Any]] | None:
    """``read_jobs`` of the job host in ``directory``, if one runs there; else None."""
    if not host_running(directory):
        return None
    return read_jobs(directory / STORE, name=name, state=state)


def read_jobs(
    store: Path, *, name: str | None = None, state: str | None = None
) -> list[dict[str, Any]] | None:
    """The store's jobs in the ``--json`` job shape, filtered like ``jobs.get``; None if the
    store can't be read here (then ask the host)."""
    try:
        conn = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        (version,) = conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone() or (None,)
        if version is None or int(version) != SCHEMA_VERSION:
            return None
        rows = conn.execute(_QUERY).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return [
        {
            "id": r[0],
            "name": r[1],
            "kind": r[2],
            "state": r[3],
            "has_more_data": r[3] in _ACTIVE or r[11] > 0,
            "location": r[4],
            "command": r[5],
            "session": r[6],
            "reason": r[7],
            "exit_status": r[8],
            "started_at": r[9],
            "finished_at": r[10],
            "children": [],
        }
        for r in rows
        if (name is None or fnmatch.fnmatchcase(r[1], name)) and (state is None or r[3] == state)
    ]
