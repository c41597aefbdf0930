"""The job host's store: sessions, jobs and every job's seq-numbered records, on disk, crash-safe.

It is ``_log``'s record log persisted: one append-only log per job, seqs from 0 across the seven
streams, ``read`` with keep semantics from any seq, and per-stream receive-once cursors in the job
row (stream ``s``'s records with ``seq < cursors[s]`` are received), each beside a count of that
stream's unreceived records, so that ``unreceived`` reads one row.

**SQLite in WAL mode** (standard library: nothing to install on a remote host). A commit is an
append to the ``-wal`` file, readers never block the writer, and the next open after a SIGKILL
sees exactly the committed transactions: a record is *acknowledged* once ``append`` returned.
``synchronous=NORMAL`` fsyncs at checkpoints, not per commit: a commit outlives the process (it
is in the OS's page cache) and power loss may lose the last commits but never corrupts the file.
That keeps the host's promise, to survive its own death; FULL would make each ``append`` wait for
the disk.

**Chunks, not a row per record.** 1 GB of 100-byte lines is ten million records; at a row each,
SQLite and ``sqlite3`` spend microseconds per record, far from the 1M records/s that 100 MB/s
needs. So each ``append`` stores its batch as one row (a few if it is large) of ``chunks(job,
first_seq, count, data)``, keyed by ``(job, first_seq)``: a read seeks the chunk that holds
``from_seq`` (the greatest ``first_seq <= from_seq``) and walks on. ``data`` is columnar so that
``struct`` and ``join`` do the work in C: ``count`` stream codes (u8), times (f64 LE), value
lengths (u32 LE), then the values back to back. Values are opaque bytes (the protocol layer
encodes them) and nothing is ever unpickled: what came from elsewhere stays data.

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
from collections.abc import Collection, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from itertools import accumulate, chain, islice
from pathlib import Path
from struct import pack, unpack_from
from typing import Any, Final, NamedTuple, final

import attrs

from .._core.errors import AsyncJobsError, JobArgumentError, NoSuchJob
from .._core.log import stream_set
from .._core.models import STREAMS, StreamName
from .._core.state import ACTIVE_VALUES, JobState

SCHEMA_VERSION: Final = 1

# Stream codes are file format (change them only with SCHEMA_VERSION), not the order of STREAMS.
_CODES: Final[tuple[StreamName, ...]] = (
    "output", "error", "warning", "verbose", "debug", "information", "progress"
)  # fmt: skip
assert set(_CODES) == set(STREAMS)
_CODE: Final = {s: i for i, s in enumerate(_CODES)}
_CHUNK_RECORDS: Final = 4096  # a chunk holds at most this many records
_CHUNK_BYTES: Final = 1 << 20  # and this many value bytes (or one bigger value)
# Past about this many 8 KiB pages of WAL the checkpointer thread copies it into the database
# (fsyncs included). The writer does not checkpoint itself (that took ~40 % of a bulk append);
# it only waits while the thread copies the last frames, so that the WAL can start over.
_WAL_PAGES: Final = 1000
_ACTIVE: Final = ACTIVE_VALUES
_STATES: Final = frozenset(s.value for s in JobState)
_NONE = type(None)
_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "state": (str,), "reason": (str, _NONE), "exit_status": (int, _NONE), "pid": (int, _NONE),
    "started_at": (float, int, _NONE), "finished_at": (float, int, _NONE), "dropped": (int,),
}  # fmt: skip
_CUR: Final = ", ".join(f"c_{s}" for s in _CODES)  # receive-once cursors
_PEND: Final = ", ".join(f"n_{s}" for s in _CODES)  # unreceived records per stream
_JOB: Final = (
    "SELECT id, instance_id, session, name, kind, command, location, state, reason, exit_status, "
    f"started_at, finished_at, next_seq, dropped, pid, created_at, {_CUR}, "
    f"{' + '.join(f'n_{s}' for s in _CODES)} FROM jobs"
)
_SCHEMA: Final = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (name TEXT PRIMARY KEY, state TEXT NOT NULL, idle_timeout REAL NOT NULL,
    output_buffering TEXT NOT NULL, created_at REAL NOT NULL, disconnected_at REAL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL,
    session TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, command TEXT NOT NULL,
    location TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, exit_status INTEGER,
    started_at REAL, finished_at REAL, next_seq INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0, pid INTEGER, created_at REAL NOT NULL,
    {", ".join(f"c_{s} INTEGER NOT NULL DEFAULT 0" for s in _CODES)},
    {", ".join(f"n_{s} INTEGER NOT NULL DEFAULT 0" for s in _CODES)});
CREATE INDEX jobs_by_session ON jobs (session);
CREATE TABLE chunks (job INTEGER NOT NULL, first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job, first_seq))
"""
_COUNTERS: Final = f"SELECT next_seq, {_CUR}, {_PEND} FROM jobs WHERE id = ?"
_SET_COUNTERS: Final = (
    f"UPDATE jobs SET dropped = dropped + ?, {', '.join(f'c_{s} = ?, n_{s} = ?' for s in _CODES)}"
    " WHERE id = ?"
)
_APPENDED: Final = (
    f"UPDATE jobs SET next_seq = ?, {', '.join(f'n_{s} = n_{s} + ?' for s in _CODES)} WHERE id = ?"
)
_CHUNKS_FROM: Final = (
    "SELECT first_seq, count, data FROM chunks WHERE job = ?1 AND first_seq >= coalesce("
    "(SELECT max(first_seq) FROM chunks WHERE job = ?1 AND first_seq <= ?2), 0) ORDER BY first_seq"
)


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


