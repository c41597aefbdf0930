"""``asyncjobs copy`` and ``asyncjobs gather`` (issue 14 item 5) as a user runs them: a
subprocess against the real sshd test hosts, in a HOME of the test's own whose ``~/.ssh/config``
names them ``web01``..``web12`` (on the three hosts in turn); hosts taken as ``invoke`` takes
them (ranges, ``@groups``, ``-x``, ``-o``, ``@failed``), the summary and exit status as
invoke's, and bad input refused before anything connects (exit status 2).

The hosts are ``test_transfer.SftpHosts``: each host's SFTP sessions start in a directory of
its own, so a relative path is a different place on each."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from tests import test_cli_operator as operator
from tests import test_transfer as transfer
from tests.test_cli_groups import run, write_groups
from tests.test_cli_operator import Home, accepted, summary
from tests.test_transfer import Area, SftpHosts

sftp_hosts = transfer.sftp_hosts  # the fixtures: each host's SFTP in a directory of its own
area = transfer.area
listener = operator.listener


@pytest.fixture
def home(sftp_hosts: SftpHosts, tmp_path: Path) -> Home:
    """test_cli_operator's HOME, for the SFTP hosts."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    (ssh / "id_ed25519").write_bytes(sftp_hosts.client_key.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    made = Home(tmp_path / "home", sftp_hosts)
    lines = [f"{made.known_line(i)}\n" for i in range(1, len(sftp_hosts.hosts) + 1)]
    (ssh / "known_hosts").write_text("".join(lines))
    made.config()
    return made


