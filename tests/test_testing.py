"""``asyncjobs.testing``, the public test hosts: ``async with`` on both backends, a fan-out and a
remote job host against them, the pytest plugin as a user loads it (``pytest -p``), the message
when the machine lacks something, and user mode (sshd run by a non-root user, who is the only
one it lets in) for real, as the unprivileged test user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import asyncjobs
import asyncjobs.testing
from asyncjobs.testing import REQUIREMENTS, TestHosts, TestHostsError
from tests.conftest import pid_alive

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_asyncjobs_does_not_import_testing_and_testing_not_pytest() -> None:
    done = _run(
        """
        import sys
        import asyncjobs
        before = "asyncjobs.testing" in sys.modules
        import asyncjobs.testing
        heavy = sorted(m for m in ("pytest", "asyncssh", "anyio", "trio") if m in sys.modules)
        print(before, heavy)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"


@pytest.mark.anyio
async def test_async_with_starts_and_stops_the_hosts(anyio_backend_name: str) -> None:
    async with TestHosts(2) as hosts:
        pids = hosts.pids
        assert len(hosts.targets) == 2 and all(hosts.running(i) for i in range(2))
        for h in hosts.hosts:  # both answer with an SSH banner, on this backend's sockets
            async with await anyio.connect_tcp(h.address, h.port) as stream:
                assert (await stream.receive()).startswith(b"SSH-2.0-OpenSSH")
        directory = hosts.directory
    assert not directory.exists()
    assert [p for p in pids if pid_alive(p)] == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_fan_out_and_a_remote_job_host_on_the_hosts() -> None:
    async with TestHosts(2) as hosts:
        options = hosts.ssh_options()
        async with asyncjobs.JobManager() as jobs:
            job = await jobs.invoke(hosts.targets, "echo $SSH_CONNECTION", **options)
            await job.wait()
            by_host = {c.location: await c.receive() for c in job.children}
        assert len(by_host) == 2
        ports = sorted(int(lines[0].split()[3]) for lines in by_host.values())
        assert ports == sorted(h.port for h in hosts.hosts)
        h = hosts.hosts[1]
        async with asyncjobs.connect(h.address, h.port, name="testing", **options) as s:
            remote = await s.jobs.start_command("echo from the job host")
            await s.jobs.wait(remote)
            assert await s.jobs.receive(remote) == ["from the job host"]
    asyncjobs.testing.stop_job_hosts()


def test_a_machine_without_sshd_is_told_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncjobs.testing._machine as machine

    monkeypatch.setattr(machine, "SSHD", "/nonexistent/sshd")
    with pytest.raises(TestHostsError, match="apt-get install -y openssh-server") as caught:
        TestHosts(1).start()
    assert "/nonexistent/sshd is missing" in str(caught.value)
    assert REQUIREMENTS in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="as a non-root user, user mode is the default")
def test_modes_that_this_caller_cannot_have_are_refused_up_front() -> None:
    with pytest.raises(TestHostsError, match="mode='user' is for a non-root caller"):
        TestHosts(1, mode="user").start()
    with pytest.raises(ValueError, match="mode must be"):
        TestHosts(1, mode="nobody")  # type: ignore[arg-type]
    assert TestHosts(1).username == asyncjobs.testing.TEST_USER


