"""The store's file: its schema and version, each table's columns declared once and rows read
back by column name, connections, and the thread that checkpoints the WAL.

A job row becomes a ``HostJobInfo`` (the one job record) through ``JOB_FIELDS``: the query
names the column of each field, so a column added or moved can't shift a field. The schema is
file format: change it only with ``SCHEMA_VERSION`` (and a migration from the version before).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, Final, final

import attrs

from .._core.errors import AsyncJobsError
from .._core.state import JobState
from .records import HostJobInfo, has_more_data
from .wire import STREAM_NAMES

#: 2 added ``invoke_hosts`` (``MIGRATIONS``: a version-1 store is migrated when it opens).
SCHEMA_VERSION: Final = 2
# Past about this many 8 KiB pages of WAL the checkpointer thread copies it into the database
# (fsyncs included). The writer does not checkpoint itself (that took ~40 % of a bulk append);
# it only waits while the thread copies the last frames, so that the WAL can start over.
WAL_PAGES: Final = 1000
#: Every ``JobState`` value: what the ``state`` column may hold.
STATES: Final = frozenset(s.value for s in JobState)
_NONE = type(None)
#: The job fields ``Store.update_job`` may change, and their types.
UPDATABLE: Final[dict[str, tuple[type, ...]]] = {
    "state": (str,), "reason": (str, _NONE), "exit_status": (int, _NONE), "pid": (int, _NONE),
    "started_at": (float, int, _NONE), "finished_at": (float, int, _NONE), "dropped": (int,),
}  # fmt: skip
#: Per stream, its receive-once cursor (its records below it are received) and its count of
#: unreceived records, in ``wire.STREAM_NAMES`` order.
CURSORS: Final = tuple(f"c_{s}" for s in STREAM_NAMES)
PENDING: Final = tuple(f"n_{s}" for s in STREAM_NAMES)

#: The hosts of each recorded ``asyncjobs invoke`` (a ``RemoteJob`` row of ``jobs``), in the
#: order given, each with its outcome: what ``-H @failed`` and ``-H @last`` read.
INVOKE_HOSTS_TABLE: Final = """CREATE TABLE invoke_hosts (job INTEGER NOT NULL,
    position INTEGER NOT NULL, host TEXT NOT NULL, state TEXT NOT NULL, exit_status INTEGER,
    PRIMARY KEY (job, position))"""
#: Per version, the statements that make a store of it one of the next version.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {1: (INVOKE_HOSTS_TABLE,)}

SCHEMA: Final = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (name TEXT PRIMARY KEY, state TEXT NOT NULL, idle_timeout REAL NOT NULL,
    output_buffering TEXT NOT NULL, created_at REAL NOT NULL, disconnected_at REAL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL,
    session TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, command TEXT NOT NULL,
    location TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, exit_status INTEGER,
    started_at REAL, finished_at REAL, next_seq INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0, pid INTEGER, created_at REAL NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in CURSORS)},
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in PENDING)});
CREATE INDEX jobs_by_session ON jobs (session);
CREATE TABLE chunks (job INTEGER NOT NULL, first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job, first_seq));
{INVOKE_HOSTS_TABLE}
"""


class StoreError(AsyncJobsError):
    """The job host's store can't be used: not a store, a schema version this asyncjobs does not
    read, closed, or an SQLite error (disk full, I/O error). The message names the file."""


@attrs.frozen
class SessionRow:
    """A named session on the job host, as stored."""

    name: str
    state: str = attrs.field(validator=attrs.validators.in_(("Opened", "Disconnected", "Closed")))
    idle_timeout: float
    output_buffering: str = attrs.field(validator=attrs.validators.in_(("spill", "block", "drop")))
    created_at: float
    disconnected_at: float | None = None


#: The columns of a session row, by ``SessionRow``'s fields.
SESSION_COLUMNS: Final = tuple(f.name for f in attrs.fields(SessionRow))
PUT_SESSION: Final = (
    f"INSERT OR REPLACE INTO sessions ({', '.join(SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SESSION_COLUMNS))})"
)
SESSIONS: Final = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions"

