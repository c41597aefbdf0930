"""The job host's store on a real SQLite file: sessions, jobs, the record log (keep reads,
receive-once takes, drop), permissions, schema versions, a concurrent reader, and a writer
SIGKILLed mid-append whose acknowledged records all survive."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import attrs
import pytest

from asyncjobs import STREAMS, JobArgumentError, NoSuchJob
from asyncjobs._core.state import JobState
from asyncjobs._host.records import HostJobInfo, InvokeHost
from asyncjobs._host.store import (
    SCHEMA_VERSION,
    Piece,
    SessionRow,
    Store,
    StoredRecord,
    StoreError,
    read_jobs,
)
from tests.conftest import python


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "host" / "store.db") as s:
        yield s


def new_job(store: Store, name: str | None = None, session: str = "s1") -> HostJobInfo:
    return store.new_job(
        session=session, name=name, kind="BackgroundJob", command="make all",
        location="build1", instance_id="0b7d",
    )  # fmt: skip


def stream_of(seq: int) -> str:
    return STREAMS[seq * 7 % 11 % 7]


def value_of(seq: int) -> bytes:
    """A value that depends on its seq, with NULs and bytes that are not UTF-8."""
    return seq.to_bytes(4, "big") + b"\x00\xff\xfe\n" * (seq % 5)


def rows(first: int, n: int) -> list[tuple[str, bytes, float]]:
    """Records ``first .. first + n - 1``, each made from its seq."""
    return [(stream_of(s), value_of(s), 1000.0 + s) for s in range(first, first + n)]


def stored(store: Store, job_id: int, column: str) -> object:
    """A column of a job's row as the file holds it (one the job record does not carry)."""
    with sqlite3.connect(store.path) as conn:
        (value,) = conn.execute(f"SELECT {column} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    conn.close()
    return value


def chunk_count(store: Store, job_id: int) -> int:
    with sqlite3.connect(store.path) as conn:
        (n,) = conn.execute("SELECT count(*) FROM chunks WHERE job = ?", (job_id,)).fetchone()
    conn.close()
    return int(n)


# -- sessions and jobs -------------------------------------------------------------------------


def test_sessions_round_trip(store: Store) -> None:
    a = SessionRow("nightly", "Opened", 3600.0, "block", 10.0)
    b = SessionRow("adhoc", "Disconnected", 60.0, "drop", 11.0, disconnected_at=12.5)
    store.put_session(a)
    store.put_session(b)
    assert store.session("nightly") == a
    assert store.sessions() == [b, a]  # by name
    closed = attrs.evolve(a, state="Closed")
    store.put_session(closed)
    assert store.session("nightly") == closed
    store.delete_session("nightly")
    store.delete_session("nightly")  # already gone: no error
    assert store.session("nightly") is None
    assert store.sessions() == [b]
    with pytest.raises(ValueError, match="state"):
        SessionRow("x", "Sleeping", 1.0, "block", 0.0)


def test_new_job_defaults_and_ids_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as store:
        first = new_job(store)
        assert (first.id, first.name, first.state.value, first.next_seq) == (
            1,
            "Job1",
            "NotStarted",
            0,
        )
        assert store.cursors(first.id) == dict.fromkeys(STREAMS, 0)
        assert (first.dropped, first.reason, first.exit_status) == (0, None, None)
        assert stored(store, first.id, "pid") is None and first.has_more_data  # not started yet
        assert first.session == "s1" and first.command == "make all" and first.location == "build1"
        second = new_job(store, name="build")
        assert (second.id, second.name) == (2, "build")
        store.append(second.id, rows(0, 3))
        store.delete_job(second.id)
        store.delete_job(second.id)  # already gone: no error
        assert store.job(second.id) is None
        assert chunk_count(store, second.id) == 0  # its records went with it
        assert new_job(store).id == 3
    with Store.open(path) as store:  # nor after a reopen
        assert new_job(store).id == 4
        assert [j.id for j in store.jobs()] == [1, 3, 4]


def test_jobs_by_session(store: Store) -> None:
    a, b, c = new_job(store, session="x"), new_job(store, session="y"), new_job(store, session="x")
    assert store.jobs("x") == [a, c]
    assert store.jobs("y") == [b]
    assert store.jobs("z") == []
    assert store.jobs() == [a, b, c]


def test_update_job(store: Store) -> None:
    job = new_job(store)
    row = store.update_job(job.id, state="Running", started_at=5.0, pid=4242)
    assert (row.state.value, row.started_at, stored(store, job.id, "pid")) == ("Running", 5.0, 4242)
    row = store.update_job(
        job.id, state="Failed", reason="boom", exit_status=2, finished_at=6, dropped=3
    )
    assert row == store.job(job.id)
    assert (row.state.value, row.reason, row.exit_status, row.finished_at, row.dropped) == (
        "Failed", "boom", 2, 6.0, 3,
    )  # fmt: skip
    assert store.update_job(job.id) == row
    with pytest.raises(ValueError, match=r"unknown field 'next_seq'.*state, reason"):
        store.update_job(job.id, next_seq=9)
    with pytest.raises(JobArgumentError, match="exit_status='2' has the wrong type"):
        store.update_job(job.id, exit_status="2")
    with pytest.raises(JobArgumentError, match="'Exploded' is not a JobState value"):
        store.update_job(job.id, state="Exploded")
    with pytest.raises(NoSuchJob, match="no job 99 in the job store"):
        store.update_job(99, state="Running")
    assert store.job(job.id) == row


def test_set_job_and_new_job_rows_match_what_is_stored(store: Store) -> None:
    reserved = store.reserve_job_id()
    row = store.new_job(
        session="s1", kind="BackgroundJob", command="c", location="here", instance_id="x",
        job_id=reserved, state="Running", started_at=3.0,
    )  # fmt: skip
    assert row == store.job(reserved) and row.name == f"Job{reserved}"
    assert new_job(store) == store.job(reserved + 1)  # named after the insert
    store.set_job(reserved, state="Completed", exit_status=0, finished_at=4.0)
    done = store.job(reserved)
    assert done is not None and (done.state.value, done.exit_status, done.finished_at) == (
        "Completed", 0, 4.0,
    )  # fmt: skip
    store.set_job(reserved)  # nothing to change: fine
    with pytest.raises(JobArgumentError, match="'Exploded' is not a JobState value"):
        store.set_job(reserved, state="Exploded")
    with pytest.raises(NoSuchJob, match="no job 99 in the job store"):
        store.set_job(99, state="Running")


# -- the record log ----------------------------------------------------------------------------


def test_append_assigns_seqs_and_read_keeps(store: Store) -> None:
    job = new_job(store)
    assert store.append(job.id, [("output", b"a", 1.5), ("error", b"e", 2.5)]) == 2
    assert store.append(job.id, []) == 2
    assert store.append(job.id, [("output", b"b", 3.5)]) == 3
    everything = store.read(job.id)
    assert everything == [
        StoredRecord(0, "output", b"a", 1.5),
        StoredRecord(1, "error", b"e", 2.5),
        StoredRecord(2, "output", b"b", 3.5),
    ]
    assert store.read(job.id, 1) == everything[1:]
    assert store.read(job.id, 5) == []
    assert store.read(job.id, streams=["output"]) == [everything[0], everything[2]]
    assert store.read(job.id, streams="error") == [everything[1]]
    assert store.read(job.id, limit=2) == everything[:2]
    assert store.read(job.id, limit=0) == []
    assert store.read(job.id) == everything  # keep: nothing moved
    assert store.job(job.id).next_seq == 3  # type: ignore[union-attr]
    with pytest.raises(JobArgumentError, match="unknown stream"):
        store.read(job.id, streams=["stdout"])
    with pytest.raises(JobArgumentError, match="limit=-1"):
        store.read(job.id, limit=-1)
    with pytest.raises(NoSuchJob):
        store.read(99)


def test_values_are_any_bytes(store: Store) -> None:
    job = new_job(store)
    values = [b"", b"\x00", b"\xff\xfe\xfd", b"a\nb\r\n", bytes(range(256)), b"\x00" * (3 << 20)]
    store.append(job.id, [("output", v, 0.0) for v in values])
    assert [r.value for r in store.read(job.id)] == values
    assert chunk_count(store, job.id) == 2  # the 3 MiB value has a chunk of its own


def test_bad_records_are_refused_and_nothing_is_stored(store: Store) -> None:
    job = new_job(store)
    store.append(job.id, [("output", b"ok", 0.0)])
    for bad in (
        [("output", b"x", 0.0), ("stdout", b"y", 0.0)],
        [("output", "text", 0.0)],
        [("output", b"x")],
        [("output", b"x", "now")],
    ):
        with pytest.raises(JobArgumentError, match=f"append to job {job.id}"):
            store.append(job.id, bad)  # type: ignore[arg-type]
    with pytest.raises(NoSuchJob, match="no job 99"):
        store.append(99, [("output", b"x", 0.0)])
    assert [r.value for r in store.read(job.id)] == [b"ok"]
    assert store.unreceived(job.id) == 1


def test_big_batches_are_cut_into_chunks_and_read_from_any_seq(store: Store) -> None:
    job = new_job(store)
    store.append(job.id, rows(0, 10_000))
    assert chunk_count(store, job.id) == 3  # at most 4,096 records per chunk
    rng = random.Random(5)
    for _ in range(30):  # many more batches of every size
        n = store.job(job.id).next_seq  # type: ignore[union-attr]
        store.append(job.id, rows(n, rng.choice((1, 2, 7, 50, 333))))
    total = store.job(job.id).next_seq  # type: ignore[union-attr]
    everything = store.read(job.id)
    assert [r.seq for r in everything] == list(range(total))
    assert all(
        (r.stream, r.value, r.time) == (stream_of(r.seq), value_of(r.seq), 1000.0 + r.seq)
        for r in everything
    )
    for start in [*range(0, 20), *rng.sample(range(total), 200), total - 1, total]:
        limit = rng.choice((None, 1, 5, 5000))
        streams = rng.choice((None, ["error"], ["output", "progress"]))
        expected = [r for r in everything[start:] if streams is None or r.stream in streams][:limit]
        assert store.read(job.id, start, streams=streams, limit=limit) == expected


def test_take_receives_once_by_stream(store: Store) -> None:
    job = new_job(store)
    store.append(job.id, [("output", b"o0", 0), ("warning", b"w0", 0), ("output", b"o1", 0)])
    assert store.unreceived(job.id) == 3
    assert store.unreceived(job.id, ["warning"]) == 1
    assert [r.value for r in store.take(job.id, ["output"], limit=1)] == [b"o0"]
    assert [r.value for r in store.read(job.id, unreceived_only=True)] == [b"w0", b"o1"]
    assert [r.value for r in store.take(job.id, ["output"])] == [b"o1"]
    assert store.take(job.id, ["output"]) == []
    assert store.cursors(job.id)["output"] == 3
    assert store.unreceived(job.id) == 1
    assert [r.value for r in store.take(job.id)] == [b"w0"]
    assert store.unreceived(job.id) == 0
    assert len(store.read(job.id)) == 3  # keep readers still see everything


class Model:
    """The record log as a plain list and a set of received seqs."""

    def __init__(self) -> None:
        self.records: list[StoredRecord] = []
        self.received: set[int] = set()
        self.dropped = 0

    def unreceived(self, streams: Collection[str]) -> list[StoredRecord]:
        return [r for r in self.records if r.stream in streams and r.seq not in self.received]

    def take(self, streams: Collection[str], limit: int | None) -> list[StoredRecord]:
        out = self.unreceived(streams)[:limit]
        self.received.update(r.seq for r in out)
        return out

    def drop(self, keep: int) -> int:
        pending = self.unreceived(set(STREAMS))
        gone = pending[: max(0, len(pending) - keep)]
        self.received.update(r.seq for r in gone)
        self.dropped += len(gone)
        return len(gone)


def test_take_read_drop_against_a_model(store: Store) -> None:
    rng = random.Random(1234)
    job = new_job(store)
    model = Model()
    taken: list[int] = []
    for _ in range(600):
        streams = set(rng.sample(STREAMS, rng.randint(1, 7)))
        limit = rng.choice((None, 0, 1, 2, 3, 10, 100))
        op = rng.random()
        if op < 0.35:
            n = len(model.records)
            batch = [
                (rng.choice(STREAMS[:3] if rng.random() < 0.8 else STREAMS), value_of(s), s / 10)
                for s in range(n, n + rng.randint(1, 40))
            ]
            assert store.append(job.id, batch) == n + len(batch)
            model.records += [StoredRecord(n + i, *r) for i, r in enumerate(batch)]
        elif op < 0.75:
            got = store.take(job.id, streams, limit)
            assert got == model.take(streams, limit)
            taken += [r.seq for r in got]
        elif op < 0.95:
            start = rng.randint(0, len(model.records) + 1)
            expected = [r for r in model.unreceived(streams) if r.seq >= start][:limit]
            got = store.read(job.id, start, streams=streams, limit=limit, unreceived_only=True)
            assert got == expected
        else:
            keep = rng.randint(0, 30)
            assert store.drop_oldest(job.id, keep) == model.drop(keep)
        assert store.unreceived(job.id, streams) == len(model.unreceived(streams))
    assert store.read(job.id) == model.records  # keep semantics: everything is still there
    taken += [r.seq for r in store.take(job.id)]
    assert len(taken) == len(set(taken))  # nothing twice
    row = store.job(job.id)
    assert row is not None and row.dropped == model.dropped
    assert len(taken) + model.dropped == row.next_seq  # nothing skipped
    assert store.unreceived(job.id) == 0


def test_drop_oldest(store: Store) -> None:
    job = new_job(store)
    store.append(job.id, [(s, s.encode(), 0) for s in ("output", "error", "output", "warning")])
    store.append(job.id, [("output", b"late", 0)])
    assert store.drop_oldest(job.id, keep=10) == 0
    store.take(job.id, ["error"])
    assert store.drop_oldest(job.id, keep=2) == 2  # output@0 and output@2; error was received
    row = store.job(job.id)
    assert row is not None and row.dropped == 2
    assert [r.value for r in store.take(job.id)] == [b"warning", b"late"]
    assert store.drop_oldest(job.id, keep=0) == 0
    store.append(job.id, [("verbose", b"v", 0), ("debug", b"d", 0)])
    assert store.drop_oldest(job.id, keep=0) == 2
    assert store.job(job.id).dropped == 4  # type: ignore[union-attr]
    assert store.take(job.id) == []
    assert len(store.read(job.id)) == 7  # the bytes stay for keep readers
    with pytest.raises(JobArgumentError, match="keep=-1"):
        store.drop_oldest(job.id, keep=-1)


def test_reopen_keeps_records_and_cursors(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as store:
        job = new_job(store)
        store.append(job.id, rows(0, 100))
        store.take(job.id, ["output"], limit=3)
        before, records = store.job(job.id), store.read(job.id)
    with Store.open(path) as store:
        assert store.job(job.id) == before
        assert store.read(job.id) == records
        assert store.append(job.id, rows(100, 1)) == 101


# -- the file ----------------------------------------------------------------------------------


def test_file_and_directory_permissions(tmp_path: Path) -> None:
    path = tmp_path / "private" / "store.db"
    old = os.umask(0)  # even a permissive umask must not widen them
    try:
        with Store.open(path) as store:
            store.append(new_job(store).id, [("output", b"x", 0.0)])
            files = (path.parent, *path.parent.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    finally:
        os.umask(old)
    assert modes == {
        "private": 0o700, "store.db": 0o600, "store.db-wal": 0o600, "store.db-shm": 0o600
    }  # fmt: skip
    path.chmod(0o644)
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    newer = (
        f"schema version 99, written by a newer asyncjobs; this one reads version {SCHEMA_VERSION}"
    )
    with pytest.raises(StoreError, match=newer):
        Store.open(path)


def test_files_that_are_not_stores(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        Store.open(garbage)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="an SQLite database but not a job store"):
        Store.open(other)


#: The schema of version 1 as the asyncjobs of issue 9 wrote it, written out (not made from
#: ``schema.SCHEMA``): a store on disk from then must open and read the same.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (name TEXT PRIMARY KEY, state TEXT NOT NULL, idle_timeout REAL NOT NULL,
    output_buffering TEXT NOT NULL, created_at REAL NOT NULL, disconnected_at REAL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL,
    session TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, command TEXT NOT NULL,
    location TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, exit_status INTEGER,
    started_at REAL, finished_at REAL, next_seq INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0, pid INTEGER, created_at REAL NOT NULL,
    c_output INTEGER NOT NULL DEFAULT 0, c_error INTEGER NOT NULL DEFAULT 0,
    c_warning INTEGER NOT NULL DEFAULT 0, c_verbose INTEGER NOT NULL DEFAULT 0,
    c_debug INTEGER NOT NULL DEFAULT 0, c_information INTEGER NOT NULL DEFAULT 0,
    c_progress INTEGER NOT NULL DEFAULT 0, n_output INTEGER NOT NULL DEFAULT 0,
    n_error INTEGER NOT NULL DEFAULT 0, n_warning INTEGER NOT NULL DEFAULT 0,
    n_verbose INTEGER NOT NULL DEFAULT 0, n_debug INTEGER NOT NULL DEFAULT 0,
    n_information INTEGER NOT NULL DEFAULT 0, n_progress INTEGER NOT NULL DEFAULT 0);
CREATE INDEX jobs_by_session ON jobs (session);
CREATE TABLE chunks (job INTEGER NOT NULL, first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job, first_seq));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO sessions VALUES ('cli', 'Disconnected', 604800.0, 'block', 10.0, 11.0);
INSERT INTO jobs (id, instance_id, session, name, kind, command, location, state, reason,
    exit_status, started_at, finished_at, next_seq, pid, created_at, c_output, n_output,
    n_error)
    VALUES (7, '0b7d', 'cli', 'build', 'BackgroundJob', 'make', 'here', 'Failed', 'boom', 2,
    1.0, 2.0, 3, 4242, 0.5, 1, 1, 1);
"""
# One chunk of three records (seqs 0-2: output, output, error), as version 1 packed them:
# stream codes (u8), times (f64 LE), value lengths (u32 LE), the values.
V1_CHUNK = (
    bytes([0, 0, 1]) + struct.pack("<3d", 1.0, 1.5, 2.0) + struct.pack("<3I", 1, 2, 3) + b"abbccc"
)


def test_a_store_written_by_schema_version_1_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO chunks VALUES (7, 0, 3, ?)", (V1_CHUNK,))
    conn.close()
    with Store.open(path) as store:
        assert store.sessions() == [
            SessionRow("cli", "Disconnected", 604800.0, "block", 10.0, 11.0)
        ]
        job = store.job(7)
        assert job == HostJobInfo(
            id=7, name="build", kind="BackgroundJob", command="make", location="here",
            session="cli", state=JobState.FAILED, has_more_data=True, reason="boom",
            exit_status=2, started_at=1.0, finished_at=2.0, next_seq=3, dropped=0,
            instance_id="0b7d",
        )  # fmt: skip
        assert [tuple(r) for r in store.read(7)] == [
            (0, "output", b"a", 1.0), (1, "output", b"bb", 1.5), (2, "error", b"ccc", 2.0)
        ]  # fmt: skip
        assert store.cursors(7)["output"] == 1 and store.unreceived(7) == 2
        assert [r.value for r in store.take(7)] == [b"bb", b"ccc"]
        assert store.job(7).has_more_data is False  # type: ignore[union-attr]
        assert store.append(7, [("output", b"d", 3.0)]) == 4
        assert read_jobs(path) == store.jobs()


def test_a_version_1_store_is_migrated_to_record_invokes(tmp_path: Path) -> None:
    """Version 2 added ``invoke_hosts``: a version-1 store gains it when it opens (its jobs
    as they were), and then records invokes like a new one."""
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    conn.close()
    with Store.open(path) as store:
        assert [j.id for j in store.jobs()] == [7] and store.invoke_hosts() is None
        hosts = [InvokeHost("web01", "Completed", 0), InvokeHost("ops@web02:2222", "Failed", 3)]
        info = store.record_invoke(
            session="cli", command="uptime", location="web[01-02]", instance_id="i",
            state="Failed", exit_status=3, hosts=hosts, started_at=1.0, finished_at=2.0,
        )  # fmt: skip
        assert info.id == 8 and info.name == "Job8" and info.kind == "RemoteJob"
        assert (info.state, info.command, info.location) == (
            JobState.FAILED,
            "uptime",
            "web[01-02]",
        )
        assert info.has_more_data is False
        assert store.invoke_hosts() == store.invoke_hosts(8) == (8, hosts)
        assert [h.host for h in hosts if h.failed] == ["ops@web02:2222"]
        assert store.invoke_hosts(7) is None and store.invoke_hosts(99) is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()
    with Store.open(path) as store:  # reopened: version 2 now, its invoke still there
        assert store.invoke_hosts() == (8, hosts)
        newer = store.record_invoke(
            session="cli", command="true", location="web01", instance_id="j",
            state="Completed", hosts=hosts[:1], started_at=3.0, finished_at=4.0,
        )  # fmt: skip
        assert store.invoke_hosts() == (newer.id, hosts[:1])
        store.delete_job(newer.id)  # asyncjobs remove: its hosts go with it
        assert store.invoke_hosts() == (8, hosts)
        assert read_jobs(path) == store.jobs()


def test_rows_are_read_by_column_name(tmp_path: Path) -> None:
    """A jobs table whose columns come in another order (as a migration might leave them)
    reads the same: nothing is taken by position."""
    path = tmp_path / "store.db"
    head, rest = V1_SCHEMA.split("CREATE TABLE jobs (", 1)
    columns, tail = rest.split(");", 1)
    parts = [c.strip() for c in columns.replace("\n", " ").split(",")]
    shuffled = [parts[0], *reversed(parts[1:])]
    with sqlite3.connect(path) as conn:
        conn.executescript(f"{head}CREATE TABLE jobs ({', '.join(shuffled)});{tail}")
    conn.close()
    with Store.open(path) as store:
        job = store.job(7)
        assert job is not None
        assert (job.name, job.kind, job.command, job.location, job.session) == (
            "build", "BackgroundJob", "make", "here", "cli"
        )  # fmt: skip
        assert (job.state, job.reason, job.exit_status, job.next_seq) == (
            JobState.FAILED, "boom", 2, 3,
        )  # fmt: skip
        assert (job.started_at, job.finished_at, job.instance_id) == (1.0, 2.0, "0b7d")
        assert store.cursors(7)["output"] == 1 and store.unreceived(7) == 2
        new = new_job(store)
        assert store.job(new.id) == new


def test_has_more_data_while_active_or_unreceived(store: Store) -> None:
    job = new_job(store)
    assert job.has_more_data and store.job(job.id).has_more_data  # type: ignore[union-attr]
    done = store.update_job(job.id, state="Completed", exit_status=0)
    assert done.state is JobState.COMPLETED and not done.has_more_data
    store.append(job.id, rows(0, 2))
    assert store.job(job.id).has_more_data  # type: ignore[union-attr]
    store.take(job.id)
    assert not store.job(job.id).has_more_data  # type: ignore[union-attr]


def test_read_jobs_reads_without_a_store(tmp_path: Path) -> None:
    """What the command line's fast path reads: the same records, nothing created."""
    path = tmp_path / "host" / "store.db"
    with pytest.raises(StoreError, match="can't read the job store"):
        read_jobs(path)
    assert not path.parent.exists()
    with Store.open(path) as store:
        new_job(store)
        store.update_job(new_job(store, name="b").id, state="Failed", reason="x")
        assert read_jobs(path) == store.jobs()
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        read_jobs(path)


def test_closed_store_and_repr(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store.db")
    assert repr(store) == f"<asyncjobs.Store {str(tmp_path / 'store.db')!r} open>"
    job = new_job(store)
    store.append(job.id, rows(0, 5))
    store.put_session(SessionRow("s1", "Opened", 1.0, "block", 0.0))
    stats = store.statistics()
    assert (stats.sessions, stats.jobs, stats.records) == (1, 1, 5) and stats.file_bytes > 0
    store.close()
    assert repr(store).endswith("closed>")
    with pytest.raises(StoreError, match="is closed"):
        store.read(job.id)
    with pytest.raises(StoreError, match="is closed"):
        store.append(job.id, [])


def test_a_second_connection_reads_while_the_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as writer, Store.open(path) as reader:
        job = new_job(writer)
        snapshot = sqlite3.connect(path, isolation_level=None)
        snapshot.execute("BEGIN")
        assert snapshot.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
        writer.append(job.id, rows(0, 10))  # an open reader does not block it
        assert snapshot.execute("SELECT count(*) FROM chunks").fetchone() == (0,)  # its snapshot
        snapshot.execute("COMMIT")
        assert snapshot.execute("SELECT count(*) FROM chunks").fetchone() == (1,)
        snapshot.close()
        assert reader.read(job.id) == writer.read(job.id)
        assert len(reader.read(job.id)) == 10
        assert reader.job(job.id) == writer.job(job.id)


def test_threads_append_and_read_at_once(store: Store) -> None:
    job = new_job(store)
    done = threading.Event()

    def produce() -> None:
        for i in range(200):
            store.append(job.id, rows(i * 5, 5))
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        while not done.is_set():
            seqs = [r.seq for r in store.read(job.id)]
            assert seqs == list(range(len(seqs))) and len(seqs) % 5 == 0  # whole batches
            store.take(job.id, limit=7)
    finally:
        thread.join()
    assert store.job(job.id).next_seq == 1000  # type: ignore[union-attr]
    assert [(r.stream, r.value, r.time) for r in store.read(job.id)] == rows(0, 1000)


def test_concurrent_takers_never_share_a_record(store: Store) -> None:
    """Receive-once is global: two consumers taking at once split the records between them."""
    job = new_job(store)
    got: list[list[int]] = [[], []]
    produced = threading.Event()

    def consume(mine: list[int]) -> None:
        while True:
            last = produced.is_set()
            mine += [r.seq for r in store.take(job.id, limit=3)]
            if last and store.unreceived(job.id) == 0:
                return

    threads = [threading.Thread(target=consume, args=(g,)) for g in got]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            store.append(job.id, rows(i * 7, 7))
    finally:
        produced.set()
        for t in threads:
            t.join()
    assert sorted(got[0] + got[1]) == list(range(700))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])