@attrs.frozen
class JobRow:
    """A job on the job host, as stored. ``state`` is a ``JobState`` value (``"Running"``);
    ``next_seq`` is the seq the next record gets (= records stored); ``cursors[s]`` is stream
    ``s``'s receive-once cursor (its records below it are received); ``unreceived`` counts the
    records of every stream not received yet (what ``Store.unreceived`` returns)."""

    id: int
    instance_id: str
    session: str
    name: str
    kind: str
    command: str
    location: str
    state: str
    reason: str | None
    exit_status: int | None
    started_at: float | None
    finished_at: float | None
    next_seq: int
    cursors: dict[str, int]
    dropped: int
    pid: int | None
    created_at: float
    unreceived: int = 0


class StoredRecord(NamedTuple):
    """One record of a job's log; ``value`` is opaque bytes (the protocol layer decodes it).
    A named tuple: a reattach reads a million of them."""

    seq: int
    stream: StreamName
    value: bytes
    time: float


@attrs.frozen
class StoreStatistics:
    """A snapshot of a store: its rows, and the bytes of its database and WAL files."""

    sessions: int
    jobs: int
    records: int
    file_bytes: int


def _job_row(r: Sequence[Any]) -> JobRow:
    fields = [*r[:13], dict(zip(_CODES, r[16:23], strict=True)), *r[13:16], r[23]]
    return JobRow(*fields)


