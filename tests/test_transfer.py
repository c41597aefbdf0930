"""``JobManager.copy`` and ``JobManager.gather`` (issue 14 item 5) against real sshd: a child per
host with progress records, scp's placing rules, ``recursive``, ``preserve``, per-host failures,
and the gather core's guarantees (patterns, symlinks, ``max_bytes``, no name leaving the host's
directory).

The test hosts share one file system (they all run on this machine), so ``SftpHosts`` starts
each host's SFTP sessions in a directory of its own (``internal-sftp -d``): a relative path
names a different place on each host, as it would on real machines, and one host's directory
can be read-only while the others' are not.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest

import asyncjobs
from asyncjobs import ConnectionFailed, JobArgumentError, JobManager, JobState, Progress
from asyncjobs._core.models import StreamName
from tests.testhosts import TestHosts

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
    pytest.mark.usefixtures("no_leftovers"),
]


class SftpHosts(TestHosts):
    """Test hosts whose SFTP sessions start in ``roots[i]`` (``internal-sftp -d``)."""

    def __init__(self, count: int, roots: list[Path]) -> None:
        super().__init__(count, load=True)
        self.roots = roots

    def _config_text(self, s: Any) -> str:
        text = super()._config_text(s)
        line = "Subsystem sftp internal-sftp"
        assert line in text, "the test hosts' sshd config changed: update SftpHosts"
        return text.replace(line, f"{line} -d {self.roots[s.index]}")


def _give_to_test_user(path: Path, username: str) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(username)
        os.chown(path, pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope="session")
def sftp_hosts() -> Iterator[SftpHosts]:
    top = Path(tempfile.mkdtemp(prefix="asyncjobs-sftp-"))
    top.chmod(0o755)
    roots = [top / f"host{i}" for i in range(3)]
    for root in roots:
        root.mkdir()
    with SftpHosts(3, roots) as hosts:
        for root in roots:
            _give_to_test_user(root, hosts.username)
        yield hosts
    shutil.rmtree(top, ignore_errors=True)


class Area:
    """A fresh relative directory name, made in every host's root (owned by the test user)."""

    def __init__(self, hosts: SftpHosts) -> None:
        self.hosts = hosts
        self.name = f"t{uuid.uuid4().hex[:8]}"
        for root in hosts.roots:
            (root / self.name).mkdir()
            _give_to_test_user(root / self.name, hosts.username)

    def on(self, i: int, *parts: str) -> Path:
        """Host ``i``'s view of ``name/parts``."""
        return self.hosts.roots[i].joinpath(self.name, *parts)

    def put(self, i: int, relative: str, data: bytes = b"x", mode: int = 0o644) -> Path:
        """A file on host ``i`` (its directories made), owned by the test user."""
        path = self.on(i, relative)
        for parent in reversed(path.relative_to(self.on(i)).parents):
            directory = self.on(i) / parent
            if not directory.exists():
                directory.mkdir()
                _give_to_test_user(directory, self.hosts.username)
        path.write_bytes(data)
        path.chmod(mode)
        _give_to_test_user(path, self.hosts.username)
        return path


@pytest.fixture
def area(sftp_hosts: SftpHosts) -> Iterator[Area]:
    made = Area(sftp_hosts)
    yield made
    for root in sftp_hosts.roots:
        target = root / made.name
        for path in [target, *target.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)


def opts(hosts: TestHosts) -> dict[str, Any]:
    return dict(hosts.ssh_options())


async def records(job: asyncjobs.Job, stream: StreamName) -> list[Any]:
    return [r.value for r in await job.receive_records(keep=True, streams=[stream])]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port nobody may connect to: ``accepted`` says whether anyone did."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def accepted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# -- copy --------------------------------------------------------------------------------------


