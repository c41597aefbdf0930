"""An operator's first day (issue 11): the command line run as a user runs it, against the real
sshd test hosts, named by an ``~/.ssh/config`` that each test writes into a HOME of its own
(never the real user's): host ranges folded back as clush folds them, errors that name the
host, user and port actually used, missing files caught before anything connects, the SSH
config's ``StrictHostKeyChecking``, ``--fail-fast`` that tells a failed host from a stopped
one, and the advice of two small errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import python
from tests.testhosts import TestHosts

WEB = 12  # web01..web12, on the three test hosts in turn


@attrs.frozen
class Run:
    rc: int
    out: str
    err: str

    def doc(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.out)
        return document

    def error_line(self, *fragments: str) -> str:
        """The one line on stderr of a failed run, without a traceback, naming ``fragments``."""
        assert self.rc != 0, self
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asyncjobs: "), self.err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


@attrs.define
class Home:
    """A HOME of the test's own: ``~/.ssh`` with the test key, a known_hosts of the test
    hosts, and a config naming them ``web01``..``web12`` (and ``down01`` on port 1)."""

    path: Path
    hosts: TestHosts

    @property
    def ssh(self) -> Path:
        return self.path / ".ssh"

    def port(self, web: int) -> int:
        """The port of ``webNN``."""
        return self.hosts.hosts[(web - 1) % len(self.hosts.hosts)].port

    def config(self, extra: str = "") -> None:
        blocks = [
            f"Host web{i:02d}\n  HostName 127.0.0.1\n  Port {self.port(i)}\n"
            f"  User {self.hosts.username}\n"
            for i in range(1, WEB + 1)
        ]
        blocks.append(
            f"Host down01\n  HostName 127.0.0.1\n  Port 1\n  User {self.hosts.username}\n"
        )
        (self.ssh / "config").write_text(textwrap.dedent(extra) + "".join(blocks))

    def alias(self, name: str, web: int, *lines: str) -> str:
        """A config block for ``name`` on webNN's host (before the others: first match wins)."""
        body = "".join(f"  {line}\n" for line in lines)  # first: the first value wins
        return (
            f"Host {name}\n{body}  HostName 127.0.0.1\n  Port {self.port(web)}\n"
            f"  User {self.hosts.username}\n"
        )

    def known_line(self, web: int) -> str:
        i = (web - 1) % len(self.hosts.hosts)
        kind, key = self.hosts.host_public_key(i).split()[:2]
        return f"[127.0.0.1]:{self.port(web)} {kind} {key}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, HOME=str(self.path), PYTHONDONTWRITEBYTECODE="1")
        env.pop("SSH_AUTH_SOCK", None)  # no agent: the test key only
        return env

    def run(self, *args: str, timeout: float = 60) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "asyncjobs", *args],
            capture_output=True, text=True, timeout=timeout, env=self.env(),
        )  # fmt: skip
        return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def home(ssh_hosts: TestHosts, tmp_path: Path) -> Home:
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    (ssh / "id_ed25519").write_bytes(ssh_hosts.client_key.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    made = Home(tmp_path / "home", ssh_hosts)
    (ssh / "known_hosts").write_text(
        "".join(f"{made.known_line(i)}\n" for i in range(1, len(ssh_hosts.hosts) + 1))
    )
    made.config()
    return made


def summary(run: Run) -> list[list[str]]:
    """The rows of invoke's summary table (on stderr), split on runs of 2+ spaces."""
    lines = run.err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Hosts "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or " hosts: " in line or " host: " in line:
            break
        rows.append([cell.strip() for cell in line.split("  ") if cell.strip()])
    return rows


# -- 7. host ranges fold as clush folds them -------------------------------------------------


def test_a_range_across_09_to_10_is_summarised_as_written(home: Home) -> None:
    run = home.run("invoke", "-H", "web[08-11]", "--", "true")
    assert run.rc == 0, run
    assert summary(run) == [["web[08-11]", "4", "Completed", "0"]]
    folded = home.run("invoke", "-H", "web[08-11],web01", "--fold", "--", "echo same")
    assert folded.out.splitlines()[1] == "web[01,08-11] (5)", folded


# -- 9. the host, user and port actually used ---------------------------------------------


def test_errors_name_the_host_user_and_port_from_ssh_config(home: Home) -> None:
    user = home.hosts.username
    run = home.run("invoke", "-H", "down01", "--", "true")
    assert run.rc == 255
    assert f"down01: host down01 ({user}@127.0.0.1:1): connection refused" in run.err
    assert ":22" not in run.err
    home.run("get", "-H", "down01").error_line(f"host down01 ({user}@127.0.0.1:1): connection")
    # -l and -p win over the config, and the message says so
    other = home.run("invoke", "-H", "down01", "-l", "nobody", "-p", "2", "--", "true")
    assert "host down01 (nobody@127.0.0.1:2): connection refused" in other.err
    home.config(home.alias("stranger", 1, "User nosuchuser"))
    refused = home.run("invoke", "-H", "stranger", "--", "true")
    assert refused.rc == 255
    assert f"host stranger (nosuchuser@127.0.0.1:{home.port(1)}): authentication refused" in (
        refused.err
    )


# -- 10. missing files: one usage error, nothing connects ------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that nobody should connect to; ``accepted(sock)`` says whether anyone did."""
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


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["-i", "/nope/key"], "-i /nope/key: no such file"),
        (["--known-hosts", "/nope/kh"], "--known-hosts /nope/kh: no such file"),
        (["-F", "/nope/config"], "-F /nope/config: no such file"),
        (["-i", "/tmp"], "-i /tmp: is a directory"),
    ],
)
def test_a_missing_file_is_one_usage_error_and_nothing_connects(
    home: Home, listener: socket.socket, flags: list[str], named: str
) -> None:
    port = listener.getsockname()[1]
    targets = f"127.0.0.1:{port},web01"
    for args in (
        ["invoke", "-H", targets, *flags, "--", "true"],
        ["get", "-H", f"127.0.0.1:{port}", *flags],
        ["enter", f"127.0.0.1:{port}", *flags],
    ):
        run = home.run(*args)
        run.error_line(named)
        assert run.rc == 2 and run.out == "", (args, run)
    as_json = home.run("invoke", "-H", targets, *flags, "--json", "--", "true")
    assert as_json.rc == 2
    assert as_json.doc()["error"]["type"] == "UsageError"
    assert named in as_json.doc()["error"]["message"]
    time.sleep(0.2)
    assert not accepted(listener)