PLUGIN_TESTS = """
import asyncssh
import pytest


@pytest.mark.sshd_hosts(3)
def test_marker_sets_the_count(sshd_hosts):
    assert len(sshd_hosts.targets) == 3
    sshd_hosts.kill(2)
    assert not sshd_hosts.running(2)
    sshd_hosts.restart(2)
    assert sshd_hosts.running(2)


def test_default_is_two(sshd_hosts):
    assert len(sshd_hosts.hosts) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_connect_to_the_shared_hosts(sshd_hosts_shared):
    h = sshd_hosts_shared.hosts[0]
    async with asyncssh.connect(h.address, h.port, **sshd_hosts_shared.ssh_options()) as conn:
        assert (await conn.run("echo hi", check=True)).stdout == "hi\\n"
"""


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    plugins = ["-p", "asyncjobs.testing", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_pytest_plugin_as_a_user_loads_it(tmp_path: Path) -> None:
    (tmp_path / "test_fanout.py").write_text(PLUGIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nsshd_hosts_count = 2\n")
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_the_fixture_fails_with_the_requirements_when_sshd_is_missing(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "import asyncjobs.testing._machine as m\nm.SSHD = '/nonexistent/sshd'\n"
    )
    (tmp_path / "test_one.py").write_text("def test_it(sshd_hosts):\n    pass\n")
    done = _pytest(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert "asyncjobs.testing: /nonexistent/sshd is missing" in done.stdout
    assert "openssh-server" in done.stdout


# -- user mode, for real: the test user runs sshd itself ---------------------------------------

USER_MODE_FAULTS = """
import json, subprocess, sys
from asyncjobs.testing import TestHosts

def ssh(hosts, i, command, timeout=5):
    h = hosts.hosts[i]
    argv = ["ssh", "-F", "none", "-i", str(hosts.client_key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={hosts.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={timeout}", "-p", str(h.port), f"{h.username}@{h.address}",
            command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout.strip()

out = {}
with TestHosts(2) as hosts:
    out["mode"], out["user"] = hosts._mode, hosts.username
    out["who"] = [ssh(hosts, i, "id -un; echo $HOME") for i in range(2)]
    out["homes"] = [str(hosts.home(i)) for i in range(2)]
    hosts.kill(0)
    out["killed"] = ssh(hosts, 0, "true")[0]
    hosts.restart(0)
    out["restarted"] = ssh(hosts, 0, "echo back")
    hosts.pause(1)
    out["paused"] = ssh(hosts, 1, "true", timeout=1)[0]
    hosts.resume(1)
    out["resumed"] = ssh(hosts, 1, "echo healed")
    ssh(hosts, 1, "setsid sh -c 'sleep 1011 </dev/null >/dev/null 2>&1 &'")
    out["sleeping"] = len(hosts.pgrep(1, "sleep 1011"))
    out["directory"] = str(hosts.directory)
out["after"] = subprocess.run(["pgrep", "-f", "^sleep 1011"], capture_output=True).returncode
print(json.dumps(out))
"""


@pytest.fixture
def as_test_user() -> Iterator[tuple[list[str], Path]]:
    """argv that runs a Python as the unprivileged test user, with only ``asyncjobs`` and attrs
    importable (copied to a directory it can read), and that directory."""
    if os.geteuid() != 0:
        pytest.fail("this test turns into the test user, which needs root", pytrace=False)
    user = asyncjobs.testing.ensure_test_user()
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None, "the test user's Python is Debian's /usr/bin/python3"
    lib = Path(tempfile.mkdtemp(prefix="ajtu", dir="/tmp"))
    import attr
    import attrs

    for package in (asyncjobs, attr, attrs):
        source = Path(package.__file__ or "").parent
        shutil.copytree(source, lib / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    env = ["PATH=/usr/bin:/bin", f"PYTHONPATH={lib}", "PYTHONDONTWRITEBYTECODE=1"]
    as_user = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    argv = ["setpriv", *as_user, "env", "-i", *env, python]  # setpriv execs: signals reach it
    try:
        yield argv, lib
    finally:
        shutil.rmtree(lib, ignore_errors=True)


def test_user_mode_logs_in_only_its_own_user_and_faults_work(
    as_test_user: tuple[list[str], Path],
) -> None:
    argv, lib = as_test_user
    done = subprocess.run(
        [*argv, "-c", USER_MODE_FAULTS], cwd=lib, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    user = asyncjobs.testing.TEST_USER
    assert (out["mode"], out["user"]) == ("user", user)
    # Each host's sessions have a HOME of their own, under the hosts' directory.
    assert out["who"] == [[0, f"{user}\n{home}"] for home in out["homes"]]
    assert all(home.startswith(out["directory"] + "/") for home in out["homes"])
    assert out["killed"] != 0 and out["restarted"] == [0, "back"]
    assert out["paused"] != 0 and out["resumed"] == [0, "healed"]
    assert out["sleeping"] == 1 and out["after"] == 1  # close() took the double-forked sleep
    assert not Path(out["directory"]).exists()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_user_mode_hosts_each_run_their_own_job_host_and_close_stops_them(
    as_test_user: tuple[list[str], Path],
) -> None:
    argv, lib = as_test_user
    proc = await anyio.open_process(
        [*argv, "-m", "asyncjobs.testing", "2", "--seconds", "120"], cwd=lib
    )
    try:
        assert proc.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive()
        info = json.loads(line)
        options = info["ssh_options"]
        assert options["username"] == asyncjobs.testing.TEST_USER
        pids = []
        for i, host in enumerate(info["hosts"]):  # root's client, the test user's sshd
            async with asyncjobs.connect(host["address"], host["port"], **options) as s:
                job = await s.jobs.start_command("echo $HOME")
                await s.jobs.wait(job)
                assert await s.jobs.receive(job) == [info["homes"][i]]
                pids.append(await s.invoke("cat $HOME/.local/state/asyncjobs/host.lock"))
        job_hosts = [int(p[0]) for p in pids]
        assert len(set(job_hosts)) == 2 and all(pid_alive(p) for p in job_hosts)
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
        assert [p for p in job_hosts + info["pids"] if pid_alive(p)] == []
        assert not Path(info["known_hosts"]).exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
