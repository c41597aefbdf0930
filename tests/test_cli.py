"""The ``asyncjobs`` command line, run as a user runs it: a subprocess per command, against the
real local job host (a private host directory per test, the host stopped by pid at the end) and
the real sshd test hosts (``invoke``, ``start -H``, ``enter`` through a pty). The host list
parser and the output helpers are tested on their own in ``test_cli_hosts.py``."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import asyncjobs
from asyncjobs._cli._fastget import read_jobs
from asyncjobs._cli._hosts import parse_hosts
from asyncjobs._cli._output import host_job_json
from asyncjobs._host.client import connect_local
from tests.conftest import host_pid, pid_alive
from tests.testhosts import TestHosts

DOC_KEYS = {
    "schema", "command", "ok", "exit_status", "jobs", "records", "sessions", "failures", "error",
}  # fmt: skip
JOB_KEYS = {
    "id", "name", "kind", "state", "has_more_data", "location", "command", "session", "reason",
    "exit_status", "started_at", "finished_at", "children", "host",
}  # fmt: skip
RECORD_KEYS = {"job_id", "seq", "stream", "value", "location", "time", "host"}
HEADER = "Id  Name  Kind           State"


# -- running the command line ---------------------------------------------------------------


@attrs.frozen
class Run:
    rc: int
    out: str
    err: str

    def doc(self) -> dict[str, Any]:
        """The ``--json`` document, checked against the one schema."""
        doc: dict[str, Any] = json.loads(self.out)
        assert set(doc) == DOC_KEYS and doc["schema"] == "asyncjobs-cli/1", doc
        assert doc["ok"] is (self.rc == 0) and doc["exit_status"] == self.rc, doc
        assert doc["error"] is None or not doc["ok"], doc
        for job in doc["jobs"]:
            assert set(job) == JOB_KEYS, job
        for record in doc["records"]:
            assert set(record) == RECORD_KEYS, record
        return doc


def env() -> dict[str, str]:
    clean = dict(os.environ)
    clean.pop("SSH_AUTH_SOCK", None)  # no agent: the test key only
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    return clean


def cli(*args: str, stdin: str | None = None, timeout: float = 30) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def ok(*args: str, stdin: str | None = None) -> Run:
    run = cli(*args, stdin=stdin)
    assert run.rc == 0, run
    return run


def one_error_line(run: Run, *fragments: str) -> str:
    """The run failed with exactly one line on stderr, no traceback, naming ``fragments``."""
    assert run.rc != 0, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncjobs: "), run.err
    assert "Traceback" not in run.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def ssh_args(hosts: TestHosts) -> list[str]:
    """The SSH flags for the test hosts: their user, key, known_hosts and no ~/.ssh/config."""
    return [
        "-l", hosts.username, "-i", str(hosts.client_key),
        "--known-hosts", str(hosts.known_hosts), "-F", "none",
    ]  # fmt: skip


def addresses(hosts: TestHosts) -> list[str]:
    return [f"{h.address}:{h.port}" for h in hosts.hosts]


# -- the local job host -----------------------------------------------------------------------


def test_help_lists_every_command_and_starts_no_host(hostdir: Path) -> None:
    run = ok("--help")
    for command in ("invoke", "start", "get", "receive", "wait", "stop", "remove", "enter"):
        assert f"  {command} " in run.out
    assert "session" in run.out
    assert ok("--version").out.strip() == f"asyncjobs, version {asyncjobs.__version__}"
    assert "--hostfile FILE" in ok("invoke", "--help").out
    assert host_pid(hostdir) is None


def test_a_job_started_by_one_invocation_is_received_by_another(hostdir: Path) -> None:
    run = ok(
        "start", "--name", "build", "--", "echo one; sleep 0.3; echo two; echo bad >&2; exit 3"
    )
    header, rule, row = run.out.splitlines()
    assert header.split() == ["Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.split()[:5] == ["1", "build", "BackgroundJob", "Running", "True"]
    assert row.endswith("echo one; sleep 0.3; echo two; echo bad >&2; exit 3")
    pid = host_pid(hostdir)
    assert pid is not None and pid_alive(pid)  # started on first use, detached

    waited = cli("receive", "1", "--wait")  # another "shell"
    assert (waited.rc, waited.out, waited.err) == (3, "one\ntwo\n", "bad\n")  # the job's status
    assert ok("receive", "1").out == ""  # received once
    [job] = ok("get", "--json").doc()["jobs"]
    assert (job["id"], job["state"], job["exit_status"], job["has_more_data"]) == (
        1,
        "Failed",
        3,
        False,
    )
    assert job["session"] == "cli" and "exited with status 3" in job["reason"]

    argv = ok("start", "--json", "--", "printf", "%s|", "a b", "c").doc()  # argv, not a shell line
    assert argv["jobs"][0]["state"] == "Running" and argv["command"] == "start"
    got = cli("receive", "2", "--wait", "--json").doc()
    assert [r["value"] for r in got["records"]] == ["a b|c|"]
    assert [r["seq"] for r in got["records"]] == [0] and got["jobs"][0]["state"] == "Completed"


def test_get_filters_by_name_and_state(hostdir: Path) -> None:
    ok("start", "--name", "build-a", "--", "true")
    ok("start", "--name", "build-b", "--", "exit 1")
    ok("start", "--name", "test", "--", "sleep 30")
    ok("wait", "1", "2")
    names = [j["name"] for j in ok("get", "--name", "build-*", "--json").doc()["jobs"]]
    assert names == ["build-a", "build-b"]
    failed = ok("get", "--state", "failed").out.splitlines()
    assert len(failed) == 3 and failed[2].split()[1:4] == ["build-b", "BackgroundJob", "Failed"]
    assert ok("get", "--state", "Completed", "--name", "test").out == ""  # no jobs: nothing
    bad = cli("get", "--state", "Done")
    one_error_line(bad, "Invalid value for '--state'", "'asyncjobs get --help'")
    assert bad.rc == 2
    ok("remove", "--force", "3")


def test_wait_stop_and_remove(hostdir: Path) -> None:
    ok("start", "--", "sleep 30")
    ok("start", "--", "sleep 0.2; echo quick")
    timed_out = cli("wait", "1", "--timeout", "0.2", "--json")
    assert timed_out.rc == 124 and timed_out.doc()["jobs"] == []
    t0 = time.monotonic()
    run = cli("wait", "1", "2", "--any")
    assert run.rc == 0 and time.monotonic() - t0 < 10
    assert [line.split()[0] for line in run.out.splitlines()[2:]] == ["2"]
    one_error_line(cli("remove", "1"), "job 1", "is Running", "--force")
    stopped = ok("stop", "1", "--json").doc()["jobs"]
    assert [(j["id"], j["state"]) for j in stopped] == [(1, "Stopped")]
    removed = ok("remove", "1", "2")
    assert removed.out == ""
    assert ok("get", "--json").doc()["jobs"] == []


def test_receive_keep_leaves_the_records(hostdir: Path) -> None:
    ok("start", "--", "for i in 1 2 3; do echo $i; sleep 0.1; done")
    assert ok("receive", "1", "--keep", "--wait").out == "1\n2\n3\n"
    assert ok("receive", "1", "--keep").out == "1\n2\n3\n"
    assert [r["value"] for r in ok("receive", "1", "--json").doc()["records"]] == ["1", "2", "3"]
    assert ok("receive", "1").out == ""


def test_errors_are_one_line_with_the_fix(hostdir: Path) -> None:
    run = cli("receive", "99")
    one_error_line(run, "no job with id 99", "'asyncjobs get' lists them")
    assert run.rc == 1 and run.out == ""
    as_json = cli("receive", "99", "--json")
    doc = as_json.doc()
    assert doc["ok"] is False and doc["error"]["type"] == "NoSuchJob"
    assert "no job with id 99" in doc["error"]["message"] and as_json.rc == 1
    debug = cli("stop", "99", "--debug")
    assert debug.rc == 1 and "Traceback" in debug.err and "NoSuchJob" in debug.err
    usage = cli("receive", "abc")
    one_error_line(usage, "'abc' is not a valid integer", "asyncjobs receive --help")
    assert usage.rc == 2
    one_error_line(cli("frobnicate"), "No such command 'frobnicate'")
    ranges = cli("invoke", "-H", "web[01-", "--", "true")
    one_error_line(ranges, "bad host range 'web[01-'", "web[01-12]")
    assert ranges.rc == 2
    ranges_json = cli("invoke", "-H", "web[3-1]", "--json", "--", "true").doc()
    assert ranges_json["error"]["type"] == "HostSyntaxError"
    many = cli("get", "-H", "127.0.0.1:1,127.0.0.1:2", "-F", "none")  # a row each: test_cli_many
    assert many.rc == 1 and "2 hosts: 2 failed" in many.err and "Traceback" not in many.err
    down = cli("get", "-H", "127.0.0.1:1", "-F", "none")  # nobody listens on port 1
    one_error_line(down, "host ", "@127.0.0.1:1: connection refused", "is sshd listening")
    one_error_line(cli("invoke", "--hostfile", "/nonexistent", "--", "true"), "/nonexistent")


def test_invoke_without_hosts_runs_here_and_leaves_no_job(hostdir: Path) -> None:
    run = cli("invoke", "--", "echo out; echo err >&2; exit 4")
    assert run.rc == 4
    [out] = run.out.splitlines()
    assert out.endswith(": out")  # tagged with this host's name
    assert ": err" in run.err and "1 host: 1 failed" in run.err
    assert "Hosts" in run.err and "Failed" in run.err  # the summary table, on stderr
    folded = ok("invoke", "--fold", "--", "echo same")
    lines = folded.out.splitlines()
    assert lines[0] == lines[2] == "-" * 15 and lines[1].endswith("(1)") and lines[3] == "same"
    doc = ok("invoke", "--json", "--", "echo x").doc()
    assert [r["value"] for r in doc["records"]] == ["x"] and doc["jobs"][0]["state"] == "Completed"
    timed_out = cli("invoke", "--timeout", "0.5", "--", "echo a; sleep 30")
    assert timed_out.rc == 143 and timed_out.out.endswith(": a\n") and "1 stopped" in timed_out.err
    assert ok("get", "--json").doc()["jobs"] == []


def test_sessions_list_connect_disconnect(hostdir: Path) -> None:
    assert ok("session", "list", "--json").doc()["sessions"] == []  # no host yet: none
    ok("start", "--session", "nightly", "--name", "n1", "--", "sleep 30")
    ok("start", "--", "true")
    sessions = ok("session", "list", "--json").doc()["sessions"]
    assert {(s["name"], s["state"], s["job_count"]) for s in sessions} == {
        ("cli", "Disconnected", 1),
        ("nightly", "Disconnected", 1),
    }
    assert all(s["idle_timeout"] == 7 * 24 * 3600 for s in sessions)
    table = ok("session", "list").out.splitlines()
    assert table[0].split() == ["Name", "State", "JobCount", "IdleTimeout"]
    connected = ok("session", "connect", "nightly", "--json").doc()
    assert [s["name"] for s in connected["sessions"]] == ["nightly"]
    assert [j["name"] for j in connected["jobs"]] == ["n1"]
    [after] = ok("session", "disconnect", "nightly", "--json").doc()["sessions"]
    assert (after["name"], after["state"]) == ("nightly", "Disconnected")
    one_error_line(cli("session", "connect", "nope"), "no session named 'nope'", "nightly")
    ok("stop", "1")


def test_fast_get_reads_what_the_host_would_answer(hostdir: Path) -> None:
    ok("start", "--", "echo a; echo b >&2")
    ok("start", "--name", "x\ty", "--", "exit 2")
    ok("start", "--", "sleep 30")
    ok("wait", "1", "2")
    ok("receive", "2")

    async def from_host(filters: dict[str, str]) -> list[dict[str, Any]]:
        async with connect_local(None, create=False) as s:
            return [host_job_json(j) for j in await s.jobs.get(**filters)]

    via_host = anyio.run(from_host, {}, backend="asyncio")
    assert ok("get", "--json").doc()["jobs"] == via_host
    assert read_jobs(hostdir / "store.sqlite") == via_host
    assert [j["has_more_data"] for j in via_host] == [True, False, True]
    # The same filters select the same jobs (the fast path calls the host's select_jobs).
    for filters in ({"name": "x*"}, {"state": "Completed"}, {"name": "Job?", "state": "Running"}):
        expected = anyio.run(from_host, filters, backend="asyncio")
        flags = [f"--{key}={value}" for key, value in filters.items()]
        assert ok("get", "--json", *flags).doc()["jobs"] == expected
        assert read_jobs(hostdir / "store.sqlite", **filters) == expected
        assert len(expected) == 1
    ok("stop", "3")


def in_pty(*args: str, **extra_env: str) -> tuple[int, bytes]:
    """Run the command line with a terminal for its stdout and stderr; its status and output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", *args],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        env=dict(env(), TERM="xterm-256color", **extra_env),
    )  # fmt: skip
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the last writer is gone
            break
        if not data:
            break
        out.extend(data)
    os.close(master)
    return proc.wait(timeout=30), bytes(out)