def test_missing_files_named_by_ssh_config_are_skipped_as_ssh_skips_them(home: Home) -> None:
    """A missing IdentityFile is skipped (the next one is used); a missing
    UserKnownHostsFile holds no keys: refused as unknown, not 'No such file or directory'."""
    home.config(
        home.alias("keyed", 1, "IdentityFile ~/.ssh/nope", "IdentityFile ~/.ssh/id_ed25519")
        + home.alias("unlisted", 1, "UserKnownHostsFile ~/.ssh/nope_known_hosts")
    )
    assert home.run("invoke", "-H", "keyed", "--", "echo in").out == "keyed: in\n"
    refused = home.run("invoke", "-H", "unlisted", "--", "true")
    assert refused.rc == 255 and "host key not verified" in refused.err
    assert "No such file" not in refused.err


# -- 11. StrictHostKeyChecking --------------------------------------------------------------


def test_the_default_stays_strict_and_the_hint_names_the_real_host_and_port(home: Home) -> None:
    (home.ssh / "known_hosts").write_text("")
    run = home.run("invoke", "-H", "web01", "--", "true")
    port = home.port(1)
    assert run.rc == 255 and "host key not verified" in run.err
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> ~/.ssh/known_hosts" in run.err
    assert "PORT HOST" not in run.err
    assert (home.ssh / "known_hosts").read_text() == ""  # nothing trusted on first use


def test_accept_new_records_a_new_host_and_refuses_a_changed_key(home: Home) -> None:
    kh = home.ssh / "collected"
    home.config(
        home.alias("fresh1", 1, "StrictHostKeyChecking accept-new", f"UserKnownHostsFile {kh}")
        + home.alias("fresh2", 2, "StrictHostKeyChecking accept-new", f"UserKnownHostsFile {kh}")
    )
    first = home.run("invoke", "-H", "fresh1,fresh2", "--", "echo in")
    assert first.rc == 0, first
    assert sorted(first.out.splitlines()) == ["fresh1: in", "fresh2: in"]
    warnings = [line for line in first.err.splitlines() if "permanently added" in line]
    assert len(warnings) == 2 and all(str(kh) in w for w in warnings), first.err
    assert sorted(kh.read_text().splitlines()) == sorted([home.known_line(1), home.known_line(2)])
    again = home.run("invoke", "-H", "fresh1,fresh2", "--", "true")
    assert again.rc == 0 and "Warning" not in again.err  # known now: silent
    assert len(kh.read_text().splitlines()) == 2

    kh.write_text(home.known_line(2).replace(str(home.port(2)), str(home.port(1))) + "\n")
    changed = home.run("invoke", "-H", "fresh1", "--", "true")
    assert changed.rc == 255 and "it has CHANGED" in changed.err, changed
    assert f"ssh-keygen -R '[127.0.0.1]:{home.port(1)}' -f {kh}" in changed.err
    assert len(kh.read_text().splitlines()) == 1  # the old key stays; nothing was added


