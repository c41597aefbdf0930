"""Output routing of ``asyncjobs invoke`` (issue 14 item 7), the CLI run as a subprocess
against the real sshd test hosts: ``-N`` prints the lines without the host's tag (pdsh -N);
``--outdir DIR`` writes each host's stdout and stderr to ``DIR/<host>.out`` / ``.err`` (pssh -o),
files made for every host, and the summary still printed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from tests.testhosts import TestHosts


@attrs.frozen
class Run:
    rc: int
    out: bytes
    err: str


def invoke(hosts: TestHosts, home: Path, *args: str, timeout: float = 60) -> Run:
    """``asyncjobs invoke`` with the test hosts' key and known_hosts, no SSH config."""
    ssh = ["-i", str(hosts.client_key), "--known-hosts", str(hosts.known_hosts), "-F", "none"]
    ssh += ["-l", hosts.username]
    env = dict(os.environ, HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    env.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "invoke", *ssh, *args],
        capture_output=True, timeout=timeout, env=env,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def names(hosts: TestHosts) -> list[str]:
    """The hosts as written on the command line (the user is given with -l)."""
    return [f"{h.address}:{h.port}" for h in hosts.hosts]


def _hosts_arg(hosts: TestHosts) -> str:
    return ",".join(names(hosts))


def test_minus_n_prints_lines_without_the_host(ssh_hosts: TestHosts, home: Path) -> None:
    tagged = invoke(ssh_hosts, home, "-H", _hosts_arg(ssh_hosts), "--", "echo one; echo two >&2")
    assert tagged.rc == 0, tagged.err
    lines = tagged.out.decode().splitlines()
    assert sorted(lines) == sorted(f"{t}: one" for t in names(ssh_hosts))

    bare = invoke(
        ssh_hosts, home, "-N", "-H", _hosts_arg(ssh_hosts), "--", "echo one; echo two >&2"
    )
    assert bare.rc == 0, bare.err
    assert bare.out.decode().splitlines() == ["one"] * len(names(ssh_hosts))
    err = bare.err.splitlines()
    assert err.count("two") == len(names(ssh_hosts))  # stderr lines without the tag too
    assert any(line.startswith("Hosts ") for line in err)  # the summary still comes


def test_outdir_writes_each_host_to_files_and_prints_the_summary(
    ssh_hosts: TestHosts, home: Path, tmp_path: Path
) -> None:
    outdir = tmp_path / "out" / "nested"  # made if missing
    first, second, third = names(ssh_hosts)
    run = invoke(
        ssh_hosts, home, "--outdir", str(outdir), "-H", f"{first},{second},{third}", "--",
        'printf "a\\nb\\n"; printf "\\377raw" >&2; printf "no newline"; exit 0',
    )  # fmt: skip
    assert run.rc == 0, run.err
    assert run.out == b""  # the lines went to the files
    assert "3 hosts: 3 completed" in run.err
    for target in names(ssh_hosts):
        assert (outdir / f"{target}.out").read_bytes() == b"a\nb\nno newline"
        assert (outdir / f"{target}.err").read_bytes() == b"\xffraw"  # bytes as they came
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        f"{t}{s}" for t in names(ssh_hosts) for s in (".out", ".err")
    )


def test_outdir_files_grow_as_output_arrives(
    ssh_hosts: TestHosts, home: Path, tmp_path: Path
) -> None:
    """The first line is in the file while the command still runs (pssh writes as it reads)."""
    target = names(ssh_hosts)[0]
    outdir = tmp_path / "live"
    env = dict(os.environ, HOME=str(home))
    env.pop("SSH_AUTH_SOCK", None)
    ssh = ["-i", str(ssh_hosts.client_key), "--known-hosts", str(ssh_hosts.known_hosts)]
    ssh += ["-l", ssh_hosts.username]
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "invoke", *ssh, "-F", "none", "--outdir",
         str(outdir), "-H", target, "--", "echo first; sleep 30; echo late"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        path = outdir / f"{target}.out"
        while not (path.exists() and path.read_bytes() == b"first\n"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first line never reached the file"
            time.sleep(0.02)
        assert (outdir / f"{target}.err").read_bytes() == b""
    finally:
        proc.terminate()  # Ctrl-C's way out: stops the host, prints the summary
        proc.communicate(timeout=30)


def test_outdir_makes_files_for_silent_and_failed_hosts(
    ssh_hosts: TestHosts, home: Path, tmp_path: Path
) -> None:
    outdir = tmp_path / "o"
    good = names(ssh_hosts)[0]
    down = "127.0.0.1:1"  # nothing listens: refused
    run = invoke(ssh_hosts, home, "--outdir", str(outdir), "-H", f"{good},{down}", "--", "true")
    assert run.rc != 0
    assert (outdir / f"{good}.out").read_bytes() == b""
    assert (outdir / f"{good}.err").read_bytes() == b""
    assert (outdir / f"{down}.out").read_bytes() == b""
    assert b"connection refused" in (outdir / f"{down}.err").read_bytes()
    assert "connection refused" in run.err  # in the summary too


def test_outdir_keeps_hosts_written_twice_apart(tmp_path: Path) -> None:
    """The command line folds duplicates away; the API's list of targets may hold them."""
    from asyncjobs._cli._outdir import OutDir

    files = OutDir(str(tmp_path / "d"))
    files.prepare(["web1", "web1", "a/b"])
    first, second = files.stem("web1"), files.stem("web1")
    assert (first, second, files.stem("a/b")) == ("web1", "web1~2", "a_b")
    files.write(first, "output", b"1\n")
    files.write(second, "warning", "careful")
    files.close_all()
    assert (tmp_path / "d" / "web1.out").read_bytes() == b"1\n"
    assert (tmp_path / "d" / "web1~2.err").read_bytes() == b"WARNING: careful\n"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "a_b.err", "a_b.out", "web1.err", "web1.out", "web1~2.err", "web1~2.out",
    ]  # fmt: skip


def test_outdir_that_cannot_be_made_is_a_usage_error(
    ssh_hosts: TestHosts, home: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = invoke(ssh_hosts, home, "--outdir", str(blocker / "sub"), "-H", names(ssh_hosts)[0],
                 "--", "true")  # fmt: skip
    assert run.rc == 2
    assert "--outdir" in run.err and "Not a directory" in run.err
    assert "Traceback" not in run.err

    both = invoke(ssh_hosts, home, "--fold", "--outdir", str(tmp_path / "x"), "-H",
                  names(ssh_hosts)[0], "--", "true")  # fmt: skip
    assert both.rc == 2 and "choose one" in both.err
    assert not (tmp_path / "x").exists()


def test_safe_name() -> None:
    from asyncjobs._cli._outdir import safe_name

    assert safe_name("ops@web01:2222") == "ops@web01:2222"
    assert safe_name("a/b") == "a_b"
    assert safe_name("..") == "_.."
    assert safe_name("") == "_"


def test_help_shows_the_flags_with_examples(home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "invoke", "--help"],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, HOME=str(home)),
    )  # fmt: skip
    assert proc.returncode == 0
    for flag in ("-N ", "--outdir DIR", "--idle-timeout S", "--retries N", "--max-startups N"):
        assert flag in proc.stdout, flag
    assert "--outdir logs" in proc.stdout and "--idle-timeout 60" in proc.stdout
