"""Warm connections (issue 14 item 9, OpenSSH's ControlPersist): ``asyncjobs invoke`` runs its
fan-out on the SSH connections the user's local job host holds (``--persist S``, default 60 s),
so the next invoke to the same hosts opens channels instead of connecting. The command line as
a subprocess against the real sshd test hosts; ``JobManager.invoke(persist=)`` in-process.
Faults: a held connection whose host died (made again once, transparently), whose host key
changed (refused, as a new connection would be), a controller killed mid-run (its run stopped,
the remote commands killed)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_groups import SERVER_PORT, run, tagged
from tests.test_cli_operator import Home
from tests.test_cli_operator import home as home  # the fixture
from tests.testhosts import TestHosts


@pytest.fixture
def own_home(tmp_path: Path) -> Iterator[Home]:
    """A ``Home`` on two test hosts of its own: the fault tests kill them and change keys."""
    with TestHosts(2) as hosts:
        ssh = tmp_path / "home" / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        (ssh / "id_ed25519").write_bytes(hosts.client_key.read_bytes())
        (ssh / "id_ed25519").chmod(0o600)
        made = Home(tmp_path / "home", hosts)
        (ssh / "known_hosts").write_text(f"{made.known_line(1)}\n{made.known_line(2)}\n")
        made.config()
        yield made


def held(home: Home) -> list[dict[str, Any]]:
    listed = run(home, "session", "list", "--connections", "--json")
    assert listed.rc == 0, listed
    connections: list[dict[str, Any]] = listed.doc()["sessions"]
    return connections


def uses(home: Home) -> dict[int, int]:
    """How many invokes each held connection served, by port (1: it was just made)."""
    return {c["port"]: c["uses"] for c in held(home)}


def test_the_second_invoke_opens_channels_on_held_connections(home: Home) -> None:
    first = run(home, "invoke", "--json", "-H", "web[01-03]", "--", SERVER_PORT)
    assert first.rc == 0, first
    connections = held(home)
    assert sorted(c["port"] for c in connections) == sorted(home.port(i) for i in (1, 2, 3))
    assert all(c["uses"] == 1 and c["channels"] == 0 for c in connections)
    assert all(0 < c["expires_in"] <= 60 for c in connections)

    second = run(home, "invoke", "--json", "-H", "web[01-03]", "--", SERVER_PORT)
    assert second.rc == 0, second
    (parent,) = second.doc()["jobs"]
    assert [c["state"] for c in parent["children"]] == ["Completed"] * 3
    assert sorted(uses(home).values()) == [2, 2, 2]  # the same connections, no new ones
    # the same output, summary and exit status as a cold invoke
    plain = run(home, "invoke", "-H", "web[01-03]", "--", SERVER_PORT)
    assert tagged(plain) == {f"web{i:02d}": str(home.port(i)) for i in (1, 2, 3)}
    assert "3 hosts: 3 completed" in plain.err


def test_no_persist_and_the_environment_switch_it_off(home: Home) -> None:
    off = run(home, "invoke", "--no-persist", "--json", "-H", "web01", "--", "true")
    assert off.rc == 0, off
    assert held(home) == []
    os.environ["ASYNCJOBS_PERSIST"] = "0"
    try:
        env_off = run(home, "invoke", "-H", "web02", "--", "true")
    finally:
        del os.environ["ASYNCJOBS_PERSIST"]
    assert env_off.rc == 0, env_off
    assert held(home) == []
    both = run(home, "invoke", "--persist", "5", "--no-persist", "-H", "web01", "--", "true")
    assert both.rc == 2 and "choose one" in both.err, both
    short = run(home, "invoke", "--persist", "1", "-H", "web01", "--", "true")
    assert short.rc == 0 and [c["port"] for c in held(home)] == [home.port(1)]
    deadline = time.monotonic() + 10
    while held(home) and time.monotonic() < deadline:  # closed past its persist
        time.sleep(0.3)
    assert held(home) == []


def test_persist_needs_hosts_and_connections_live_in_a_private_job_host(home: Home) -> None:
    local = run(home, "invoke", "--persist", "5", "--", "true")
    assert local.rc == 2 and "--persist is for hosts reached over SSH" in local.err, local
    with_host = run(home, "session", "list", "--connections", "-H", "web01")
    assert with_host.rc == 2 and "drop -H" in with_host.err, with_host
    assert run(home, "invoke", "-H", "web01", "--", "true").rc == 0
    directory = home.path / "jobhost"
    mode = stat.S_IMODE(directory.stat().st_mode)
    assert mode == 0o700, oct(mode)  # no other user reaches its socket, or what it holds


def test_a_held_connection_whose_host_died_is_made_again_once(own_home: Home) -> None:
    home = own_home
    assert run(home, "invoke", "-H", "web[01-02]", "--", "true").rc == 0
    home.hosts.kill(0)  # web01's sshd and its connections
    home.hosts.restart(0)  # same port, same host key
    again = run(home, "invoke", "-H", "web[01-02]", "--", SERVER_PORT)
    assert again.rc == 0, again
    assert tagged(again) == {"web01": str(home.port(1)), "web02": str(home.port(2))}
    assert uses(home) == {home.port(1): 1, home.port(2): 2}  # web01's made again, web02's held


def test_a_held_connection_whose_host_key_changed_is_refused(own_home: Home) -> None:
    home = own_home
    assert run(home, "invoke", "-H", "web[01-02]", "--", "true").rc == 0
    key = Path(home.hosts._server(0).host_key)  # web01's
    home.hosts.kill(0)
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    home.hosts.restart(0)  # a new host key: the known_hosts entry no longer matches
    again = run(home, "invoke", "-H", "web[01-02]", "--", "true")
    assert again.rc != 0, again
    rows = {line.split()[0]: line for line in again.err.splitlines() if line.startswith("web")}
    assert "Failed" in rows["web01"] and "host key" in rows["web01"], again.err
    assert "Completed" in rows["web02"], again.err


def test_a_killed_controller_stops_its_warm_run(home: Home) -> None:
    assert run(home, "invoke", "-H", "web01", "--", "true").rc == 0  # the host runs, warm
    env = home.env()
    env["XDG_CONFIG_HOME"] = str(home.path / ".config")
    env["ASYNCJOBS_HOST_DIR"] = str(home.path / "jobhost")
    marker = f"sleep {1000 + os.getpid() % 1000}.5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "invoke", "-H", "web[01-02]", "--", marker],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not home.hosts.pgrep(0, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert home.hosts.pgrep(0, marker), "the remote command never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (home.hosts.pgrep(0, marker) or home.hosts.pgrep(1, marker)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert not home.hosts.pgrep(0, marker) and not home.hosts.pgrep(1, marker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run(home, "invoke", "-H", "web01", "--", "true").rc == 0  # the host goes on


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # SSH: asyncio (asyncssh) only
async def test_the_api_keeps_connections_with_persist(ssh_hosts: TestHosts) -> None:
    import asyncjobs

    options = ssh_hosts.ssh_options()
    targets = ssh_hosts.targets[:2]
    async with asyncjobs.JobManager() as jobs:
        first = await jobs.invoke(targets, "true", persist=30, **options)
        await first.wait()
        assert [c.timings.connect is not None for c in first.children] == [True, True]
        assert len(jobs.held_connections()) == 2
        second = await jobs.invoke(targets, "echo warm", persist=30, **options)
        await second.wait()
        assert await second.receive() == ["warm", "warm"]
        assert second.state is asyncjobs.JobState.COMPLETED
        assert [c.timings.connect for c in second.children] == [None, None]
        assert [c["uses"] for c in jobs.held_connections()] == [2, 2]
        cold = await jobs.invoke(targets[:1], "true", **options)  # without persist: its own
        await cold.wait()
        assert cold.children[0].timings.connect is not None
        assert await jobs.close_idle_connections() == 0  # all still within their 30 s
        with pytest.raises(asyncjobs.JobArgumentError, match="persist must be"):
            await jobs.invoke(targets, "true", persist=-1, **options)
    assert jobs.held_connections() == []  # closed with the manager
    json.dumps(first.children[0].timings.to_dict())