def test_no_lets_a_changed_key_through_warning_once_per_host(home: Home) -> None:
    kh = home.ssh / "wrong"
    kh.write_text(home.known_line(2).replace(str(home.port(2)), str(home.port(1))) + "\n")
    home.config(
        home.alias("lax", 1, "StrictHostKeyChecking no", f"UserKnownHostsFile {kh}")
        + home.alias("lax2", 1, "StrictHostKeyChecking no", f"UserKnownHostsFile {kh}")
    )
    run = home.run("invoke", "-H", "lax,lax2", "--", "echo in")
    assert run.rc == 0, run
    assert sorted(run.out.splitlines()) == ["lax2: in", "lax: in"]
    warnings = [line for line in run.err.splitlines() if "CHANGED" in line]
    assert len(warnings) == 1, run.err  # one host (two names for it): one warning
    assert "StrictHostKeyChecking is no" in warnings[0]
    assert len(kh.read_text().splitlines()) == 1  # a changed key is not recorded


def test_no_and_hash_known_hosts_add_a_new_host_hashed(home: Home) -> None:
    kh = home.ssh / "hashed"
    home.config(
        home.alias(
            "hashme",
            3,
            "StrictHostKeyChecking off",
            "HashKnownHosts yes",
            f"UserKnownHostsFile {kh}",
        )
    )
    run = home.run("invoke", "-H", "hashme", "--", "true")
    assert run.rc == 0 and "permanently added" in run.err, run
    [line] = kh.read_text().splitlines()
    assert line.startswith("|1|") and line.split()[1:] == home.known_line(3).split()[1:]
    assert home.run("invoke", "-H", "hashme", "--", "true").err.count("Warning") == 0


# -- 12. --fail-fast ------------------------------------------------------------------------

#: Fails at once on web01's host (its sshd's port is in SSH_CONNECTION), runs long elsewhere.
FAIL_ON_FIRST = 'case "$SSH_CONNECTION" in *" {port}") exit 3;; esac; sleep 30'


def test_fail_fast_stops_the_others_and_tells_failed_from_stopped(home: Home) -> None:
    t0 = time.monotonic()
    command = FAIL_ON_FIRST.format(port=home.port(1))
    run = home.run("invoke", "-H", "web[01-03]", "--fail-fast", "--", command)
    assert time.monotonic() - t0 < 20
    rows = summary(run)
    assert rows[0][:4] == ["web01", "1", "Failed", "3"], run.err
    assert rows[1] == [
        "web[02-03]",
        "2",
        "Stopped",
        "-",
        "stopped because web01 failed (fail-fast)",
    ]
    doc = home.run("invoke", "-H", "web[01-03]", "--fail-fast", "--json", "--", command).doc()
    [parent] = doc["jobs"]
    children = {c["location"]: c for c in parent["children"]}
    assert (children["web01"]["state"], children["web01"]["exit_status"]) == ("Failed", 3)
    assert {c["state"] for loc, c in children.items() if loc != "web01"} == {"Stopped"}
    assert (parent["state"], parent["exit_status"]) == ("Failed", 3)
    assert "exited with status 3" in parent["reason"]


def test_fail_fast_exits_with_the_first_failures_status(home: Home) -> None:
    command = FAIL_ON_FIRST.format(port=home.port(1))
    assert home.run("invoke", "-H", "web[01-03]", "--fail-fast", "--", command).rc == 3


def test_hosts_that_fail_on_their_own_are_failed_never_stopped(home: Home) -> None:
    """Every host exits 3 at about the same moment: the first failure stops the rest, but a
    host whose command had already ended keeps its own result (it showed Stopped 3)."""
    for _ in range(3):
        doc = home.run("invoke", "-H", "web[01-06]", "--fail-fast", "--json", "--", "exit 3").doc()
        for child in doc["jobs"][0]["children"]:
            if child["exit_status"] is not None:
                assert child["state"] == "Failed", child
            else:
                assert child["state"] == "Stopped", child
                assert child["reason"].startswith("stopped because web"), child
    # Connection failures too: a host refused while the stop was on its way failed by itself.
    down = "down01,127.0.0.1:1,127.0.0.2:1,127.0.0.3:1"
    doc = home.run("invoke", "-H", down, "--fail-fast", "--json", "--", "true").doc()
    assert {c["state"] for c in doc["jobs"][0]["children"]} == {"Failed"}, doc