def test_colour_and_progress_only_on_a_terminal(
    hostdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    ok("start", "--", "exit 1")
    ok("start", "--", "sleep 30")
    ok("wait", "1")
    rc, coloured = in_pty("get")
    assert rc == 0 and b"\x1b[" in coloured and b"Failed" in coloured  # states in colour
    rc, plain = in_pty("get", NO_COLOR="1")
    assert rc == 0 and b"\x1b[3" not in plain and b"Failed" in plain  # NO_COLOR: none
    assert "\x1b" not in ok("get").out  # a pipe: plain text
    rc, waiting = in_pty("wait", "2", "--timeout", "0.8")
    assert rc == 124 and b"waiting for 1 jobs" in waiting and b"running 1" in waiting
    ok("stop", "2")


# -- over SSH: the real sshd test hosts -------------------------------------------------------


@pytest.fixture
def remote(ssh_hosts: TestHosts) -> Iterator[TestHosts]:
    """The test hosts; the job hosts that the test started there are stopped (by pid) after."""
    before = set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon"))
    yield ssh_hosts
    for pid in set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon")) - before:
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


def test_invoke_fans_out_with_tagged_output_and_the_worst_status(
    remote: TestHosts, hostdir: Path
) -> None:
    hosts = addresses(remote)
    run = cli("invoke", "-H", ",".join(hosts[:2]), "-H", hosts[2], *ssh_args(remote), "--",
              "echo hello; echo oops >&2")  # fmt: skip
    assert run.rc == 0, run
    assert sorted(run.out.splitlines()) == sorted(f"{h}: hello" for h in hosts)
    assert all(f"{h}: oops" in run.err for h in hosts) and "3 hosts: 3 completed" in run.err

    down = "127.0.0.1:1"
    failed = cli("invoke", "-H", f"{hosts[0]},{down}", *ssh_args(remote), "--", "exit 3")
    assert failed.rc == 255  # the worst: a host that can't be reached
    assert f"{down}: host {remote.username}@127.0.0.1:1: connection refused" in failed.err
    assert "2 hosts: 2 failed" in failed.err
    worst = cli("invoke", "-H", hosts[0], *ssh_args(remote), "--json", "--", "echo x; exit 3")
    doc = worst.doc()
    assert worst.rc == 3 and doc["ok"] is False  # ok is false whenever the status is not 0
    [parent] = doc["jobs"]
    assert parent["kind"] == "RemoteJob" and parent["state"] == "Failed"
    assert [(c["location"], c["exit_status"]) for c in parent["children"]] == [(hosts[0], 3)]
    assert [(r["location"], r["value"]) for r in doc["records"]] == [(hosts[0], "x")]


def test_invoke_hostfile_stdin_and_fold(remote: TestHosts, hostdir: Path, tmp_path: Path) -> None:
    hosts = addresses(remote)
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"# two of them\n{hosts[0]}  # first\n\n{hosts[1]}\n")
    run = ok("invoke", "--hostfile", str(hostfile), "-H", "-", "--fold", *ssh_args(remote),
             "--", "echo same; echo $((1 + 1))", stdin=f"{hosts[2]}\n")  # fmt: skip
    lines = run.out.splitlines()
    assert lines[0] == lines[2] == "-" * 15 and lines[3:] == ["same", "2"]
    assert lines[1].endswith(" (3)")
    assert sorted(parse_hosts(lines[1].rsplit(" ", 1)[0])) == sorted(hosts)