async def test_copy_a_file_to_every_host_with_progress(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    source.chmod(0o640)
    async with JobManager() as jobs:
        parent = await jobs.copy(sftp_hosts.targets, source, area.name, **opts(sftp_hosts))
        await parent.wait()
    assert parent.state is JobState.COMPLETED, [c.reason for c in parent.children]
    assert [c.location for c in parent.children] == [
        f"127.0.0.1:{h.port}" for h in sftp_hosts.hosts
    ]
    for i, child in enumerate(parent.children):
        copied = area.on(i, "blob.bin")
        assert copied.read_bytes() == data
        assert stat.S_IMODE(copied.stat().st_mode) == 0o640  # its mode (umask 022: kept)
        progress = await records(child, "progress")
        assert all(isinstance(p, Progress) for p in progress) and len(progress) >= 2
        assert (progress[0].current, progress[-1].current) == (0, len(data))
        assert {p.total for p in progress} == {len(data)} and progress[-1].percent == 100.0
        assert await records(child, "output") == [
            {"source": str(source), "destination": f"{area.name}/blob.bin", "bytes": len(data)}
        ]
    assert not list(area.on(0).glob(".*"))  # no temporary file left behind


async def test_copy_places_things_as_scp_does(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    one = tmp_path / "one.txt"
    one.write_text("one\n")
    tree = tmp_path / "tree"
    (tree / "deep").mkdir(parents=True)
    (tree / "deep" / "f").write_text("f\n")
    hosts = sftp_hosts.targets[:1]
    async with JobManager() as jobs:

        async def copy(sources: Any, dest: str, **kw: Any) -> asyncjobs.Job:
            job = await jobs.copy(hosts, sources, f"{area.name}/{dest}", **kw, **opts(sftp_hosts))
            await job.wait()
            return job.children[0]

        assert (await copy(one, "renamed.txt")).state is JobState.COMPLETED  # a new name
        assert area.on(0, "renamed.txt").read_text() == "one\n"
        assert (await copy(one, "renamed.txt")).state is JobState.COMPLETED  # replaced whole
        assert (await copy([one, tree], "made/", recursive=True)).state is JobState.COMPLETED
        assert area.on(0, "made", "one.txt").is_file()  # a trailing / is a directory, made
        assert area.on(0, "made", "tree", "deep", "f").read_text() == "f\n"
        assert (await copy(tree, "copy-of-tree", recursive=True)).state is JobState.COMPLETED
        assert area.on(0, "copy-of-tree", "deep", "f").is_file()  # it becomes the destination
        several = await copy([one, tree], "missing", recursive=True)
        assert several.state is JobState.FAILED and several.exit_status == 1
        assert f"{area.name}/missing does not exist; several sources" in str(several.reason)
        onto = await copy(tree, "renamed.txt", recursive=True)
        assert "exists and is not a directory" in str(onto.reason)


async def test_copy_recursive_with_preserve_keeps_mode_and_times(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    tree = tmp_path / "site"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text("#!/bin/sh\n")
    (tree / "bin" / "run").chmod(0o751)
    (tree / "index.html").write_text("<p>hi</p>\n")
    (tree / "link-to-file").symlink_to("index.html")
    (tree / "link-to-dir").symlink_to("bin")
    old = 1_000_000_000  # 2001
    for path in (tree / "bin" / "run", tree / "index.html", tree / "bin", tree):
        os.utime(path, (old, old))
    async with JobManager() as jobs:
        kept = await jobs.copy(
            sftp_hosts.targets[:1], tree, f"{area.name}/kept", recursive=True, preserve=True,
            **opts(sftp_hosts),
        )  # fmt: skip
        plain = await jobs.copy(
            sftp_hosts.targets[1:2], tree, f"{area.name}/plain", recursive=True,
            **opts(sftp_hosts),
        )  # fmt: skip
        await jobs.wait(kept, plain)
    assert kept.state is plain.state is JobState.COMPLETED
    run = area.on(0, "kept", "bin", "run")
    assert stat.S_IMODE(run.stat().st_mode) == 0o751
    for path in (run, area.on(0, "kept", "index.html"), area.on(0, "kept", "bin")):
        assert path.stat().st_mtime == old, path
    assert area.on(0, "kept", "link-to-file").read_text() == "<p>hi</p>\n"  # as the file
    assert not area.on(0, "kept", "link-to-dir").exists()
    warnings = await records(kept.children[0], "warning")
    assert any("link-to-dir: a symlink to a directory (not followed)" in w for w in warnings)
    assert area.on(1, "plain", "index.html").stat().st_mtime > time.time() - 300


async def test_a_missing_local_source_fails_before_anything_connects(
    sftp_hosts: SftpHosts, tmp_path: Path, listener: socket.socket
) -> None:
    nobody = f"127.0.0.1:{listener.getsockname()[1]}"
    (tmp_path / "dir").mkdir()
    (tmp_path / "ok").write_text("ok")
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"nope\.txt: no such file or directory; "):
            await jobs.copy([nobody], [tmp_path / "ok", tmp_path / "nope.txt"], "x")
        with pytest.raises(JobArgumentError, match=r"is a directory; copy it with recursive="):
            await jobs.copy([nobody], tmp_path / "dir", "x")
        with pytest.raises(JobArgumentError, match="at least one target"):
            await jobs.copy([], tmp_path / "ok", "x")
        assert jobs.get() == []
    assert not accepted(listener)


async def test_a_read_only_directory_fails_that_host_alone(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "conf"
    source.write_text("conf\n")
    area.on(1).chmod(0o555)  # host 1's directory only: the test user can't write there
    async with JobManager() as jobs:
        parent = await jobs.copy(sftp_hosts.targets, source, area.name, **opts(sftp_hosts))
        await parent.wait()
    ok, ro, other = parent.children
    assert ok.state is other.state is JobState.COMPLETED
    assert ro.state is JobState.FAILED and ro.exit_status == 1
    port = sftp_hosts.hosts[1].port
    assert str(ro.reason) == (
        f"host {sftp_hosts.username}@127.0.0.1:{port}: can't write {area.name}/conf: "
        "permission denied"
    )
    assert [str(e) for e in await records(ro, "error")] == [str(ro.reason)]
    assert area.on(0, "conf").read_text() == "conf\n" and not area.on(1, "conf").exists()


async def test_a_zero_byte_file_both_ways(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    async with JobManager() as jobs:
        pushed = await jobs.copy(sftp_hosts.targets[:2], empty, area.name, **opts(sftp_hosts))
        await pushed.wait()
        assert pushed.state is JobState.COMPLETED
        assert area.on(0, "empty").stat().st_size == 0
        progress = await records(pushed.children[0], "progress")
        assert (progress[-1].current, progress[-1].total, progress[-1].percent) == (0, 0, 100.0)
        pulled = await jobs.gather(
            sftp_hosts.targets[:2], f"{area.name}/empty", tmp_path / "got", **opts(sftp_hosts)
        )
        await pulled.wait()
    assert pulled.state is JobState.COMPLETED
    assert (tmp_path / "got" / sftp_hosts.targets[1] / "empty").read_bytes() == b""


async def test_names_with_spaces_and_bytes_that_are_not_utf8(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    raw = b"caf\xe9 menu \xff.txt"  # Latin-1, not UTF-8, and spaces
    name = os.fsdecode(raw)
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / name
    source.write_bytes(b"menu\n")
    async with JobManager() as jobs:
        pushed = await jobs.copy(sftp_hosts.targets[:1], source, area.name, **opts(sftp_hosts))
        await pushed.wait()
        assert pushed.state is JobState.COMPLETED, pushed.children[0].reason
        assert os.listdir(bytes(area.on(0))) == [raw]  # the very bytes
        pulled = await jobs.gather(
            sftp_hosts.targets[:1], f"{area.name}/*", tmp_path / "got", **opts(sftp_hosts)
        )
        await pulled.wait()
    assert pulled.state is JobState.COMPLETED, pulled.children[0].reason
    got = tmp_path / "got" / sftp_hosts.targets[0]
    assert os.listdir(bytes(got)) == [raw]
    assert (got / name).read_bytes() == b"menu\n"


async def test_one_unreachable_host_fails_its_child_alone(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_text("f")
    targets = [sftp_hosts.targets[0], "127.0.0.1:1"]
    async with JobManager() as jobs:
        parent = await jobs.copy(targets, source, area.name, **opts(sftp_hosts))
        await parent.wait()
    good, down = parent.children
    assert good.state is JobState.COMPLETED
    assert down.state is JobState.FAILED and isinstance(down.reason, ConnectionFailed)
    assert "connection refused" in str(down.reason) and down.exit_status is None


async def test_throttle_limit_bounds_the_hosts_at_once(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_bytes(os.urandom(1 << 20))
    async with JobManager() as jobs:
        parent = await jobs.copy(
            sftp_hosts.targets, source, area.name, throttle_limit=1, **opts(sftp_hosts)
        )
        await parent.wait()
    spans = sorted((c.started_at or 0, c.finished_at or 0) for c in parent.children)
    assert parent.state is JobState.COMPLETED
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


async def test_stop_mid_copy_leaves_no_part_file(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    source.write_bytes(os.urandom(96 << 20))
    async with JobManager() as jobs:
        parent = await jobs.copy(sftp_hosts.targets[:1], source, area.name, **opts(sftp_hosts))
        child = parent.children[0]
        async for record in child.stream_records(streams=["progress"]):
            if record.value.current:
                break
        await parent.stop()
    assert child.state is JobState.STOPPED
    assert list(area.on(0).iterdir()) == []  # neither the file nor its temporary


async def test_a_session_target_copies_on_its_connection(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "s"
    source.write_text("session\n")
    host = sftp_hosts.hosts[2]
    async with asyncjobs.connect(host.address, host.port, **opts(sftp_hosts)) as session:
        async with JobManager() as jobs:
            parent = await jobs.copy([session], source, area.name)
            await parent.wait()
        assert not session.closed
    assert parent.state is JobState.COMPLETED
    assert area.on(2, "s").read_text() == "session\n"


# -- gather ------------------------------------------------------------------------------------


async def test_gather_into_a_directory_per_host(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    for i in range(3):
        area.put(i, "app.log", f"host {i}\n".encode())
    targets = [*sftp_hosts.targets, sftp_hosts.targets[0]]  # one named twice
    async with JobManager() as jobs:
        parent = await jobs.gather(targets, f"{area.name}/app.log", tmp_path, **opts(sftp_hosts))
        await parent.wait()
    assert parent.state is JobState.COMPLETED
    for i, target in enumerate(sftp_hosts.targets):
        assert (tmp_path / target / "app.log").read_text() == f"host {i}\n"
    assert (tmp_path / f"{sftp_hosts.targets[0]}~2" / "app.log").read_text() == "host 0\n"
    outputs = await records(parent.children[1], "output")
    assert outputs == [
        {
            "source": f"{area.name}/app.log",
            "destination": str(tmp_path / sftp_hosts.targets[1] / "app.log"),
            "bytes": 7,
        }
    ]


async def test_gather_patterns_land_below_their_plain_directory(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    area.put(0, "logs/a.log", b"a")
    area.put(0, "logs/b.txt", b"b")
    area.put(0, "logs/old/c.gz", b"c")
    area.put(0, "logs/old/deeper/d.gz", b"d")
    host = sftp_hosts.targets[:1]
    async with JobManager() as jobs:

        async def gather(*sources: str, **kw: Any) -> asyncjobs.Job:
            job = await jobs.gather(
                host, [f"{area.name}/{s}" for s in sources], tmp_path / "out", **kw,
                **opts(sftp_hosts),
            )  # fmt: skip
            await job.wait()
            return job.children[0]

        assert (await gather("logs/*.log", "logs/**/*.gz")).state is JobState.COMPLETED
        got = tmp_path / "out" / host[0]
        found = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
        assert found == ["a.log", "old/c.gz", "old/deeper/d.gz"]
        none = await gather("logs/*.zip")
        assert none.state is JobState.FAILED
        assert str(none.reason).endswith(f"nothing matches {area.name}/logs/*.zip")
        assert (await gather("logs/*.zip", missing_ok=True)).state is JobState.COMPLETED
        missing = await gather("nope.log")
        assert f"can't gather {area.name}/nope.log: no such file" in str(missing.reason)
        directory = await gather("logs")
        assert "logs is a directory; gather it with recursive=True (-r)" in str(directory.reason)
        walked = await gather("logs", recursive=True)
        assert walked.state is JobState.COMPLETED
        assert (got / "logs" / "old" / "deeper" / "d.gz").read_bytes() == b"d"


async def test_gather_does_not_follow_a_symlink_out_of_the_tree(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    area.put(0, "tree/real.txt", b"real")
    outside = area.put(0, "secret.txt", b"secret")
    (area.on(0, "tree", "to-secret")).symlink_to(outside)
    (area.on(0, "tree", "to-passwd")).symlink_to("/etc/passwd")
    (area.on(0, "tree", "to-real")).symlink_to("real.txt")
    (area.on(0, "tree", "to-self")).symlink_to(".")
    async with JobManager() as jobs:
        parent = await jobs.gather(
            sftp_hosts.targets[:1], f"{area.name}/tree", tmp_path, recursive=True,
            **opts(sftp_hosts),
        )  # fmt: skip
        await parent.wait()
    child = parent.children[0]
    assert child.state is JobState.COMPLETED, child.reason
    got = tmp_path / sftp_hosts.targets[0] / "tree"
    assert sorted(p.name for p in got.iterdir()) == ["real.txt", "to-real"]
    assert (got / "to-real").read_bytes() == b"real" and not (got / "to-real").is_symlink()
    warnings = "\n".join(await records(child, "warning"))
    assert "to-passwd: a symlink to /etc/passwd, outside" in warnings
    assert "to-secret: a symlink to" in warnings and "(not followed out of the tree)" in warnings
    assert "to-self: a symlink to a directory (not followed)" in warnings
    assert b"secret" not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


async def test_a_remote_name_with_dotdot_never_leaves_the_host_directory(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real file system has no file named ``../../x``; a hostile or broken server can still
    send that name in a directory listing: it is refused, and nothing is written outside."""
    area.put(0, "tree/fine.txt", b"fine")
    area.put(0, "escape", b"escaped")
    listing = asyncssh.SFTPClient.scandir

    async def hostile(self: asyncssh.SFTPClient, path: Any = ".") -> Any:
        async for entry in listing(self, path):
            yield entry
        if str(path).endswith("/tree"):
            attrs = await self.stat(f"{area.name}/escape")
            for name in ("../../../escape", "../escape", "a/../../escape"):
                yield asyncssh.SFTPName(name, None, attrs)

    monkeypatch.setattr(asyncssh.SFTPClient, "scandir", hostile)
    out = tmp_path / "out"
    async with JobManager() as jobs:
        parent = await jobs.gather(
            sftp_hosts.targets[:1], [f"{area.name}/tree", f"{area.name}/tree/../tree/fine.txt"],
            out, recursive=True, **opts(sftp_hosts),
        )  # fmt: skip
        await parent.wait()
    child = parent.children[0]
    assert child.state is JobState.COMPLETED, child.reason
    warnings = "\n".join(await records(child, "warning"))
    assert warnings.count("(it would leave the directory)") == 3, warnings
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    host = sftp_hosts.targets[0]
    assert written == [f"out/{host}/fine.txt", f"out/{host}/tree/fine.txt"]


async def test_max_bytes_fails_a_host_before_anything_is_fetched(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    area.put(0, "d/a", b"a" * 600)
    area.put(0, "d/b", b"b" * 500)
    area.put(1, "d/a", b"a" * 100)
    async with JobManager() as jobs:
        parent = await jobs.gather(
            sftp_hosts.targets[:2], f"{area.name}/d/*", tmp_path, max_bytes=1000,
            **opts(sftp_hosts),
        )  # fmt: skip
        await parent.wait()
        exact = await jobs.gather(
            sftp_hosts.targets[:1], f"{area.name}/d/*", tmp_path / "exact", max_bytes=1100,
            **opts(sftp_hosts),
        )  # fmt: skip
        await exact.wait()
    big, small = parent.children
    assert small.state is JobState.COMPLETED
    assert big.state is JobState.FAILED and big.exit_status == 1
    assert "the files to gather are 1,100 bytes (2 files), more than max_bytes=1,000; " in str(
        big.reason
    )
    assert list((tmp_path / sftp_hosts.targets[0]).iterdir()) == []  # nothing fetched
    assert await records(big, "progress") == []
    assert exact.state is JobState.COMPLETED


async def test_gather_with_preserve_keeps_mode_and_times(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    tool = area.put(0, "kit/tool", b"#!/bin/sh\n", mode=0o750)
    os.utime(tool, (1_000_000_000, 1_000_000_000))
    async with JobManager() as jobs:
        kept = await jobs.gather(
            sftp_hosts.targets[:1], f"{area.name}/kit", tmp_path / "kept", recursive=True,
            preserve=True, **opts(sftp_hosts),
        )  # fmt: skip
        plain = await jobs.gather(
            sftp_hosts.targets[:1], f"{area.name}/kit", tmp_path / "plain", recursive=True,
            **opts(sftp_hosts),
        )  # fmt: skip
        await jobs.wait(kept, plain)
    host = sftp_hosts.targets[0]
    got = tmp_path / "kept" / host / "kit" / "tool"
    assert stat.S_IMODE(got.stat().st_mode) == 0o750 and got.stat().st_mtime == 1_000_000_000
    again = tmp_path / "plain" / host / "kit" / "tool"
    assert again.stat().st_mtime > time.time() - 300
    assert stat.S_IMODE(again.stat().st_mode) == 0o750 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


async def test_a_host_directory_that_is_a_symlink_is_refused_before_connecting(
    tmp_path: Path, listener: socket.socket
) -> None:
    nobody = f"127.0.0.1:{listener.getsockname()[1]}"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / nobody).symlink_to(tmp_path / "elsewhere")
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match="a symlink, not a directory; "):
            await jobs.gather([nobody], "x", tmp_path / "out")
        with pytest.raises(JobArgumentError, match="max_bytes must be an int >= 0"):
            await jobs.gather([nobody], "x", tmp_path / "out2", max_bytes=-1)
    assert not accepted(listener)
    assert not (tmp_path / "out2").exists()


async def test_gather_core_is_usable_on_an_open_connection(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path
) -> None:
    """``pull.gather_into`` takes any open SFTP client: what a later feature (artifacts after
    a command) calls on the connection it already has."""
    from asyncjobs._core.job import Job
    from asyncjobs._core.log import RecordLog
    from asyncjobs._core.models import Buffer
    from asyncjobs._core.runner import Run
    from asyncjobs._remote.pull import GatherSpec, gather_into

    area.put(2, "out/result.json", b"{}")
    host = sftp_hosts.hosts[2]
    log = RecordLog(job_id=1, location="h", buffer=Buffer())
    job = Job._leaf(id=1, name=None, kind="RemoteJob", command="c", location="h", log=log)
    spec = GatherSpec((f"{area.name}/out/*.json",), max_bytes=10)
    async with asyncssh.connect(host.address, host.port, **opts(sftp_hosts)) as conn:  # noqa: SIM117
        async with conn.start_sftp_client() as sftp:
            files, size = await gather_into(Run(job), sftp, "host h", spec, str(tmp_path))
    assert (files, size) == (1, 2)
    assert (tmp_path / "result.json").read_bytes() == b"{}"
    await anyio.lowlevel.checkpoint()


# -- the connection made ready for bulk data (bulk.py) ----------------------------------------


@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
)
async def test_copy_and_gather_under_every_cipher_kind(
    sftp_hosts: SftpHosts, area: Area, tmp_path: Path, cipher: str
) -> None:
    data = os.urandom((5 << 20) + 17)  # several flushes, and a last packet of odd size
    (tmp_path / "f").write_bytes(data)
    ssh = {**opts(sftp_hosts), "encryption_algs": [cipher]}
    async with JobManager() as jobs:
        pushed = await jobs.copy(sftp_hosts.targets[:2], tmp_path / "f", area.name, **ssh)
        await pushed.wait()
        pulled = await jobs.gather(sftp_hosts.targets[:2], f"{area.name}/f", tmp_path, **ssh)
        await pulled.wait()
    assert pushed.state is pulled.state is JobState.COMPLETED
    assert area.on(1, "f").read_bytes() == data
    assert (tmp_path / sftp_hosts.targets[1] / "f").read_bytes() == data


async def test_ignores_stay_under_a_cbc_cipher() -> None:
    from asyncjobs._remote.bulk import quiet_ignores

    class Conn:
        def __init__(self, cipher: str) -> None:
            self.cipher = cipher
            self.sent: list[int] = []

        def get_extra_info(self, name: str) -> str:
            return self.cipher

        def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
            self.sent.append(pkttype)

    cbc, gcm = Conn("aes256-cbc"), Conn("aes128-gcm@openssh.com")
    assert not quiet_ignores(cbc)  # type: ignore[arg-type]
    assert quiet_ignores(gcm)  # type: ignore[arg-type]
    for conn in (cbc, gcm):
        conn.send_packet(2, b"\0\0\0\0")  # asyncssh's own empty SSH_MSG_IGNORE
        conn.send_packet(94, b"data")
    assert (cbc.sent, gcm.sent) == ([2, 94], [94])
