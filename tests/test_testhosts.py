"""The sshd test hosts themselves: they answer, authenticate exactly as configured, fail on demand
and leave nothing behind. asyncssh is asyncio-only, so these run on asyncio alone."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncssh
import pytest

from tests.conftest import pid_alive
from tests.testhosts import TEST_HOME, TEST_USER, Host, TestHosts, TestHostsError

F = TypeVar("F", bound=Callable[..., Any])
ROOT = Path(__file__).resolve().parent.parent


def asyncio_only(f: F) -> F:
    """An anyio test on asyncio alone (asyncssh needs asyncio)."""
    marked: F = pytest.mark.anyio(pytest.mark.parametrize("anyio_backend", ["asyncio"])(f))
    return marked


async def connect(hosts: TestHosts, i: int = 0, **options: Any) -> asyncssh.SSHClientConnection:
    h = hosts.hosts[i]
    return await asyncssh.connect(h.address, h.port, **{**hosts.ssh_options(), **options})


def pgrep_all(pattern: str) -> list[int]:
    """The test user's processes matching ``pattern``, on any host (also after close())."""
    out = subprocess.run(
        ["pgrep", "-u", TEST_USER, "-f", pattern], capture_output=True, timeout=10, check=False
    )
    return [int(p) for p in out.stdout.split()]


@asyncio_only
async def test_every_host_answers_with_a_clean_shell(ssh_hosts: TestHosts) -> None:
    assert len(ssh_hosts.hosts) == 3
    assert len({h.port for h in ssh_hosts.hosts}) == 3
    for h in ssh_hosts.hosts:
        assert h.address == "127.0.0.1"
        assert h.target == f"{TEST_USER}@127.0.0.1:{h.port}"
        async with await connect(ssh_hosts, ssh_hosts.hosts.index(h)) as conn:
            assert (await conn.run("echo hi", check=True)).stdout == "hi\n"
            r = await conn.run("echo $HOME; ls -a ~", check=True)
            assert isinstance(r.stdout, str)
            home, *listing = r.stdout.splitlines()
            assert home == str(TEST_HOME)
            assert not {".bashrc", ".profile", ".bash_profile", ".bash_login", ".ssh"} & set(
                listing
            ), listing
            # The login shell is dash run as `sh -c`: it reads no rc file, and nothing set ENV or
            # BASH_ENV (which would make a shell source a file).
            r = await conn.run(
                'readlink /proc/$$/exe; echo "[$ENV][$BASH_ENV]"; id -un', check=True
            )
            assert r.stdout == f"/usr/bin/dash\n[][]\n{TEST_USER}\n"
            assert r.stderr == ""


def test_known_hosts_lists_exactly_these_hosts(ssh_hosts: TestHosts) -> None:
    lines = ssh_hosts.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"[127.0.0.1]:{h.port}" for h in ssh_hosts.hosts]
    keys = [line.split(maxsplit=1)[1] for line in lines]
    assert len(set(keys)) == 3  # one host key per host
    for i, key in enumerate(keys):
        assert ssh_hosts.host_public_key(i).startswith(key)
    opts = ssh_hosts.ssh_options()
    assert opts == {
        "known_hosts": str(ssh_hosts.known_hosts),
        "client_keys": [str(ssh_hosts.client_key)],
        "username": TEST_USER,
        "agent_path": None,
        "config": [],
    }
    d = ssh_hosts.directory
    assert d.stat().st_mode & 0o777 == 0o710  # the test user's group may only traverse it
    config = (d / "sshd_config_0").read_text()
    for line in ("UsePAM no", "UseDNS no", "PidFile none", "MaxSessions 1000", "LogLevel ERROR"):
        assert line in config.splitlines()


@asyncio_only
async def test_load_hosts_take_many_channels_and_connects(ssh_hosts: TestHosts) -> None:
    async with await connect(ssh_hosts) as conn:
        results = await asyncio.gather(*(conn.run("echo $$", check=True) for _ in range(40)))
        assert len({r.stdout for r in results}) == 40
    conns = await asyncio.gather(*(connect(ssh_hosts, 1) for _ in range(30)))
    for c in conns:
        c.close()
    for c in conns:
        await c.wait_closed()