def _pack(
    records: Sequence[tuple[str, bytes, float]],
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """The records' stream codes, and the records packed in chunks: ``[(first index, count,
    data), ...]``. The work is done by C loops (``zip``, ``map``, ``struct``, ``join``)."""
    streams, values, times = zip(*records, strict=True)
    n, first = len(values), streams[0]
    if streams.count(first) == n:  # the usual batch: one stream
        codes = bytes((_CODE[first],)) * n
    else:
        codes = bytes(map(_CODE.__getitem__, streams))
    lens = list(map(len, values))
    bounds = [(0, n)] if n <= _CHUNK_RECORDS and sum(lens) <= _CHUNK_BYTES else _cut(lens)
    return codes, [
        (a, b - a, b"".join((codes[a:b], pack(f"<{b - a}d", *times[a:b]),
                             pack(f"<{b - a}I", *lens[a:b]), *values[a:b])))
        for a, b in bounds
    ]  # fmt: skip


class Piece(NamedTuple):
    """Records of one stream packed as a chunk holds them, for ``Store.append_pieces``:
    ``count`` values, their lengths as u32 LE (``lens``) and the values back to back
    (``values``), all stamped ``time``. A job host's command job packs a pipe's lines into
    pieces with ``bytes`` operations (no Python object per line); the store joins them."""

    stream: StreamName
    records: int
    time: float
    lens: bytes
    values: bytes

    @classmethod
    def of(cls, stream: StreamName, values: Sequence[bytes], time: float) -> Piece:
        """A piece of ``values``, one record each."""
        lens = pack(f"<{len(values)}I", *map(len, values))
        return cls(stream, len(values), time, lens, b"".join(values))

    def cut(self, n: int) -> tuple[Piece, Piece]:
        """The first ``n`` records (0 < n < count), and the rest."""
        size = sum(unpack_from(f"<{n}I", self.lens))
        return (
            Piece(self.stream, n, self.time, self.lens[: 4 * n], self.values[:size]),
            Piece(self.stream, self.records - n, self.time, self.lens[4 * n :], self.values[size:]),
        )

    def fits(self) -> int:
        """How many of its first records fit in one chunk (at least 1)."""
        if self.records <= _CHUNK_RECORDS and len(self.values) <= _CHUNK_BYTES:
            return self.records
        lens = unpack_from(f"<{min(self.records, _CHUNK_RECORDS)}I", self.lens)
        return _cut(list(lens))[0][1]


def _chunks_of(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped (and cut) into chunks of at most ``_CHUNK_RECORDS`` records and
    ``_CHUNK_BYTES`` value bytes (or one bigger value)."""
    group: list[Piece] = []
    count = size = 0
    for piece in pieces:
        while piece.records:
            if group and (
                count + piece.records > _CHUNK_RECORDS or size + len(piece.values) > _CHUNK_BYTES
            ):
                yield group
                group, count, size = [], 0, 0
            n = piece.fits()
            head, piece = piece.cut(n) if n < piece.records else (piece, piece._replace(records=0))
            group.append(head)
            count += head.records
            size += len(head.values)
    if group:
        yield group


def _join(pieces: list[Piece]) -> bytes:
    """One chunk's ``data`` from its pieces: codes, times, lengths, values."""
    return b"".join(
        [
            *(bytes((_CODE[p.stream],)) * p.records for p in pieces),
            *(pack("<d", p.time) * p.records for p in pieces),
            *(p.lens for p in pieces),
            *(p.values for p in pieces),
        ]
    )


def _cut(lens: list[int]) -> list[tuple[int, int]]:
    """Bounds of chunks of at most ``_CHUNK_RECORDS`` records and ``_CHUNK_BYTES`` value bytes
    (or one bigger value)."""
    bounds: list[tuple[int, int]] = []
    lo = size = 0
    for i, length in enumerate(lens):
        if i > lo and (i - lo >= _CHUNK_RECORDS or size + length > _CHUNK_BYTES):
            bounds.append((lo, i))
            lo, size = i, 0
        size += length
    return [*bounds, (lo, len(lens))]


#: A record as ``read_rows`` gives it: ``(seq, stream, value, time)``, a plain tuple made by C.
Row = tuple[int, StreamName, bytes, float]


def _scan(conn: sqlite3.Connection, job_id: int, start: int) -> Generator[Iterator[Row]]:
    """Every record of a job from seq ``start`` on, an iterator of rows per chunk (who stops
    early reads little). The rows are made by C loops (``zip``, ``map``, ``slice``): no Python
    code runs per record."""
    cursor = conn.execute(_CHUNKS_FROM, (job_id, start))
    try:
        for first, n, data in cursor:
            i = max(0, start - first)
            stamps = unpack_from(f"<{n}d", data, n)
            ends = list(accumulate(unpack_from(f"<{n}I", data, 9 * n), initial=13 * n))
            values = map(data.__getitem__, map(slice, ends[i:n], ends[i + 1 :]))
            codes = map(_CODES.__getitem__, data[i:n])
            yield zip(range(first + i, first + n), codes, values, stamps[i:], strict=True)
    finally:
        cursor.close()


def _select(
    chunks: Generator[Iterator[Row]],
    want: Collection[str],
    cursors: dict[str, int] | None,
    bound: int | None,
) -> list[Row]:
    """At most ``bound`` records of streams ``want`` (only unreceived ones with ``cursors``;
    ``None``: every record from where the scan starts is wanted)."""
    with closing(chunks):
        if bound == 0:
            return []
        rows = chain.from_iterable(chunks)
        if cursors is None and len(want) == len(_CODES):
            return list(islice(rows, bound))
        out: list[Row] = []
        for row in rows:
            if row[1] in want and (cursors is None or row[0] >= cursors[row[1]]):
                out.append(row)
                if len(out) == bound:
                    break
        return out


def _unreceived_from(start: int, want: Collection[str], cursors: dict[str, int]) -> bool:
    """Whether every record of ``want`` from seq ``start`` on is unreceived (no filter needed)."""
    return all(cursors[s] <= start for s in want)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise JobArgumentError(f"limit={limit}: a limit is None or a count >= 0")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = NORMAL")  # why: see the module docstring
    return conn


@final
class _Checkpointer:
    """Copies the WAL into the database file in a thread of its own, so that a big append
    never waits for it: a passive checkpoint on its own connection, whenever the writer has
    added about ``_WAL_PAGES`` pages since the last one. The thread is started by the first
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
        if self.written >= _WAL_PAGES * 8192:
            self.written = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="asyncjobs checkpoint")
                self._thread.start()
            self._wake.set()

    def _run(self) -> None:
        with closing(_connect(self._path)) as conn:
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
            if frames - before < _WAL_PAGES // 8:
                break
            before = frames
        with self._writer_lock:
            conn.execute(checkpoint).fetchall()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()


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
        self._checkpointer = _Checkpointer(path, self._lock)

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
            store = cls(path, _connect(path))
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
            self._writer.execute(f"PRAGMA journal_size_limit = {_WAL_PAGES * 8192 * 4}")
        with self._writing() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                return
            if "meta" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a job store")
            query = "SELECT coalesce((SELECT value FROM meta WHERE key = 'schema_version'), 0)"
            (version,) = conn.execute(query).fetchone()
        if int(version) != SCHEMA_VERSION:
            newer = "a newer" if int(version) > SCHEMA_VERSION else "an older"
            raise StoreError(
                f"job store {self.path} has schema version {version}, written by {newer} "
                f"asyncjobs; this one reads version {SCHEMA_VERSION} only. Run the asyncjobs "
                "that wrote it, or move the file aside to start an empty store"
            )

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
                conn = _connect(self.path)
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
        r = conn.execute(_COUNTERS, (job_id,)).fetchone()
        if r is None:
            raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
        return r[0], dict(zip(_CODES, r[1:8], strict=True)), dict(zip(_CODES, r[8:], strict=True))

    @staticmethod
    def _set_counters(
        conn: sqlite3.Connection,
        job_id: int,
        cur: dict[str, int],
        pend: dict[str, int],
        dropped: int = 0,
    ) -> None:
        values = [v for s in _CODES for v in (cur[s], pend[s])]
        conn.execute(_SET_COUNTERS, (dropped, *values, job_id))

    # -- sessions ----------------------------------------------------------------------------

    def put_session(self, row: SessionRow) -> None:
        """Create or replace the session ``row.name``."""
        with self._writing() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?)", attrs.astuple(row)
            )

    def session(self, name: str) -> SessionRow | None:
        with self._reading() as conn:
            r = conn.execute("SELECT * FROM sessions WHERE name = ?", (name,)).fetchone()
        return None if r is None else SessionRow(*r)

    def sessions(self) -> list[SessionRow]:
        with self._reading() as conn:
            return [SessionRow(*r) for r in conn.execute("SELECT * FROM sessions ORDER BY name")]

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
    ) -> JobRow:  # fmt: skip
        """Add a job in ``state`` (``NotStarted`` unless given), named ``Job<id>`` unless
        ``name`` is given, with id ``job_id`` (from ``reserve_job_id``) or the next one. Ids are
        never reused, even after a delete (AUTOINCREMENT)."""
        if state not in _STATES:
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
        return JobRow(
            id=inserted, instance_id=instance_id, session=session, name=name, kind=kind,
            command=command, location=location, state=state, reason=None, exit_status=None,
            started_at=started_at, finished_at=None, next_seq=0, cursors=dict.fromkeys(_CODES, 0),
            dropped=0, pid=None, created_at=now,
        )  # fmt: skip

    def update_job(self, job_id: int, **fields: Any) -> JobRow:
        """Change some of ``state``, ``reason``, ``exit_status``, ``started_at``,
        ``finished_at``, ``pid`` and ``dropped``; return the row as it now is."""
        self._check_fields(fields)
        with self._writing() as conn:
            if fields:
                sets = ", ".join(f"{key} = ?" for key in fields)
                conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
            r = conn.execute(f"{_JOB} WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
            return _job_row(r)

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
            if key not in _FIELDS:
                raise JobArgumentError(
                    f"update_job: unknown field {key!r}; the fields are {', '.join(_FIELDS)}"
                )
            if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
                raise JobArgumentError(f"update_job: {key}={value!r} has the wrong type")
        if fields.get("state", "Running") not in _STATES:
            raise JobArgumentError(f"update_job: state={fields['state']!r} is not a JobState value")

    def job(self, job_id: int) -> JobRow | None:
        with self._reading() as conn:
            r = conn.execute(f"{_JOB} WHERE id = ?", (job_id,)).fetchone()
        return None if r is None else _job_row(r)

    def jobs_by_id(self, ids: Sequence[int]) -> list[JobRow | None]:
        """The rows of jobs ``ids``, in that order (None for a job that is not there), read in
        one transaction."""
        if not ids:
            return []
        wanted = sorted(set(ids))
        found: dict[int, JobRow] = {}
        with self._reading() as conn:
            for i in range(0, len(wanted), 500):  # far below SQLite's limit of parameters
                part = wanted[i : i + 500]
                query = f"{_JOB} WHERE id IN ({', '.join('?' * len(part))})"
                found.update((r[0], _job_row(r)) for r in conn.execute(query, part))
        return [found.get(job_id) for job_id in ids]

    def jobs(self, session: str | None = None) -> list[JobRow]:
        """Every job (of ``session``, if given), by id."""
        where, args = ("WHERE session = ?", (session,)) if session is not None else ("", ())
        with self._reading() as conn:
            return [_job_row(r) for r in conn.execute(f"{_JOB} {where} ORDER BY id", args)]

    def delete_job(self, job_id: int) -> None:
        """Delete a job and all its records (no error if it is gone)."""
        with self._writing() as conn:
            conn.execute("DELETE FROM chunks WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- records -----------------------------------------------------------------------------

    def append(self, job_id: int, records: Sequence[tuple[str, bytes, float]]) -> int:
        """Append ``(stream, value, time)`` records, seqs ``next_seq, next_seq + 1, ...``, in one
        transaction: once it returns they are acknowledged. Returns the new ``next_seq``."""
        try:
            codes, chunks = _pack(records) if records else (b"", [])
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
                conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", rows)
                self._checkpointer.written += sum(len(row[3]) for row in rows)
                conn.execute(_APPENDED, (end, *(codes.count(i) for i in range(7)), job_id))
        return end

    def append_pieces(self, job_id: int, pieces: Sequence[Piece]) -> int:
        """Append the records of ``pieces`` in order, like ``append`` (one transaction,
        acknowledged once it returns); returns the new ``next_seq``."""
        counts = [0] * len(_CODES)
        for piece in pieces:
            counts[_CODE[piece.stream]] += piece.records
        chunks = [(sum(p.records for p in group), _join(group)) for group in _chunks_of(pieces)]
        with self._writing() as conn:
            r = conn.execute("SELECT next_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                raise NoSuchJob(f"no job {job_id} in the job store {self.path}")
            rows, seq = [], r[0]
            for n, data in chunks:
                rows.append((job_id, seq, n, data))
                seq += n
            if rows:
                conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", rows)
                self._checkpointer.written += sum(len(row[3]) for row in rows)
                conn.execute(_APPENDED, (seq, *counts, job_id))
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
        want = stream_set(streams)
        _check_limit(limit)
        with self._reading() as conn:
            _, cursors, pending = self._counters(conn, job_id)
            if not unreceived_only:
                return _select(_scan(conn, job_id, from_seq), want, None, limit)
            bound = sum(pending[s] for s in want)
            start = max(from_seq, min((cursors[s] for s in want if pending[s]), default=0))
            bound = bound if limit is None else min(bound, limit)
            chosen = None if _unreceived_from(start, want, cursors) else cursors
            return _select(_scan(conn, job_id, start), want, chosen, bound)

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
        want = stream_set(streams)
        _check_limit(limit)
        with self._writing() as conn:
            next_seq, cursors, pending = self._counters(conn, job_id)
            bound = sum(pending[s] for s in want)
            start = min((cursors[s] for s in want if pending[s]), default=next_seq)
            bound = bound if limit is None else min(bound, limit)
            chosen = None if _unreceived_from(start, want, cursors) else cursors
            records = _select(_scan(conn, job_id, start), want, chosen, bound)
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
        want = stream_set(streams)
        with self._reading() as conn:
            pending = self._counters(conn, job_id)[2]
        return sum(pending[s] for s in want)

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
            start = min(cursors[s] for s in _CODES if pending[s])
            gone = _select(_scan(conn, job_id, start), _CODE, cursors, excess)
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
        states = f"state IN ({', '.join('?' * len(_ACTIVE))})"
        with self._writing() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {states}", _ACTIVE)]
            conn.execute(
                f"UPDATE jobs SET state = 'Failed', reason = ?, finished_at = ? WHERE {states}",
                (reason, time.time(), *_ACTIVE),
            )
        return sorted(ids)

    def statistics(self) -> StoreStatistics:
        with self._reading() as conn:
            (sessions,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
            jobs, records = conn.execute("SELECT count(*), total(next_seq) FROM jobs").fetchone()
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        size = sum(p.stat().st_size for p in files if p.exists())
        return StoreStatistics(sessions, jobs, int(records), size)
