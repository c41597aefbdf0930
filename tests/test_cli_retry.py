"""Re-run what failed (issue 14 item 3, ansible's retry files): every ``asyncjobs invoke``
records its hosts and their outcome in this machine's job host; ``-H @failed`` / ``@last``
(``:ID``) name them again, ``asyncjobs get --kind RemoteJob`` lists the invokes. The command
line as a subprocess against the real sshd test hosts, in a HOME of the test's own; for every
bad input, proof that nothing connected."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from tests import test_cli_operator as operator
from tests.test_cli_groups import SERVER_PORT, run, tagged
from tests.test_cli_operator import Home, accepted, summary

home = operator.home
listener = operator.listener


def invokes(home: Home) -> list[dict[str, Any]]:
    listed = run(home, "get", "--kind", "RemoteJob", "--json")
    assert listed.rc == 0, listed
    jobs: list[dict[str, Any]] = listed.doc()["jobs"]
    return jobs


def test_failed_reaches_exactly_the_hosts_that_failed_and_last_all(home: Home) -> None:
    # web01 and web04 are on the same test host: the command fails there only
    port = home.port(1)
    failing = f'test "${{SSH_CONNECTION##* }}" != {port} || exit 3'
    first = run(home, "invoke", "-H", "web[01-04]", "--", failing)
    assert first.rc == 3, first
    assert sorted(row[:4] for row in summary(first)) == [
        ["web[01,04]", "2", "Failed", "3"], ["web[02-03]", "2", "Completed", "0"]
    ]  # fmt: skip
    assert "not recorded" not in first.err

    again = run(home, "invoke", "-H", "@failed", "--", SERVER_PORT)
    assert again.rc == 0, again
    assert tagged(again) == {"web01": str(port), "web04": str(port)}

    everyone = run(home, "invoke", "-H", "@last", "--", SERVER_PORT)  # the last: web01, web04
    assert tagged(everyone) == {"web01": str(port), "web04": str(port)}

    listed = invokes(home)
    assert [(j["kind"], j["state"], j["location"]) for j in listed] == [
        ("RemoteJob", "Failed", "web[01-04]"),
        ("RemoteJob", "Completed", "web[01,04]"),
        ("RemoteJob", "Completed", "web[01,04]"),
    ]
    assert listed[0]["command"] == failing and listed[1]["command"] == SERVER_PORT
    older = listed[0]["id"]

    # an older invoke by its id: its failed hosts, and all of them
    retry = run(home, "invoke", "-H", f"@failed:{older}", "-x", "web04", "--", SERVER_PORT)
    assert tagged(retry) == {"web01": str(port)}, retry
    all_of = run(home, "invoke", "-H", f"@last:{older}", "--", SERVER_PORT)
    assert tagged(all_of) == {f"web{i:02d}": str(home.port(i)) for i in range(1, 5)}

    table = run(home, "get", "--kind", "RemoteJob")  # the job table: Id, Name, Kind, ...
    assert table.rc == 0, table
    header, _rule, *rows = table.out.splitlines()
    assert header.split() == ["Id", "Name", "Kind", "State", "HasMoreData", "Location", "Command"]
    assert len(rows) == 5 and all("RemoteJob" in row for row in rows), table.out
    assert f"Job{older}" in rows[0] and "web[01-04]" in rows[0]
    # the other kinds are not among them
    assert run(home, "get", "--kind", "BackgroundJob").out.strip() == ""


def test_failed_when_the_last_invoke_had_none_says_so(home: Home) -> None:
    ok = run(home, "invoke", "-H", "web[01-02]", "--", "true")
    assert ok.rc == 0, ok
    (listed,) = invokes(home)
    got = run(home, "invoke", "-H", "@failed", "--", "true")
    got.error_line(f"the last invoke ({listed['id']}) had no failed hosts")
    assert got.rc == 2 and got.out == "", got
    by_id = run(home, "invoke", "-H", f"@failed:{listed['id']}", "--", "true")
    by_id.error_line(f"invoke {listed['id']} had no failed hosts")
    assert by_id.rc == 2


def test_bad_previous_invokes_exit_2_and_nothing_connects(
    home: Home, listener: socket.socket
) -> None:
    bad = f"127.0.0.1:{listener.getsockname()[1]}"
    none_yet = run(home, "invoke", "-H", f"{bad},@failed", "--", "true")
    none_yet.error_line("@failed: no invoke is recorded yet")
    assert none_yet.rc == 2 and none_yet.out == "", none_yet
    last = run(home, "invoke", "-H", "@last", "-H", bad, "--", "true")
    last.error_line("@last: no invoke is recorded yet")
    unknown = run(home, "invoke", "-H", f"{bad},@failed:99", "--", "true")
    unknown.error_line(
        "@failed:99: there is no invoke 99; asyncjobs get --kind RemoteJob lists them"
    )
    assert unknown.rc == 2 and unknown.out == "", unknown
    word = run(home, "invoke", "-H", f"{bad},@last:x", "--", "true")
    word.error_line("@last:x: write @last:ID")
    assert word.rc == 2
    time.sleep(0.2)
    assert not accepted(listener)


def test_an_invoke_whose_job_host_cant_be_reached_runs_and_says_it_was_not_recorded(
    home: Home, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env_dir = blocker / "jobhost"  # its parent is a file: no job host can live there
    import subprocess
    import sys

    env = home.env()
    env["ASYNCJOBS_HOST_DIR"] = str(env_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "invoke", "-H", "web01", "--", "echo ran"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc
    assert proc.stdout == "web01: ran\n"
    (line,) = [x for x in proc.stderr.splitlines() if "not recorded" in x]
    assert line.startswith("asyncjobs: this invoke was not recorded (-H @failed and @last")