@asyncio_only
async def test_an_unknown_host_key_is_refused(ssh_hosts: TestHosts, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(ssh_hosts, known_hosts=str(empty))
    # Host 1's key under host 0's name: each host has its own key, and it is checked.
    h0 = ssh_hosts.hosts[0]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{h0.known_hosts_name} {ssh_hosts.host_public_key(1)}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(ssh_hosts, known_hosts=str(wrong))


@asyncio_only
async def test_a_wrong_client_key_or_user_is_refused(ssh_hosts: TestHosts) -> None:
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(ssh_hosts, client_keys=[other_key])
    with pytest.raises(asyncssh.PermissionDenied):  # AllowUsers: only the test user
        await connect(ssh_hosts, username="root")


@asyncio_only
async def test_default_sshd_refuses_the_eleventh_channel(fresh_ssh_host: TestHosts) -> None:
    config = (fresh_ssh_host.directory / "sshd_config_0").read_text()
    assert "MaxSessions" not in config and "MaxStartups" not in config
    async with await connect(fresh_ssh_host) as conn:
        procs = [await conn.create_process("cat") for _ in range(10)]
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process("cat")
        for p in procs:
            p.stdin.write_eof()
        with anyio.fail_after(10):
            for p in procs:
                await p.wait(check=True)


@asyncio_only
async def test_kill_stops_sshd_mid_command_and_restart_brings_it_back(
    fresh_ssh_host: TestHosts,
) -> None:
    hosts = fresh_ssh_host
    port, pids = hosts.hosts[0].port, hosts.pids
    async with await connect(hosts) as conn:
        proc = await conn.create_process("sleep 1001")
        # A remote process that double-forked away from sshd (reparented to init) still counts.
        await conn.run("setsid sh -c 'sleep 1002 </dev/null >/dev/null 2>&1 &'", check=True)
        with anyio.fail_after(10):
            while len(hosts.pgrep(0, "sleep 100[12]")) < 2:
                await anyio.sleep(0.01)
        tree = hosts.processes(0)
        assert pids[0] in tree and len(tree) >= 5  # listener, [priv], user@notty, 2 sleeps

        hosts.kill(0)
        assert not hosts.running(0)
        assert [p for p in tree if pid_alive(p)] == []
        assert hosts.pgrep(0, "sleep 100[12]") == []
        with anyio.fail_after(10):
            await proc.wait()
        assert proc.exit_status is None  # the connection died under it
    with pytest.raises(ConnectionRefusedError):
        await connect(hosts)

    hosts.restart(0)
    assert hosts.running(0) and hosts.hosts[0].port == port
    assert len(hosts.pids) == 2 and hosts.pids[0] == pids[0]
    async with await connect(hosts) as conn:  # same known_hosts: same host key
        assert (await conn.run("echo back", check=True)).stdout == "back\n"


@asyncio_only
async def test_pause_hangs_the_host_and_resume_heals_it(fresh_ssh_host: TestHosts) -> None:
    hosts = fresh_ssh_host
    async with await connect(hosts) as conn:
        hosts.pause(0)
        try:
            with pytest.raises(TimeoutError):  # TCP connects (backlog), no banner comes
                await connect(hosts, connect_timeout=1)
            with pytest.raises(TimeoutError):  # an open connection hangs too
                await asyncio.wait_for(conn.run("echo x"), 0.3)
        finally:
            hosts.resume(0)
        assert (await conn.run("echo again", check=True)).stdout == "again\n"
    async with await connect(hosts, connect_timeout=5) as conn:
        assert (await conn.run("echo healed", check=True)).stdout == "healed\n"


@asyncio_only
async def test_close_leaves_none_of_its_processes_alive() -> None:
    hosts = TestHosts(2).start()
    try:
        assert hosts.start_seconds is not None and hosts.start_seconds < hosts.start_timeout
        d = hosts.directory
        conns = [await connect(hosts, i) for i in range(2)]
        procs = [await c.create_process("sleep 1003") for c in conns]
        with anyio.fail_after(10):
            while len(hosts.pgrep(None, "sleep 1003")) < 2:
                await anyio.sleep(0.01)
        hosts.pause(1)  # a stopped host is killed as well
        everything = hosts.processes(0) + hosts.processes(1)
        assert set(hosts.pids) <= set(everything)
    finally:
        hosts.close()
    assert [p for p in everything if pid_alive(p)] == []
    assert pgrep_all("sleep 1003") == []
    assert not d.exists()
    with pytest.raises(TestHostsError, match="not started"):
        _ = hosts.hosts
    hosts.close()  # idempotent
    with anyio.fail_after(10):
        for p in procs:
            await p.wait()
    for c in conns:
        c.close()


@asyncio_only
async def test_loopback_range_gives_each_host_its_own_address() -> None:
    with TestHosts(3, addresses="loopback-range") as hosts:
        addresses = [h.address for h in hosts.hosts]
        assert addresses == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        assert len({h.port for h in hosts.hosts}) == 1
        names = [line.split()[0] for line in hosts.known_hosts.read_text().splitlines()]
        assert names == [h.known_hosts_name for h in hosts.hosts]
        for i, h in enumerate(hosts.hosts):
            async with await connect(hosts, i) as conn:
                r = await conn.run("echo $SSH_CONNECTION", check=True)
                assert isinstance(r.stdout, str)
                assert r.stdout.split()[2:] == [h.address, str(h.port)]


@asyncio_only
async def test_the_script_starts_hosts_until_sigterm() -> None:
    async with await anyio.open_process(
        [str(ROOT / "scripts" / "testhosts"), "2", "--seconds", "60"]
    ) as proc:
        try:
            assert proc.stdout is not None
            line = b""
            with anyio.fail_after(20):
                while not line.endswith(b"\n"):
                    line += await proc.stdout.receive()
            info = json.loads(line)
            assert info["ssh_options"]["username"] == TEST_USER
            assert info["ssh_options"]["agent_path"] is None
            assert len(info["targets"]) == 2 and len(info["pids"]) == 2
            for target in info["targets"]:
                host = Host("127.0.0.1", int(target.rsplit(":", 1)[1]))
                assert target == host.target
                async with asyncssh.connect(host.address, host.port, **info["ssh_options"]) as c:
                    assert (await c.run("echo hi", check=True)).stdout == "hi\n"
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                assert await proc.wait() == 0
            assert [p for p in info["pids"] if pid_alive(p)] == []
            assert not await anyio.Path(info["known_hosts"]).exists()
        finally:
            if proc.returncode is None:
                proc.kill()


def test_script_runs_with_the_venv_python() -> None:
    assert (ROOT / "scripts" / "testhosts").stat().st_mode & 0o111
    out = subprocess.run(
        [str(ROOT / "scripts" / "testhosts"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "SIGINT/SIGTERM" in out.stdout


def test_a_bad_config_fails_start_with_sshds_stderr() -> None:
    hosts = TestHosts(1, max_startups="not-a-number")
    with pytest.raises(TestHostsError, match=r"(?s)exited with status.*MaxStartups"):
        hosts.start()
    assert [p for p in hosts.pids if pid_alive(p)] == []
    with pytest.raises(TestHostsError, match="not started"):
        _ = hosts.directory


def test_a_port_taken_meanwhile_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncjobs.testing._hosts as testhosts  # where start() takes its ports from

    real = testhosts.free_port  # type: ignore[attr-defined]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        handed = iter([busy])
        monkeypatch.setattr(testhosts, "free_port", lambda addrs: next(handed, None) or real(addrs))
        with TestHosts(1) as hosts:
            assert hosts.hosts[0].port != busy
            assert "Address already in use" in hosts.log(0)
            assert len(hosts.pids) == 2  # the first sshd lost the port and exited


@asyncio_only
async def test_killing_only_the_listener_keeps_open_connections(fresh_ssh_host: TestHosts) -> None:
    hosts = fresh_ssh_host
    async with await connect(hosts) as conn:
        hosts.kill(0, connections=False)
        with pytest.raises(ConnectionRefusedError):
            await connect(hosts)
        assert (await conn.run("echo still", check=True)).stdout == "still\n"
        proc = await conn.create_process("sleep 1004")
        with anyio.fail_after(10):
            while not hosts.pgrep(0, "sleep 1004"):
                await anyio.sleep(0.01)
        orphans = hosts.processes(0)  # the connection's sshd processes, now children of init
        assert len(orphans) >= 3
        hosts.close()
        assert [p for p in orphans if pid_alive(p)] == []
        with anyio.fail_after(10):
            await proc.wait()


def test_a_missing_sshd_fails_the_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.ssh_fixtures as ssh_fixtures

    monkeypatch.setattr(ssh_fixtures, "SSHD", "/nonexistent/sshd")
    with pytest.raises(pytest.fail.Exception, match="install Debian's openssh-server"):
        ssh_fixtures._require_sshd()