def test_copy_to_many_hosts_prints_the_summary_and_the_totals(
    home: Home, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "nginx.conf"
    source.write_bytes(b"worker_processes 4;\n")
    done = run(home, "copy", "-H", "web[01-03]", str(source), f"{area.name}/")
    assert done.rc == 0, done
    assert done.out == ""  # nothing per file
    assert summary(done) == [["web[01-03]", "3", "Completed", "0"]]
    assert "copied 3 files, 60 B (3 hosts)" in done.err
    for i in range(3):
        assert area.on(i, "nginx.conf").read_bytes() == b"worker_processes 4;\n"


def test_a_missing_local_file_is_a_usage_error_and_nothing_connects(
    home: Home, tmp_path: Path, listener: socket.socket
) -> None:
    nobody = f"127.0.0.1:{listener.getsockname()[1]}"
    (tmp_path / "ok").write_text("ok")
    missing = run(home, "copy", "-H", nobody, str(tmp_path / "ok"), str(tmp_path / "nope"), "x")
    assert missing.rc == 2
    missing.error_line("nope: no such file or directory; nothing was copied, nothing connected")
    directory = run(home, "copy", "-H", nobody, str(tmp_path), "x")
    assert directory.rc == 2
    directory.error_line("is a directory; copy it with recursive=True (-r)")
    lone = run(home, "copy", "-H", nobody, str(tmp_path / "ok"))
    assert lone.rc == 2 and "at least one source and the DEST" in lone.err
    no_hosts = run(home, "gather", "x", str(tmp_path))
    assert no_hosts.rc == 2 and "gather needs hosts: give them with -H" in no_hosts.err
    assert not accepted(listener)


def test_a_read_only_directory_fails_that_host_and_the_exit_status_says_so(
    home: Home, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "app.ini"
    source.write_text("[app]\n")
    area.on(1).chmod(0o555)  # web02's (host 1) only
    done = run(home, "copy", "-H", "web[01-03]", str(source), area.name)
    assert done.rc == 1, done
    rows = sorted(summary(done))
    assert rows[0] == [
        "web02",
        "1",
        "Failed",
        "1",
        f"can't write {area.name}/app.ini: permission denied",
    ]
    assert rows[1] == ["web[01,03]", "2", "Completed", "0"]
    user, port = home.hosts.username, home.port(2)
    assert (
        f"web02: host web02 ({user}@127.0.0.1:{port}): can't write {area.name}/app.ini: "
        "permission denied" in done.err
    )

    area.on(1).chmod(0o755)  # fixed: copy again to the host that failed, and to it alone
    again = run(home, "copy", "-H", "@failed", str(source), area.name)
    assert again.rc == 0, again
    assert summary(again) == [["web02", "1", "Completed", "0"]]
    assert area.on(1, "app.ini").read_text() == "[app]\n"


def test_gather_both_ways_recursive_with_groups_exclusions_and_o(
    home: Home, area: Area, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "css" / "main.css").write_text("body {}\n")
    (site / "index.html").write_text("<p>hi</p>\n")
    os.utime(site / "index.html", (1_000_000_000, 1_000_000_000))
    write_groups(home, "web: web[01-03]\n")
    pushed = run(home, "copy", "-H", "@web", "-x", "web03", "-r", "--preserve",
                 "-o", "ConnectTimeout=10", str(site), f"{area.name}/www")  # fmt: skip
    assert pushed.rc == 0, pushed
    assert summary(pushed) == [["web[01-02]", "2", "Completed", "0"]]
    assert area.on(0, "www", "css", "main.css").is_file() and not area.on(2, "www").exists()
    assert area.on(1, "www", "index.html").stat().st_mtime == 1_000_000_000
    for i in (0, 1):  # something of each host's own, to tell them apart
        area.put(i, "www/host.txt", f"web0{i + 1}\n".encode())
    out = tmp_path / "pulled"
    pulled = run(home, "gather", "-H", "@web", "-x", "web03", "-r", f"{area.name}/www", str(out))
    assert pulled.rc == 0, pulled
    assert sorted(p.name for p in out.iterdir()) == ["web01", "web02"]
    for host in ("web01", "web02"):
        assert (out / host / "www" / "host.txt").read_text() == f"{host}\n"
        assert (out / host / "www" / "css" / "main.css").read_text() == "body {}\n"
    assert "gathered 6 files" in pulled.err


def test_gather_warns_of_a_symlink_pointing_outside_and_json_has_a_record_per_file(
    home: Home, area: Area, tmp_path: Path
) -> None:
    area.put(0, "logs/app.log", b"started\n")
    area.on(0, "logs", "shadow").symlink_to("/etc/shadow")
    out = tmp_path / "out"
    text = run(home, "gather", "-H", "web01", "-r", f"{area.name}/logs", str(out))
    assert text.rc == 0, text
    assert "web01: WARNING: host web01 (" in text.err
    assert "logs/shadow: a symlink to /etc/shadow, outside" in text.err
    assert sorted(p.name for p in (out / "web01" / "logs").iterdir()) == ["app.log"]
    doc = run(home, "gather", "-H", "web01", "--json", f"{area.name}/logs/*.log", str(out)).doc()
    assert doc["ok"] is True and doc["exit_status"] == 0
    outputs = [r for r in doc["records"] if r["stream"] == "output"]
    assert outputs == [
        {
            "job_id": outputs[0]["job_id"], "seq": outputs[0]["seq"], "stream": "output",
            "value": {
                "source": f"{area.name}/logs/app.log",
                "destination": str(out / "web01" / "app.log"), "bytes": 8,
            },
            "location": "web01", "time": outputs[0]["time"], "host": "web01",
        }
    ]  # fmt: skip
    assert [j["kind"] for j in doc["jobs"]] == ["RemoteJob"]


def test_max_bytes_fails_the_host_over_it(home: Home, area: Area, tmp_path: Path) -> None:
    area.put(0, "dump.sql", b"x" * 4096)
    area.put(1, "dump.sql", b"x" * 100)
    got = run(home, "gather", "-H", "web[01-02]", "--max-bytes", "1k", f"{area.name}/dump.sql",
              str(tmp_path / "d"))  # fmt: skip
    assert got.rc == 1, got
    rows = sorted(summary(got))
    assert rows[0][:4] == ["web01", "1", "Failed", "1"]
    assert "more than max_bytes=1,024; nothing was gathered" in rows[0][4]
    assert rows[1] == ["web02", "1", "Completed", "0"]
    bad = run(home, "gather", "-H", "web01", "--max-bytes", "lots", "x", str(tmp_path))
    assert bad.rc == 2 and "'lots' is not a size" in bad.err


def test_odd_names_and_an_empty_file(home: Home, area: Area, tmp_path: Path) -> None:
    raw = b"r\xe9sum\xe9 final \xff.txt"
    name = os.fsdecode(raw)
    (tmp_path / name).write_bytes(b"")
    done = run(home, "copy", "-H", "web01", str(tmp_path / name), area.name)
    assert done.rc == 0, done
    assert os.listdir(bytes(area.on(0))) == [raw]
    assert area.on(0, name).stat().st_size == 0
    back = run(home, "gather", "-H", "web01", f"{area.name}/{name}", str(tmp_path / "back"))
    assert back.rc == 0, back
    assert os.listdir(bytes(tmp_path / "back" / "web01")) == [raw]


def test_an_unreachable_host_exits_255_and_the_others_are_copied(
    home: Home, area: Area, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_text("f")
    done = run(home, "copy", "-H", "web01,down01", str(source), area.name)
    assert done.rc == 255, done
    rows = sorted(summary(done))
    assert rows[0][:4] == ["down01", "1", "Failed", "-"] and "connection refused" in rows[0][4]
    assert rows[1] == ["web01", "1", "Completed", "0"]
    assert stat.S_ISREG(area.on(0, "f").stat().st_mode)