#: A ``HostJobInfo`` is read from the column of each of its fields, by name, in the record's
#: order, but ``has_more_data``, in whose place the query reads ``unreceived`` (the sum of every
#: stream's unreceived records), which ``job_info`` makes it from with the state.
JOB_FIELDS: Final = tuple(f.name for f in attrs.fields(HostJobInfo))
_COMPUTED: Final = {"has_more_data": f"{' + '.join(PENDING)} AS unreceived"}
JOBS: Final = f"SELECT {', '.join(_COMPUTED.get(f, f) for f in JOB_FIELDS)} FROM jobs"
_STATE: Final = JOB_FIELDS.index("state")
_MORE: Final = JOB_FIELDS.index("has_more_data")
#: A job's counters: ``next_seq``, then ``CURSORS``, then ``PENDING``.
COUNTER_COLUMNS: Final = ("next_seq", *CURSORS, *PENDING)
COUNTERS: Final = f"SELECT {', '.join(COUNTER_COLUMNS)} FROM jobs WHERE id = ?"
SET_COUNTERS: Final = (
    "UPDATE jobs SET dropped = dropped + ?, "
    f"{', '.join(f'{c} = ?, {n} = ?' for c, n in zip(CURSORS, PENDING, strict=True))} WHERE id = ?"
)
APPENDED: Final = (
    f"UPDATE jobs SET next_seq = ?, {', '.join(f'{n} = {n} + ?' for n in PENDING)} WHERE id = ?"
)
INSERT_CHUNKS: Final = "INSERT INTO chunks (job, first_seq, count, data) VALUES (?, ?, ?, ?)"


_STATE_OF: Final = {s.value: s for s in JobState}  # faster than JobState(value)


def job_info(r: Sequence[Any]) -> HostJobInfo:
    """A row of ``JOBS`` as the job record (``asyncjobs get`` makes 10,000 of them: a list and
    the record per row, no more)."""
    fields = list(r)
    state = fields[_STATE]
    fields[_STATE] = _STATE_OF[state]
    fields[_MORE] = has_more_data(state, fields[_MORE])
    return HostJobInfo(*fields)


def session_row(r: Sequence[Any]) -> SessionRow:
    """A row of ``SESSIONS``, mapped by ``SESSION_COLUMNS``."""
    return SessionRow(**dict(zip(SESSION_COLUMNS, r, strict=True)))


def counters(r: Sequence[Any]) -> tuple[int, dict[str, int], dict[str, int]]:
    """A row of ``COUNTERS``: ``next_seq``, the cursors and the unreceived counts by stream."""
    fields = dict(zip(COUNTER_COLUMNS, r, strict=True))
    return (
        fields["next_seq"],
        {s: fields[c] for s, c in zip(STREAM_NAMES, CURSORS, strict=True)},
        {s: fields[n] for s, n in zip(STREAM_NAMES, PENDING, strict=True)},
    )


def schema_version(conn: sqlite3.Connection) -> int:
    """The version a store's ``meta`` table names (0 if it names none)."""
    query = "SELECT coalesce((SELECT value FROM meta WHERE key = 'schema_version'), 0)"
    return int(conn.execute(query).fetchone()[0])


def check_version(version: int, path: Path) -> None:
    """Refuse a store of another schema version, saying what to do."""
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise StoreError(
            f"job store {path} has schema version {version}, written by {newer} "
            f"asyncjobs; this one reads version {SCHEMA_VERSION} only. Run the asyncjobs "
            "that wrote it, or move the file aside to start an empty store"
        )


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = NORMAL")  # why: see ``store``'s docstring
    return conn


@final
class Checkpointer:
    """Copies the WAL into the database file in a thread of its own, so that a big append
    never waits for it: a passive checkpoint on its own connection, whenever the writer has
    added about ``WAL_PAGES`` pages since the last one. The thread is started by the first
    ``poke`` and joined by ``close``."""

    def __init__(self, path: Path, writer_lock: threading.Lock) -> None:
        self._path = path
        self._writer_lock = writer_lock
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.written = 0  # bytes the writer committed since the last poke (an estimate)

    def wrote(self, nbytes: int) -> None:
        self.written += nbytes + 8192  # a transaction writes at least the jobs table's page
        if self.written >= WAL_PAGES * 8192:
            self.written = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="asyncjobs checkpoint")
                self._thread.start()
            self._wake.set()

    def _run(self) -> None:
        with closing(connect(self._path)) as conn:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                # On an error the next poke tries again; the WAL keeps every commit meanwhile.
                with suppress(sqlite3.Error):
                    self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL, then its tail with the writer held for a moment: the WAL starts
        over only once all of it is copied, which a busy writer would never let happen."""
        checkpoint = "PRAGMA wal_checkpoint(PASSIVE)"
        before = -1
        for _ in range(2):  # each pass copies what the writer added during the last one
            ((_, frames, _),) = conn.execute(checkpoint).fetchall()
            if frames - before < WAL_PAGES // 8:
                break
            before = frames
        with self._writer_lock:
            conn.execute(checkpoint).fetchall()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