# -- 15. small ones ---------------------------------------------------------------------------


def test_enter_takes_one_host(home: Home) -> None:
    run = home.run("enter", "web[01-02]")
    line = run.error_line("enter takes one host", "'web[01-02]' names 2", "asyncjobs invoke -H")
    assert run.rc == 2 and "-H 'web[01-02]' names" not in line


HOLDER = """
    import anyio, sys
    import asyncjobs

    async def main():
        async with asyncjobs.connect_local(name="held"):
            print("attached", flush=True)
            sys.stdin.read()

    anyio.run(main)
"""


def test_a_session_held_elsewhere_says_who_and_how_to_take_it_over(
    home: Home, hostdir: Path
) -> None:
    holder = subprocess.Popen(
        python(HOLDER), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=home.env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
        for args in (["session", "disconnect", "held"], ["session", "connect", "held"]):
            run = home.run(*args)
            line = run.error_line("session 'held' is in use by another connection")
            assert "disconnect it first" not in line
            assert "wait for that and try again" in line and "take the session over" in line
            assert "'asyncjobs get' lists them" in line
    finally:
        holder.communicate("", timeout=30)
    [session] = [s for s in home.run("session", "list", "--json").doc()["sessions"]]
    assert (session["name"], session["state"]) == ("held", "Disconnected")
    assert home.run("session", "disconnect", "held").rc == 0


# -- the same in the Python API ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("client_keys", ["/nope/key"]),
        ("known_hosts", "/nope/kh"),
        ("config", ["/nope/config"]),
        ("client_keys", "/tmp"),
    ],
)
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_api_names_a_missing_file_before_connecting(
    ssh_hosts: TestHosts, listener: socket.socket, option: str, value: Any
) -> None:
    import asyncjobs

    target = f"127.0.0.1:{listener.getsockname()[1]}"
    with pytest.raises(asyncjobs.JobArgumentError) as info:
        asyncjobs.connect(target, **{option: value})  # at the call, not when awaited
    path = value[0] if isinstance(value, list) else value
    assert f"{option}={path!r}" in str(info.value)
    async with asyncjobs.JobManager() as jobs:
        with pytest.raises(asyncjobs.JobArgumentError, match=option):
            await jobs.invoke([target, *ssh_hosts.targets], "true", **{option: value})
        assert jobs.get() == []
    assert not accepted(listener)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_api_parent_of_a_fail_fast_fan_out(ssh_hosts: TestHosts) -> None:
    import asyncjobs

    options: dict[str, Any] = dict(ssh_hosts.ssh_options())
    command = FAIL_ON_FIRST.format(port=ssh_hosts.hosts[0].port)
    async with asyncjobs.JobManager() as jobs:
        job = await jobs.invoke(ssh_hosts.targets, command, on_failure="fail_fast", **options)
        await job.wait(timeout=30)
    failed, *stopped = job.children
    assert (failed.state.value, failed.exit_status) == ("Failed", 3)
    assert (job.state.value, job.exit_status, job.reason) == ("Failed", 3, failed.reason)
    for child in stopped:
        assert child.state.value == "Stopped" and child.exit_status is None
        assert str(child.reason) == f"stopped because {failed.location} failed (fail-fast)"
        changes = [change async for change in child.state_changes()]
        assert changes[-1].reason is child.reason  # the last change says why, too


def test_the_in_use_advice_keeps_what_the_host_says_about_the_holder() -> None:
    from asyncjobs._cli._access import Where, in_use
    from asyncjobs._ssh.targets import Target

    named = in_use(
        "session 'held' is in use by another connection: pid 4242 (python3 build.py) since "
        "10:41:07; it is free again when that program disconnects or exits",
        Where(Target("web1", 2222, "ops")),
    )
    assert named.startswith(
        "session 'held' is in use by another connection: pid 4242 (python3 build.py) since "
        "10:41:07; it is left disconnected"
    )
    assert "a Python program's" not in named and "'asyncjobs get -H web1:2222'" in named