def test_ssh_config_names_the_hosts(remote: TestHosts, hostdir: Path, tmp_path: Path) -> None:
    """~/.ssh/config applies as with ssh: aliases, ports, users; the default key and
    known_hosts of ~/.ssh."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_bytes(remote.client_key.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    config, known = [], []
    for i, h in enumerate(remote.hosts):
        config.append(
            f"Host web{i + 1}\n  Hostname {h.address}\n  Port {h.port}\n  User {h.username}\n"
        )
        known.append(f"{h.known_hosts_name} {remote.host_public_key(i)}\n")
    (ssh / "config").write_text("".join(config))
    (ssh / "known_hosts").write_text("".join(known))
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "invoke", "-H", "web[1-2]", "--", "whoami"],
        capture_output=True, text=True, timeout=30, env=dict(env(), HOME=str(tmp_path)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == [f"web{i}: {remote.username}" for i in (1, 2)]


def test_unknown_host_key_is_one_line_naming_the_fix(remote: TestHosts, hostdir: Path) -> None:
    empty = Path(tempfile.mkdtemp(dir="/tmp")) / "known_hosts"
    empty.write_text("")
    args = ["-l", remote.username, "-i", str(remote.client_key), "--known-hosts", str(empty)]
    host = addresses(remote)[0]
    line = one_error_line(cli("get", "-H", host, *args, "-F", "none"), "host key not verified")
    assert "--known-hosts FILE" in line and "known_hosts=" not in line
    fanned = cli("invoke", "-H", host, *args, "-F", "none", "--", "true")
    assert fanned.rc == 255 and f"{host}: host" in fanned.err and "--known-hosts FILE" in fanned.err


def test_start_on_a_remote_job_host_and_receive_from_another_invocation(
    remote: TestHosts, hostdir: Path
) -> None:
    ssh = ["-H", "127.0.0.1", "-p", str(remote.hosts[0].port), *ssh_args(remote)]
    started = ok("start", *ssh, "--name", "far", "--json", "--", "sleep 0.3; echo from afar")
    [job] = started.doc()["jobs"]
    job_id = str(job["id"])
    assert (job["name"], job["state"], job["session"]) == ("far", "Running", "cli")
    listed = [j["id"] for j in ok("get", *ssh, "--name", "far", "--json").doc()["jobs"]]
    assert job["id"] in listed
    assert ok("receive", job_id, "--wait", *ssh).out == "from afar\n"
    assert "cli" in {s["name"] for s in ok("session", "list", *ssh, "--json").doc()["sessions"]}
    ok("remove", job_id, *ssh)
    one_error_line(cli("receive", job_id, *ssh), f"no job with id {job_id}")
    assert host_pid(hostdir) is None  # nothing ran on this machine's job host


def test_enter_gives_an_interactive_shell_through_a_pty(remote: TestHosts) -> None:
    argv = [sys.executable, "-m", "asyncjobs", "enter", addresses(remote)[0], *ssh_args(remote)]
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=dict(env(), TERM="xterm"),
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()

    def until(pattern: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in seen:
            assert time.monotonic() < deadline, f"no {pattern!r} in {bytes(seen)!r}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # the other end is closed
                    break

    try:
        until(b"$ ")
        os.write(master, b"echo hi; stty size; tty\n")
        until(b"/dev/pts/")  # a pty of its own there, of our terminal's size
        assert b"\r\nhi\r\n30 90\r\n" in seen
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)  # what the kernel sends a terminal's foreground
        time.sleep(0.3)
        os.write(master, b"stty size; exit 7\n")
        until(b"40 120")
        assert proc.wait(timeout=20) == 7  # the shell's exit status
        attrs_after = termios.tcgetattr(master)
        assert attrs_after[3] & termios.ICANON and attrs_after[3] & termios.ECHO  # restored
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    piped = cli("enter", addresses(remote)[0], *ssh_args(remote), stdin="echo piped; exit 5\n")
    assert (piped.rc, piped.out) == (5, "piped\n")