# -- crash safety ------------------------------------------------------------------------------

WRITER = """
    import random, sys
    from pathlib import Path
    from asyncjobs import STREAMS
    from asyncjobs._host.store import Store

    def rows(first, n):  # as in test_store.py
        return [(STREAMS[s * 7 % 11 % 7], s.to_bytes(4, "big") + b"\\x00\\xff\\xfe\\n" * (s % 5),
                 1000.0 + s) for s in range(first, first + n)]

    store = Store.open(Path(sys.argv[1]))
    job_id = int(sys.argv[2])
    n = store.job(job_id).next_seq
    rng = random.Random(n)
    while True:
        n = store.append(job_id, rows(n, rng.randint(1, 300)))
        print(n, flush=True)
"""


def test_sigkill_mid_append_loses_no_acknowledged_record(
    tmp_path: Path, reap_pids: list[int]
) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as store:
        job = new_job(store)
        store.update_job(job.id, state="Running", pid=os.getpid())
        done = new_job(store)
        store.update_job(done.id, state="Completed")
    acked = 0
    for round_ in range(3):
        child = subprocess.Popen(
            [*python(WRITER), str(path), str(job.id)], stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        reap_pids.append(child.pid)
        assert child.stdout is not None
        printed = [int(child.stdout.readline()) for _ in range(40 + 30 * round_)]
        time.sleep(0.003 * round_)  # not a wait: the kill lands at a different moment each round
        os.kill(child.pid, signal.SIGKILL)  # while it goes on appending
        child.wait()
        child.stdout.close()
        assert printed == sorted(printed) and printed[0] > acked
        acked = printed[-1]
        with Store.open(path) as store:
            row = store.job(job.id)
            assert row is not None and row.next_seq >= acked  # every acknowledged record
            records = store.read(job.id)
            assert [r.seq for r in records] == list(range(row.next_seq))
            assert [(r.stream, r.value, r.time) for r in records] == rows(0, row.next_seq)
            assert store.unreceived(job.id) == row.next_seq
            acked = row.next_seq
    with Store.open(path) as store:
        assert store.recover("the job host died") == [job.id]
        row = store.job(job.id)
        assert row is not None
        assert (row.state.value, row.reason) == ("Failed", "the job host died")
        assert row.finished_at is not None
        assert store.job(done.id).state.value == "Completed"  # type: ignore[union-attr]
        assert store.recover("again") == []


def test_recover_fails_every_active_state(store: Store) -> None:
    states = ["NotStarted", "Running", "Stopping", "Blocked", "Disconnected", "Suspended",
              "Suspending", "Completed", "Failed", "Stopped"]  # fmt: skip
    ids = {}
    for state in states:
        ids[state] = new_job(store).id
        store.update_job(ids[state], state=state, reason="old" if state == "Failed" else None)
    assert store.recover("host died") == [ids[s] for s in states[:7]]
    found = {s: store.job(i) for s, i in ids.items()}
    after = {s: job for s, job in found.items() if job is not None}
    assert all(
        after[s].state.value == "Failed" and after[s].reason == "host died" for s in states[:7]
    )
    assert [after[s].state.value for s in states[7:]] == ["Completed", "Failed", "Stopped"]
    assert after["Failed"].reason == "old"


def test_append_pieces_stores_what_append_would(store: Store) -> None:
    rng = random.Random(7)
    one, other = new_job(store), new_job(store)
    for _ in range(40):
        n = rng.choice((1, 3, 700, 5000))
        stream = rng.choice(("output", "error", "warning"))
        values = [rng.randbytes(rng.choice((0, 1, 90, 3000))) for _ in range(n)]
        if rng.random() < 0.05:
            values[0] = b"v" * (1 << 20) + b"v"  # bigger than a chunk: one of its own
        t = rng.random() * 1000
        store.append_pieces(one.id, [Piece.of(stream, values, t)])  # type: ignore[arg-type]
        store.append(other.id, [(stream, v, t) for v in values])
    strip = [(r.seq, r.stream, r.value, r.time) for r in store.read(one.id)]
    assert strip == [(r.seq, r.stream, r.value, r.time) for r in store.read(other.id)]
    assert store.unreceived(one.id) == store.unreceived(other.id) == len(strip)
    assert store.append_pieces(one.id, []) == len(strip)
    piece = Piece.of("output", [b"a", b"bc", b"def"], 1.0)
    head, tail = piece.cut(2)
    assert (head.records, head.values, tail.records, tail.values) == (2, b"abc", 1, b"def")


def test_the_wal_is_checkpointed_by_a_thread_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as store:
        job = new_job(store)
        value = b"x" * 999
        for _ in range(100):  # 100 MB: a dozen checkpoints' worth
            store.append_pieces(job.id, [Piece.of("output", [value] * 1000, 0.0)])
        assert store._checkpointer._thread is not None
        wal = path.with_name("store.db-wal").stat().st_size
        assert wal < 80_000_000  # reused after each checkpoint (without them: over 100 MB)
        thread = store._checkpointer._thread
    assert not thread.is_alive()  # joined by close
    with Store.open(path) as store:
        assert store.job(job.id).next_seq == 100_000  # type: ignore[union-attr]
        assert store.read(job.id, 99_999)[0].value == value
    assert path.stat().st_size >= 100_000_000  # the records reached the database file


def test_jobs_by_id_keeps_order_duplicates_and_gaps(store: Store) -> None:
    rows = [new_job(store, name=f"j{i}") for i in range(1203)]  # more than one IN (...) batch
    wanted = [rows[1200].id, 99_999, rows[0].id, rows[0].id, *(r.id for r in rows[500:510])]
    got = store.jobs_by_id(wanted)
    assert [None if r is None else r.name for r in got] == [
        "j1200",
        None,
        "j0",
        "j0",
        *(f"j{i}" for i in range(500, 510)),
    ]
    assert got[0] == store.job(rows[1200].id)
    assert store.jobs_by_id([]) == []
    assert [r.id for r in store.jobs_by_id([r.id for r in rows]) if r] == [r.id for r in rows]
