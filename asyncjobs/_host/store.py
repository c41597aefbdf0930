"""The job host's store: sessions, jobs and every job's seq-numbered records, on disk, crash-safe.

It is the record log (``_core.log``) persisted: one append-only log per job, seqs from 0 across
the seven streams, ``read`` with keep semantics from any seq, and per-stream receive-once
cursors in the job row (stream ``s``'s records with ``seq < cursors[s]`` are received), each
beside a count of that stream's unreceived records, so that ``unreceived`` reads one row.

**SQLite in WAL mode** (standard library: nothing to install on a remote host). A commit is an
append to the ``-wal`` file, readers never block the writer, and the next open after a SIGKILL
sees exactly the committed transactions: a record is *acknowledged* once ``append`` returned.
``synchronous=NORMAL`` fsyncs at checkpoints, not per commit: a commit outlives the process (it
is in the OS's page cache) and power loss may lose the last commits but never corrupts the file.
That keeps the host's promise, to survive its own death; FULL would make each ``append`` wait for
the disk.

**Chunks, not a row per record.** 1 GB of 100-byte lines is ten million records; at a row each,
SQLite and ``sqlite3`` spend microseconds per record, far from the 1M records/s that 100 MB/s
needs. So each ``append`` stores its batch as one row (a few if it is large) of ``chunks``
(``chunks``: the packing). Values are opaque bytes (the protocol layer encodes them) and nothing
is ever unpickled: what came from elsewhere stays data. ``schema`` holds the file: its tables,
rows read back by column name as ``HostJobInfo`` (the one job record), the WAL checkpointer.

One ``Store`` per host process and one writer connection, under a lock; reads use pooled reader
connections, so a big read in a worker thread never holds up the event loop's short writes.
Records stay until their job is deleted (a keep reader may start anywhere); ``drop_oldest`` only
moves the receive-once cursors. Pages freed by deletes are reused.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, final

import attrs

from .._core import checks
from .._core.errors import JobArgumentError, NoSuchJob
from .._core.models import STREAMS
from .._core.state import ACTIVE_VALUES, JobState
from .chunks import Piece as Piece
from .chunks import Row as Row
from .chunks import StoredRecord as StoredRecord
from .chunks import chunks_of, join_pieces, pack_records, scan, select, unreceived_from
from .records import HostJobInfo, InvokeHost, has_more_data
from .schema import (
    APPENDED,
    COUNTERS,
    INSERT_CHUNKS,
    JOBS,
    MIGRATIONS,
    PUT_SESSION,
    SCHEMA,
    SESSION_COLUMNS,
    SESSIONS,
    SET_COUNTERS,
    STATES,
    UPDATABLE,
    WAL_PAGES,
    Checkpointer,
    check_version,
    connect,
    counters,
    job_info,
    schema_version,
    session_row,
)
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import SessionRow as SessionRow
from .schema import StoreError as StoreError
from .wire import STREAM_CODES, STREAM_NAMES


@attrs.frozen
class StoreStatistics:
    """A snapshot of a store: its rows, and the bytes of its database and WAL files."""

    sessions: int
    jobs: int
    records: int
    file_bytes: int


def read_jobs(path: Path) -> list[HostJobInfo]:
    """Every job of the store at ``path``, by id, read once, read-only, without opening a
    ``Store`` (no writer, no checkpointer, nothing created): the command line's ``asyncjobs
    get`` while a job host runs. A file that is not a store of this schema raises
    ``StoreError``."""
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)) as conn:
            check_version(schema_version(conn), path)
            return list(map(job_info, conn.execute(f"{JOBS} ORDER BY id")))
    except sqlite3.Error as exc:
        raise StoreError(f"can't read the job store {path}: {exc}") from exc


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise JobArgumentError(f"limit={limit}: a limit is None or a count >= 0")


@final
class Store:
    """The job host's crash-safe store: ``with Store.open(path) as store: ...``. Every method is
    synchronous, short unless it moves many records, and safe to call from any thread."""

    def __init__(self, path: Path, writer: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._lock = threading.Lock()  # the writer connection and its transaction
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []  # reader connections not in use
        self._closed = False
        self._last_id = 0  # the greatest job id this store gave out or reserved
        self._checkpointer = Checkpointer(path, self._lock)

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open the store at ``path``, creating it (directory 0700, file 0600) if need be."""
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # and SQLite gives its -wal and -shm files the same mode
            finally:
                os.close(fd)
            store = cls(path, connect(path))
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"can't open the job store {path}: {exc}") from exc
        try:
            store._setup()
        except BaseException:
            store.close()
            raise
        return store

    def _setup(self) -> None:
        with self._sqlite_errors():
            self._writer.execute("PRAGMA page_size = 8192")  # takes on a new file only
            mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"job store {self.path}: the file system refuses WAL ({mode})")
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")  # _Checkpointer does it
            self._writer.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 8192 * 4}")
        with self._writing() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in SCHEMA.split(";"):
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                return
            if "meta" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a job store")
            version = schema_version(conn)
            while version in MIGRATIONS:  # an older store, made one of this version in place
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        check_version(version, self.path)

    def close(self) -> None:
        """Close every connection (the file is consistent at any moment anyway)."""
        self._checkpointer.close()
        with self._lock, self._pool_lock:
            self._closed = True
            self._writer.close()
            while self._idle:
                self._idle.pop().close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<asyncjobs.Store {str(self.path)!r} {'closed' if self._closed else 'open'}>"

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the one writer connection (BEGIN IMMEDIATE ... COMMIT)."""
        with self._lock, self._sqlite_errors():
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")
            self._checkpointer.wrote(0)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction (one snapshot, whatever the writer does meanwhile) on a pooled
        reader connection: in WAL mode readers and the writer never wait for each other."""
        with self._sqlite_errors():
            with self._pool_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = connect(self.path)
                conn.execute("PRAGMA query_only = ON")
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            finally:
                with self._pool_lock:
                    if self._closed:
                        conn.close()
                    else:
                        self._idle.append(conn)

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """The one place where SQLite's errors become ``StoreError`` naming the file."""
        if self._closed:
            raise StoreError(f"job store {self.path} is closed")
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self.path}: {exc}") from exc

    def _counters(
        self, conn: sqlite3.Connection, job_id: int
    ) -> tuple[int, dict[str, int], dict[str, int]]:
        """A job's ``next_seq``, cursors and unreceived counts per stream."""
        r = conn.execute(COUNTERS, (job_id,)).fetchone()
        if r is None:
            raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
        return counters(r)

    @staticmethod
    def _set_counters(
        conn: sqlite3.Connection,
        job_id: int,
        cur: dict[str, int],
        pend: dict[str, int],
        dropped: int = 0,
    ) -> None:
        values = [v for s in STREAM_NAMES for v in (cur[s], pend[s])]
        conn.execute(SET_COUNTERS, (dropped, *values, job_id))

    # -- sessions ----------------------------------------------------------------------------

    def put_session(self, row: SessionRow) -> None:
        """Create or replace the session ``row.name``."""
        with self._writing() as conn:
            conn.execute(PUT_SESSION, [getattr(row, c) for c in SESSION_COLUMNS])

    def session(self, name: str) -> SessionRow | None:
        with self._reading() as conn:
            r = conn.execute(f"{SESSIONS} WHERE name = ?", (name,)).fetchone()
        return None if r is None else session_row(r)

    def sessions(self) -> list[SessionRow]:
        with self._reading() as conn:
            return [session_row(r) for r in conn.execute(f"{SESSIONS} ORDER BY name")]

    def delete_session(self, name: str) -> None:
        """Forget a session (no error if it is gone); its jobs are deleted one by one."""
        with self._writing() as conn:
            conn.execute("DELETE FROM sessions WHERE name = ?", (name,))

    # -- jobs --------------------------------------------------------------------------------

    def reserve_job_id(self) -> int:
        """An id for ``new_job(job_id=...)`` to add a job under later (a job host names and
        starts the job first, then adds it in one write): greater than every id this store has
        given out, so never one used before as long as this ``Store`` is the only writer."""
        with self._lock, self._sqlite_errors():
            if not self._last_id:
                (self._last_id,) = self._writer.execute(
                    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0),"
                    " coalesce((SELECT max(id) FROM jobs), 0))"
                ).fetchone()
            self._last_id += 1
            return self._last_id

    def new_job(
        self, *, session: str, name: str | None = None, kind: str, command: str, location: str,
        instance_id: str, job_id: int | None = None, state: str = "NotStarted",
        started_at: float | None = None,
    ) -> HostJobInfo:  # fmt: skip
        """Add a job in ``state`` (``NotStarted`` unless given), named ``Job<id>`` unless
        ``name`` is given, with id ``job_id`` (from ``reserve_job_id``) or the next one. Ids are
        never reused, even after a delete (AUTOINCREMENT)."""
        if state not in STATES:
            raise JobArgumentError(f"new_job: state={state!r} is not a JobState value")
        if name is None and job_id is not None:
            name = f"Job{job_id}"
        now = time.time()
        with self._writing() as conn:
            inserted = conn.execute(
                "INSERT INTO jobs (id, instance_id, session, name, kind, command, location, "
                "state, started_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, instance_id, session, name or "", kind, command, location, state,
                 started_at, now),
            ).lastrowid  # fmt: skip
            assert inserted is not None
            self._last_id = max(self._last_id, inserted)
            if name is None:
                name = f"Job{inserted}"
                conn.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, inserted))
        return HostJobInfo(
            id=inserted, name=name, kind=kind, command=command, location=location,
            session=session, state=JobState(state), has_more_data=has_more_data(state, 0),
            reason=None, exit_status=None, started_at=started_at, finished_at=None, next_seq=0,
            dropped=0, instance_id=instance_id,
        )  # fmt: skip

    def update_job(self, job_id: int, **fields: Any) -> HostJobInfo:
        """Change some of ``state``, ``reason``, ``exit_status``, ``started_at``,
        ``finished_at``, ``pid`` and ``dropped``; return the row as it now is."""
        self._check_fields(fields)
        with self._writing() as conn:
            if fields:
                sets = ", ".join(f"{key} = ?" for key in fields)
                conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
            r = conn.execute(f"{JOBS} WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
            return job_info(r)

    def set_job(self, job_id: int, **fields: Any) -> None:
        """``update_job`` without reading the row back (one statement)."""
        self._check_fields(fields)
        sets = ", ".join(f"{key} = ?" for key in fields)
        with self._writing() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {sets or 'id = id'} WHERE id = ?", (*fields.values(), job_id)
            )
            if cursor.rowcount == 0:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")

    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key not in UPDATABLE:
                raise JobArgumentError(
                    f"update_job: unknown field {key!r}; the fields are {', '.join(UPDATABLE)}"
                )
            if not isinstance(value, UPDATABLE[key]) or isinstance(value, bool):
                raise JobArgumentError(f"update_job: {key}={value!r} has the wrong type")
        if fields.get("state", "Running") not in STATES:
            raise JobArgumentError(f"update_job: state={fields['state']!r} is not a JobState value")

    def job(self, job_id: int) -> HostJobInfo | None:
        with self._reading() as conn:
            r = conn.execute(f"{JOBS} WHERE id = ?", (job_id,)).fetchone()
        return None if r is None else job_info(r)

    def jobs_by_id(self, ids: Sequence[int]) -> list[HostJobInfo | None]:
        """The rows of jobs ``ids``, in that order (None for a job that is not there), read in
        one transaction."""
        if not ids:
            return []
        wanted = sorted(set(ids))
        found: dict[int, HostJobInfo] = {}
        with self._reading() as conn:
            for i in range(0, len(wanted), 500):  # far below SQLite's limit of parameters
                part = wanted[i : i + 500]
                query = f"{JOBS} WHERE id IN ({', '.join('?' * len(part))})"
                found.update((job.id, job) for job in map(job_info, conn.execute(query, part)))
        return [found.get(job_id) for job_id in ids]

    def jobs(self, session: str | None = None) -> list[HostJobInfo]:
        """Every job (of ``session``, if given), by id."""
        where, args = ("WHERE session = ?", (session,)) if session is not None else ("", ())
        with self._reading() as conn:
            return [job_info(r) for r in conn.execute(f"{JOBS} {where} ORDER BY id", args)]

    def delete_job(self, job_id: int) -> None:
        """Delete a job and all its records (no error if it is gone)."""
        with self._writing() as conn:
            conn.execute("DELETE FROM chunks WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM invoke_hosts WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- invokes: ``asyncjobs invoke``'s hosts and outcomes, for ``-H @failed`` ---------------

    def record_invoke(
        self, *, session: str, command: str, location: str, instance_id: str, state: str,
        hosts: Sequence[InvokeHost], exit_status: int | None = None, started_at: float,
        finished_at: float,
    ) -> HostJobInfo:  # fmt: skip
        """Add a finished ``RemoteJob`` (named ``Job<id>``) with its ``hosts``, in one write."""
        if state not in STATES:
            raise JobArgumentError(f"record_invoke: state={state!r} is not a JobState value")
        job_id = self.reserve_job_id()
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO jobs (id, instance_id, session, name, kind, command, location, "
                "state, exit_status, started_at, finished_at, created_at) "
                "VALUES (?, ?, ?, ?, 'RemoteJob', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, instance_id, session, f"Job{job_id}", command, location, state,
                 exit_status, started_at, finished_at, time.time()),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO invoke_hosts VALUES (?, ?, ?, ?, ?)",
                [(job_id, i, h.host, h.state, h.exit_status) for i, h in enumerate(hosts)],
            )
            r = conn.execute(f"{JOBS} WHERE id = ?", (job_id,)).fetchone()
        return job_info(r)

    def invoke_hosts(self, job_id: int | None = None) -> tuple[int, list[InvokeHost]] | None:
        """A recorded invoke's id and hosts, in order: ``job_id``'s, or the last one's; None
        if there is no such invoke."""
        with self._reading() as conn:
            if job_id is None:
                (job_id,) = conn.execute("SELECT max(job) FROM invoke_hosts").fetchone()
            rows = conn.execute(
                "SELECT host, state, exit_status FROM invoke_hosts WHERE job = ? "
                "ORDER BY position", (job_id,),
            ).fetchall()  # fmt: skip
        if job_id is None or not rows:
            return None
        return job_id, [InvokeHost(*r) for r in rows]

    # -- records -----------------------------------------------------------------------------

    def append(self, job_id: int, records: Sequence[tuple[str, bytes, float]]) -> int:
        """Append ``(stream, value, time)`` records, seqs ``next_seq, next_seq + 1, ...``, in one
        transaction: once it returns they are acknowledged. Returns the new ``next_seq``."""
        try:
            codes, chunks = pack_records(records) if records else (b"", [])
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise JobArgumentError(
                f"append to job {job_id}: records are (stream, bytes, time) tuples, streams "
                f"{', '.join(STREAMS)} ({type(exc).__name__}: {exc})"
            ) from exc
        with self._writing() as conn:
            r = conn.execute("SELECT next_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
            start: int = r[0]
            end = start + len(codes)
            if chunks:
                rows = [(job_id, start + lo, n, data) for lo, n, data in chunks]
                conn.executemany(INSERT_CHUNKS, rows)
                self._checkpointer.written += sum(len(row[3]) for row in rows)
                conn.execute(APPENDED, (end, *(codes.count(i) for i in range(7)), job_id))
        return end

    def append_pieces(self, job_id: int, pieces: Sequence[Piece]) -> int:
        """Append the records of ``pieces`` in order, like ``append`` (one transaction,
        acknowledged once it returns); returns the new ``next_seq``."""
        counts = [0] * len(STREAM_NAMES)
        for piece in pieces:
            counts[STREAM_CODES[piece.stream]] += piece.records
        chunks = [
            (sum(p.records for p in group), join_pieces(group)) for group in chunks_of(pieces)
        ]
        with self._writing() as conn:
            r = conn.execute("SELECT next_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
            rows, seq = [], r[0]
            for n, data in chunks:
                rows.append((job_id, seq, n, data))
                seq += n
            if rows:
                conn.executemany(INSERT_CHUNKS, rows)
                self._checkpointer.written += sum(len(row[3]) for row in rows)
                conn.execute(APPENDED, (seq, *counts, job_id))
        return int(seq)

    def read(
        self, job_id: int, from_seq: int = 0, *, streams: Collection[str] | None = None,
        limit: int | None = None, unreceived_only: bool = False,
    ) -> list[StoredRecord]:  # fmt: skip
        """Records with ``seq >= from_seq`` of ``streams`` (all if None), at most ``limit``, in
        seq order; with ``unreceived_only``, only those not received yet. Moves nothing."""
        rows = self.read_rows(
            job_id, from_seq, streams=streams, limit=limit, unreceived_only=unreceived_only
        )
        return list(map(StoredRecord._make, rows))

    def read_rows(
        self, job_id: int, from_seq: int = 0, *, streams: Collection[str] | None = None,
        limit: int | None = None, unreceived_only: bool = False,
    ) -> list[Row]:  # fmt: skip
        """``read`` as plain ``(seq, stream, value, time)`` tuples: no Python object is made
        per record (a job host serves a million of them to a reattaching controller)."""
        want = checks.streams(streams)
        _check_limit(limit)
        with self._reading() as conn:
            _, cursors, pending = self._counters(conn, job_id)
            if not unreceived_only:
                return select(scan(conn, job_id, from_seq), want, None, limit)
            bound = sum(pending[s] for s in want)
            start = max(from_seq, min((cursors[s] for s in want if pending[s]), default=0))
            bound = bound if limit is None else min(bound, limit)
            chosen = None if unreceived_from(start, want, cursors) else cursors
            return select(scan(conn, job_id, start), want, chosen, bound)

    def take(
        self, job_id: int, streams: Collection[str] | None = None, limit: int | None = None
    ) -> list[StoredRecord]:
        """Receive-once: the unreceived records of ``streams`` (at most ``limit``), past which
        their cursors then move, in one transaction: nothing skipped, nothing returned twice."""
        return list(map(StoredRecord._make, self.take_rows(job_id, streams, limit)))

    def take_rows(
        self, job_id: int, streams: Collection[str] | None = None, limit: int | None = None
    ) -> list[Row]:
        """``take`` as plain ``(seq, stream, value, time)`` tuples."""
        want = checks.streams(streams)
        _check_limit(limit)
        with self._writing() as conn:
            next_seq, cursors, pending = self._counters(conn, job_id)
            bound = sum(pending[s] for s in want)
            start = min((cursors[s] for s in want if pending[s]), default=next_seq)
            bound = bound if limit is None else min(bound, limit)
            chosen = None if unreceived_from(start, want, cursors) else cursors
            records = select(scan(conn, job_id, start), want, chosen, bound)
            if records:
                # Every unreceived record of ``want`` up to the last one returned was returned.
                to = next_seq if limit is None or len(records) < limit else records[-1][0] + 1
                for stream, n in Counter(r[1] for r in records).items():
                    pending[stream] -= n
                cursors.update((s, max(cursors[s], to)) for s in want)
                self._set_counters(conn, job_id, cursors, pending)
        return records

    def unreceived(self, job_id: int, streams: Collection[str] | None = None) -> int:
        """How many records of ``streams`` (all if None) are not received yet."""
        want = checks.streams(streams)
        with self._reading() as conn:
            pending = self._counters(conn, job_id)[2]
        return sum(pending[s] for s in want)

    def cursors(self, job_id: int) -> dict[str, int]:
        """Each stream's receive-once cursor: its records with a lower seq are received."""
        with self._reading() as conn:
            return self._counters(conn, job_id)[1]

    def drop_oldest(self, job_id: int, keep: int) -> int:
        """Mark all but the newest ``keep`` unreceived records received and dropped (for
        ``output_buffering="drop"``): cursors move, ``dropped`` grows. Returns how many."""
        if keep < 0:
            raise JobArgumentError(f"drop_oldest: keep={keep} must be >= 0")
        with self._writing() as conn:
            _, cursors, pending = self._counters(conn, job_id)
            excess = sum(pending.values()) - keep
            if excess <= 0:
                return 0
            start = min(cursors[s] for s in STREAM_NAMES if pending[s])
            gone = select(scan(conn, job_id, start), STREAM_CODES, cursors, excess)
            to = gone[-1][0] + 1  # every unreceived record below ``to`` is among ``gone``
            for stream, n in Counter(r[1] for r in gone).items():
                pending[stream] -= n
            cursors.update((s, max(c, to)) for s, c in cursors.items())
            self._set_counters(conn, job_id, cursors, pending, dropped=excess)
        return excess

    # -- crash recovery ----------------------------------------------------------------------

    def recover(self, reason: str) -> list[int]:
        """After the host died: mark every job it left active ``Failed`` with ``reason`` and
        ``finished_at`` now (their records stay). Returns their ids."""
        states = f"state IN ({', '.join('?' * len(ACTIVE_VALUES))})"
        with self._writing() as conn:
            active = conn.execute(f"SELECT id FROM jobs WHERE {states}", ACTIVE_VALUES)
            ids = [r[0] for r in active]
            conn.execute(
                f"UPDATE jobs SET state = 'Failed', reason = ?, finished_at = ? WHERE {states}",
                (reason, time.time(), *ACTIVE_VALUES),
            )
        return sorted(ids)

    def statistics(self) -> StoreStatistics:
        with self._reading() as conn:
            (sessions,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
            jobs, records = conn.execute("SELECT count(*), total(next_seq) FROM jobs").fetchone()
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        size = sum(p.stat().st_size for p in files if p.exists())
        return StoreStatistics(sessions, jobs, int(records), size)
