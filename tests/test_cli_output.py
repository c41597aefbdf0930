"""What the command line prints, as a user sees it (issue 11, items 4, 5, 6, 8, 13, 14): the CLI
run as a subprocess against a real job host (``hostdir``) and the real sshd test hosts, on a
pseudo-terminal of a fixed size (120 x 40, ``TERM=xterm-256color``, read through its master)
where the terminal matters, or on a pipe or a file.

The test hosts are named ``web01``, ``web02``, ... in an ssh_config of the test's own, several
names to each of the three sshds (``alias i`` is sshd ``i % 3``), so that a fan-out to twelve
hosts needs no twelve sshds; the remote command tells the sshds apart by ``$SSH_CONNECTION``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import attrs
import pytest

from asyncjobs._cli._hosts import parse_hosts
from tests.testhosts import TestHosts

COLUMNS, LINES = 120, 40
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
#: The status line: erase the line, then the dim text (never on a pipe).
STATUS = b"\x1b[2K\x1b[2m"
CYAN_TAG = b"\x1b[36m%s\x1b[0m: "


def env(**extra: str) -> dict[str, str]:
    clean = dict(os.environ)
    clean.pop("SSH_AUTH_SOCK", None)  # no agent: the test key only
    clean.pop("NO_COLOR", None)
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    clean.update(extra)
    return clean


@attrs.define
class Done:
    rc: int
    out: bytes
    err: bytes
    cpu: float  # user + system seconds of the CLI process (and its reaped children)
    max_rss: int  # bytes: the CLI's peak RSS (VmHWM)
    wall: float


def run(*args: str, stdout: int | None = None, timeout: float = 60) -> Done:
    """The CLI on pipes (or ``stdout`` a file descriptor), with its CPU time and peak RSS
    (``wait4``: the CLI's own, and its reaped children's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    got = {"out": bytearray(), "err": bytearray()}

    def pump(name: str, pipe: IO[bytes] | None) -> None:
        if pipe is not None:
            while data := pipe.read(1 << 20):
                got[name].extend(data)

    peak = [0]

    def watch_memory() -> None:  # VmHWM: wait4's ru_maxrss would count pytest's fork image
        while proc.returncode is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    status = f.read()
            except OSError:
                return
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            if found is None:  # a zombie: gone
                return
            peak[0] = max(peak[0], int(found.group(1)) * 1024)
            time.sleep(0.01)

    readers = [
        threading.Thread(target=pump, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=pump, args=("err", proc.stderr), daemon=True),
        threading.Thread(target=watch_memory, daemon=True),
    ]
    for reader in readers:
        reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return Done(
        proc.returncode,
        bytes(got["out"]),
        bytes(got["err"]),
        usage.ru_utime + usage.ru_stime,
        peak[0],
        time.perf_counter() - t0,
    )


class Terminal:
    """The CLI with a pseudo-terminal of ``COLUMNS`` x ``LINES`` as its stdout and stderr; a
    thread drains the master into ``seen``."""

    def __init__(self, *args: str, **extra_env: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", *args],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            env=env(TERM="xterm-256color", **extra_env),
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.seen = bytearray()
        self.times: list[tuple[float, int]] = []  # (when, len(seen)) after each read
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 1 << 20)
            except OSError:  # EIO: the last writer is gone
                break
            if not data:
                break
            with self._lock:
                self.seen.extend(data)
                self.times.append((time.perf_counter(), len(self.seen)))

    def wait_for(self, pattern: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if pattern in self.seen:
                    return
            assert time.monotonic() < deadline, f"no {pattern!r} in {bytes(self.seen)[-3000:]!r}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {bytes(self.seen)!r}"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> tuple[int, bytes]:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        os.close(self.master)
        self.wall = time.perf_counter() - self.t0
        return rc, bytes(self.seen)


def terminal(*args: str, **extra_env: str) -> tuple[int, bytes]:
    return Terminal(*args, **extra_env).finish()


def screen_lines(output: bytes) -> list[str]:
    """What a terminal shows line by line: escape codes and status lines gone (a status line
    is erased by ``\\r\\x1b[2K`` before anything is written over it)."""
    text = output.replace(b"\r\n", b"\n")
    lines = []
    for line in text.split(b"\n"):
        line = line.rsplit(b"\r", 1)[-1]  # what a carriage return wrote over
        lines.append(ANSI.sub(b"", line).decode())
    return lines


def cells(text: str) -> int:
    return len(text)  # these tests print ASCII and the ellipsis only


# -- the hosts ---------------------------------------------------------------------------------


@attrs.frozen
class Named:
    """An ssh_config that names the three sshd test hosts ``web01``..``webNN``."""

    config: Path
    hosts: TestHosts
    count: int

    @property
    def args(self) -> list[str]:
        return [
            "-F", str(self.config), "-l", self.hosts.username, "-i", str(self.hosts.client_key),
            "--known-hosts", str(self.hosts.known_hosts),
        ]  # fmt: skip

    def port(self, alias: int) -> int:
        """The sshd port behind ``web{alias:02d}`` (aliases count from 1)."""
        return self.hosts.hosts[(alias - 1) % len(self.hosts.hosts)].port

    def by_sshd(self, script: Sequence[str]) -> str:
        """A shell command that runs ``script[i]`` on sshd ``i`` (told apart by its port)."""
        cases = "".join(
            f'*" {h.port}") {body};; ' for h, body in zip(self.hosts.hosts, script, strict=True)
        )
        return f'case "$SSH_CONNECTION" in {cases}esac'


@pytest.fixture
def named(ssh_hosts: TestHosts, tmp_path: Path) -> Iterator[Named]:
    before = set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon"))
    config = tmp_path / "ssh_config"
    config.write_text(
        "".join(
            f"Host web{i:02d}\n  HostName {h.address}\n  Port {h.port}\n"
            for i in range(1, 13)
            for h in [ssh_hosts.hosts[(i - 1) % len(ssh_hosts.hosts)]]
        )
        + "Host down01 down02 down03\n  HostName 127.0.0.1\n  Port 1\n"
    )
    yield Named(config, ssh_hosts, 12)
    for pid in set(ssh_hosts.pgrep(None, "asyncjobs._host.daemon")) - before:
        subprocess.run(["kill", "-TERM", str(pid)], check=False)


def summary_rows(err: str) -> list[list[str]]:
    """The rows of invoke's summary table (split on runs of 2+ spaces)."""
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Hosts "))
    rows = []
    for line in lines[start + 2 :]:
        if re.match(r"^\d+ hosts?: ", line):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


# -- item 4: tables on a narrow terminal -------------------------------------------------------

LONG = "x" * 130


def test_job_tables_keep_their_key_columns_and_cut_the_long_one(hostdir: Path) -> None:
    started = run("start", "--session", "s" * 130, "--", f"echo {LONG}")
    assert started.rc == 0, started
    # A pipe gets everything, uncut.
    assert started.out.decode().splitlines()[2].endswith(f"echo {LONG}")
    assert run("wait", "1").rc == 0
    for command in (["get"], ["wait", "1"], ["stop", "1"], ["session", "connect", "s" * 130]):
        rc, output = terminal(*command)
        assert rc == 0, output
        shown = [line for line in screen_lines(output) if line.strip()]
        assert all(cells(line) <= COLUMNS for line in shown), shown
        header = shown.index(
            next(line for line in shown if line.startswith("Id "))
        )  # session connect prints the session table first
        assert shown[header].split() == [
            "Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command",
        ]  # fmt: skip
        row = shown[header + 2].split()
        assert row[:5] == ["1", "Job1", "BackgroundJob", "Completed", "True"], shown
        assert shown[header + 2].endswith("…") and "echo xxx" in shown[header + 2]
    # The session table: State, JobCount and IdleTimeout in full, the long name cut.
    rc, output = terminal("session", "list")
    shown = [line for line in screen_lines(output) if line.strip()]
    assert rc == 0 and all(cells(line) <= COLUMNS for line in shown), shown
    assert shown[0].split() == ["Name", "State", "JobCount", "IdleTimeout"]
    assert shown[2].split()[1:] == ["Disconnected", "1", "604800", "s"]
    assert shown[2].split()[0].endswith("…")


def test_the_invoke_summary_keeps_hosts_and_states_whole(named: Named, hostdir: Path) -> None:
    command = named.by_sshd(["exit 0", f": {LONG}; exit 3", f": {LONG}; exit 3"])
    rc, output = terminal("invoke", "-H", "web[01-03]", *named.args, "--", command)
    assert rc == 3, output
    shown = screen_lines(output)
    assert all(cells(line) <= COLUMNS for line in shown), shown
    start = next(i for i, line in enumerate(shown) if line.startswith("Hosts "))
    assert shown[start].split() == ["Hosts", "Count", "State", "ExitStatus", "Reason"]
    rows = [re.split(r"\s{2,}", line) for line in shown[start + 2 : start + 4]]
    assert [r[:4] for r in rows] == [
        ["web01", "1", "Completed", "0"],
        ["web[02-03]", "2", "Failed", "3"],
    ]
    assert rows[1][4].startswith("'case ") and rows[1][4].endswith("…")
    assert re.match(r"3 hosts: 1 completed, 2 failed in [\d.]+ s$", shown[start + 4])


# -- item 6: lines as they are -----------------------------------------------------------------


def test_long_lines_are_written_as_they_are_with_only_the_tag_coloured(
    named: Named, hostdir: Path
) -> None:
    line = "".join(f"{i % 10}" for i in range(300)) + " \x1b[1mbold\x1b[0m end"
    command = f"printf '%s\\n' '{line}'; echo oops >&2"
    rc, output = terminal("invoke", "-H", "web01", *named.args, "--", command)
    assert rc == 0, output
    assert CYAN_TAG % b"web01" + line.encode() + b"\r\n" in output  # whole, its own codes kept
    assert b"\x1b[31mweb01\x1b[0m: oops\r\n" in output  # stderr: the tag in red, the text not
    rc, plain = terminal("invoke", "-H", "web01", *named.args, "--", command, NO_COLOR="1")
    assert rc == 0 and b"web01: " + line.encode() + b"\r\n" in plain
    assert b"web01: oops\r\n" in plain
    for colour in (b"\x1b[36m", b"\x1b[31m", b"\x1b[2m", b"\x1b[1mHosts", b"\x1b[1;31m"):
        assert colour not in plain, colour
    piped = run("invoke", "-H", "web01", *named.args, "--", command)
    assert piped.out == b"web01: " + line.encode() + b"\n" and b"\x1b[3" not in piped.err


# -- item 8: failures group ----------------------------------------------------------------------


def test_failures_group_by_state_status_and_reason_without_the_host(
    named: Named, hostdir: Path
) -> None:
    failed = run("invoke", "-H", "web[01-12]", *named.args, "--", "false")
    assert failed.rc == 1, failed
    [row] = summary_rows(failed.err.decode())
    assert parse_hosts(row[0]) == [f"web{i:02d}" for i in range(1, 13)]
    assert row[1:4] == ["12", "Failed", "1"] and "web" not in row[4]
    assert row[4] == "'false' exited with status 1"
    # Unreachable hosts group too, apart from those that ran; one of them alone keeps its text.
    mixed = run("invoke", "-H", "web[01-02],down[01-03]", *named.args, "--", "exit 2")
    rows = summary_rows(mixed.err.decode())
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("web[01-02]", "2", "Failed", "2"),
        ("down[01-03]", "3", "Failed", "-"),
    ], rows
    assert "connection refused" in rows[1][4] and "down0" not in rows[1][4]
    alone = summary_rows(run("invoke", "-H", "down01", *named.args, "--", "true").err.decode())
    assert len(alone) == 1 and "connection refused" in alone[0][4]


# -- item 13: ok --------------------------------------------------------------------------------


def test_json_ok_is_false_whenever_the_exit_status_is_not_zero(named: Named, hostdir: Path) -> None:
    def doc(*args: str) -> tuple[int, dict[str, object]]:
        done = run("--json", *args)
        document = json.loads(done.out)
        assert document["exit_status"] == done.rc
        assert document["ok"] is (done.rc == 0)
        return done.rc, document

    rc, every = doc("invoke", "-H", "web[01-03]", *named.args, "--", "exit 4")
    assert rc == 4 and every["ok"] is False and every["error"] is None
    assert doc("invoke", "-H", "web01", *named.args, "--", "true")[1]["ok"] is True
    assert doc("invoke", "-H", "down01", *named.args, "--", "true")[0] == 255
    assert doc("invoke", "--", "exit 5")[0] == 5  # on this machine's job host
    rc, started = doc("start", "--", "exit 6")
    assert rc == 0 and started["ok"] is True  # started: that succeeded
    assert doc("receive", str(started["jobs"][0]["id"]), "--wait")[0] == 6  # type: ignore[index]
    sleeper = str(doc("start", "--", "sleep 30")[1]["jobs"][0]["id"])  # type: ignore[index]
    assert doc("wait", sleeper, "--timeout", "0.1")[0] == 124
    assert doc("stop", sleeper)[1]["ok"] is True
    assert doc("receive", "99")[1]["error"] is not None  # an error: ok false, as before


# -- item 5: fast, in blocks, streamed -----------------------------------------------------------


def test_output_to_a_file_is_written_in_blocks(named: Named, hostdir: Path, tmp_path: Path) -> None:
    """3 hosts x 200,000 lines to a file: every line, in each host's order, for little CPU
    (before: ~17 us of CPU a line, ~10 s here; now well under 1 us)."""
    target = tmp_path / "out"
    with target.open("wb") as f:
        done = run("invoke", "-H", "web[01-03]", *named.args, "--", "seq 1 200000",
                   stdout=f.fileno())  # fmt: skip
    assert done.rc == 0, done.err
    lines = target.read_bytes().split(b"\n")
    assert lines.pop() == b""
    for host in ("web01", "web02", "web03"):
        mine = [line for line in lines if line.startswith(host.encode() + b": ")]
        assert mine == [b"%s: %d" % (host.encode(), i) for i in range(1, 200_001)], host
    assert len(lines) == 600_000
    assert done.cpu < 4.0, f"{done.cpu:.2f} s of CPU for 600,000 lines"


def test_a_reader_that_stops_early_ends_it_quietly(named: Named, hostdir: Path) -> None:
    """``asyncjobs invoke ... | head -2``: the blocks after the reader left end the command
    with 141 (as a shell reports SIGPIPE), the remote commands stopped, nothing logged."""
    argv = [sys.executable, "-m", "asyncjobs", "invoke", "-H", "web[01-03]", *named.args, "--",
            "seq 1 300000"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    assert proc.stdout is not None and proc.stderr is not None
    first = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()  # what head does once it has its lines
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141, err
    assert all(re.match(rb"web0[1-3]: [12]\n$", line) for line in first), first
    assert b"Traceback" not in err and b"Exception" not in err, err


def test_terminal_output_is_fast_and_the_status_line_bounded(named: Named, hostdir: Path) -> None:
    """On a terminal the same lines come through whole, and the status line is redrawn at
    most ten times a second, whatever the rate of lines."""
    term = Terminal("invoke", "-H", "web[01-06]", *named.args, "--", "seq 1 50000; sleep 1")
    rc, output = term.finish()
    assert rc == 0, output[-2000:]
    text = ANSI.sub(b"", output.replace(b"\x1b[2K", b"\n"))
    for host in (b"web01", b"web06"):
        assert text.count(b"%s: " % host) == 50_000
        assert b"\r\n%s: 50000\r\n" % host in text
    draws = output.count(STATUS)
    assert 1 <= draws <= 10 * term.wall + 3, (draws, term.wall)


def test_json_is_streamed_not_held(named: Named, hostdir: Path, tmp_path: Path) -> None:
    """``--json`` writes the records as they come: 600,000 lines take no more memory than a
    few (before: the whole document in memory, ~250 MiB here)."""
    target = tmp_path / "out.json"
    with target.open("wb") as f:
        done = run("invoke", "-H", "web[01-03]", *named.args, "--json", "--",
                   "seq 1 200000; echo end >&2", stdout=f.fileno())  # fmt: skip
    assert done.rc == 0, done.err
    assert done.max_rss < 120 * 1024 * 1024, f"peak RSS {done.max_rss / 2**20:.0f} MiB"
    document = json.loads(target.read_bytes())
    assert document["ok"] is True and document["exit_status"] == 0
    records = document["records"]
    assert len(records) == 600_003
    ids = {c["location"]: c["id"] for c in document["jobs"][0]["children"]}
    for host, job_id in ids.items():
        mine = [r for r in records if r["job_id"] == job_id]
        assert [r["seq"] for r in mine] == list(range(200_001))  # as lines=True numbers them
        # stdout and stderr are two pipes: where "end" lands among the last output lines is
        # whichever the host read first; within each stream the order is the program's.
        output = [r["value"] for r in mine if r["stream"] == "output"]
        assert output == [str(i) for i in range(1, 200_001)]
        assert [r["value"] for r in mine if r["stream"] == "error"] == ["end"]
        assert {r["location"] for r in mine} == {host}


def test_json_lines_come_as_they_are_made(named: Named, hostdir: Path) -> None:
    """``--json-lines``: a RECORD per line as it comes, the document (records empty) last."""
    with subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "invoke", "--json-lines", "-H", "web01",
         *named.args, "--", "echo first; sleep 3; echo second"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        t0 = time.monotonic()
        first = json.loads(proc.stdout.readline())
        assert time.monotonic() - t0 < 2.5  # before the command ended
        assert (first["value"], first["seq"], first["stream"]) == ("first", 0, "output")
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=30) == 0
        assert [r["value"] for r in rest[:-1]] == ["second"]
        assert rest[-1]["schema"] == "asyncjobs-cli/1" and rest[-1]["records"] == []
        assert rest[-1]["ok"] is True


# -- item 14: Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_prints_the_summary_and_exits_130(named: Named, hostdir: Path) -> None:
    """web01/04/07 finish, web02/05/08 fail, web03/06 run until SIGINT: they are stopped (their
    remote processes killed) and the summary says so, folded; the status line named the hosts
    still running once they were few, and folded them while they were many."""
    command = named.by_sshd(["sleep 1; echo done", "sleep 1; exit 3", "sleep 1; sleep 60"])
    term = Terminal("invoke", "-H", "web[01-08]", *named.args, "--", command)
    term.wait_for(b"waiting for web[01-08]")
    term.wait_for(b"waiting for web03 web06")
    deadline = time.monotonic() + 20
    while len(named.hosts.pgrep(2, "sleep 60")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    term.proc.send_signal(signal.SIGINT)
    rc, output = term.finish(timeout=30)
    assert rc == 130, output[-3000:]
    shown = "\n".join(screen_lines(output))
    rows = summary_rows(shown)
    assert sorted((r[0], r[1], r[2], r[3]) for r in rows) == [
        ("web[01,04,07]", "3", "Completed", "0"),
        ("web[02,05,08]", "3", "Failed", "3"),
        ("web[03,06]", "2", "Stopped", "-"),
    ], rows
    assert re.search(r"8 hosts: .* in [\d.]+ s; interrupted", shown)
    deadline = time.monotonic() + 10
    while named.hosts.pgrep(2, "sleep 60"):  # the remote groups were killed
        assert time.monotonic() < deadline, "remote sleeps survived Ctrl-C"
        time.sleep(0.05)


def test_ctrl_c_on_the_local_job_host_too(hostdir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "invoke", "--", "echo started; sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().endswith(b": started\n")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    [row] = summary_rows(err.decode())
    assert row[2] == "Stopped" and "interrupted" in err.decode()
    listed = run("get", "--json")
    assert json.loads(listed.out)["jobs"] == []  # removed, as after any local invoke
