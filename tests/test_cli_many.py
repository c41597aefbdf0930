"""The job commands on many hosts (issue 14 item 8): ``start``, ``get``, ``wait``, ``receive``,
``stop`` and ``remove`` with ``-H HOSTS`` (ranges, groups, ``-x``), a host that is down among
the others, ``receive --from SEQ``, ``remove --state`` / ``--name``, ``session remove``.

The command line runs as a subprocess, as a user runs it, against the real sshd test hosts
(``webNN`` of ``test_cli_operator``'s HOME) and against a private local job host. Run as root,
the test hosts share one home and so one job host: every host then sees the jobs started
through the others, so these tests pick their jobs by names of their own and assert what holds
either way (each host a job host of its own, or one shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import test_cli_operator as operator
from tests.test_cli_groups import run, write_groups
from tests.test_cli_operator import Home, Run
from tests.testhosts import TestHosts

home = operator.home  # a HOME with the test key, known_hosts and ~/.ssh/config: web01..web12

WEB = "web[01-03]"  # one host of each of the three test hosts
HOSTS = ["web01", "web02", "web03"]


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def doc(got: Run) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(got.out.splitlines()[-1])
    assert document["exit_status"] == got.rc, got
    return document


def pairs(document: dict[str, Any]) -> set[tuple[str, int]]:
    """The (host, id) of the jobs of a document."""
    return {(job["host"], job["id"]) for job in document["jobs"]}


def summary_rows(got: Run) -> list[list[str]]:
    """The rows of the hosts' summary on stderr (``Hosts Count ExitStatus Reason``)."""
    lines = got.err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Hosts "))
    rows = []
    for line in lines[start + 2 :]:
        if " hosts: " in line:
            break
        rows.append([cell.strip() for cell in line.split("  ") if cell.strip()])
    return rows


# -- start, get, wait, receive, stop on a range ---------------------------------------------


def test_start_on_three_hosts_then_get_wait_receive_stop_on_the_range(home: Home) -> None:
    name = unique("many")
    started = run(home, "start", "-H", WEB, "--name", name, "--json", "--", "sleep 0.3; echo hi")
    assert started.rc == 0, started
    jobs = doc(started)["jobs"]
    assert [job["host"] for job in jobs] == HOSTS  # a job per host, in the order given
    assert {job["name"] for job in jobs} == {name}
    assert doc(started)["failures"] == []
    mine = pairs(doc(started))
    ids = {job_id for _, job_id in mine}

    table = run(home, "start", "-H", WEB, "--name", name, "--", "true")  # for people: Host first
    assert table.rc == 0, table
    head, rule, *rows = table.out.splitlines()
    assert head.split()[:3] == ["Host", "Id", "Name"] and rule.startswith("----  ")
    assert [row.split()[0] for row in rows] == HOSTS

    listed = run(home, "get", "-H", WEB, "--name", name, "--json")
    assert listed.rc == 0, listed
    assert {host for host, _ in pairs(doc(listed))} == set(HOSTS)
    assert mine <= pairs(doc(listed))  # each host lists the job started on it

    waited = run(home, "wait", "-H", WEB, "--name", name, "--timeout", "60", "--json")
    assert waited.rc == 0, waited
    assert mine <= pairs(doc(waited))
    assert {job["state"] for job in doc(waited)["jobs"]} == {"Completed"}

    # --from consumes nothing: each host's records, tagged with it
    again = run(home, "receive", "-H", WEB, "--name", name, "--from", "0")
    assert again.rc == 0, again
    lines = again.out.splitlines()
    assert {line.partition(": ")[0] for line in lines} == set(HOSTS)
    assert {line.partition(": ")[2] for line in lines} == {"hi"}

    # a plain receive takes each record once, whichever host's connection it came through
    got = run(home, "receive", "-H", WEB, "--name", name, "--json")
    assert got.rc == 0, got
    records = [r for r in doc(got)["records"] if r["job_id"] in ids]
    assert len(records) == 3 and {r["value"] for r in records} == {"hi"}
    assert {r["host"] for r in records} <= set(HOSTS)
    assert {r["job_id"] for r in records} == ids
    empty = run(home, "receive", "-H", WEB, "--name", name, "--json")
    assert [r for r in doc(empty)["records"] if r["job_id"] in ids] == []

    long = unique("long")
    assert run(home, "start", "-H", WEB, "--name", long, "--", "sleep 300").rc == 0
    stopped = run(home, "stop", "-H", WEB, "--name", long, "--json")
    assert stopped.rc == 0, stopped
    assert {job["host"] for job in doc(stopped)["jobs"]} == set(HOSTS)
    assert {job["state"] for job in doc(stopped)["jobs"]} == {"Stopped"}
    removed = run(home, "remove", "-H", WEB, "--name", f"{name}*", "--throttle", "1")
    assert removed.rc == 0, removed
    run(home, "remove", "-H", WEB, "--name", long, "--throttle", "1")


def test_groups_and_exclusions_pick_the_hosts(home: Home) -> None:
    write_groups(home, "web: web[01-04]\n")
    name = unique("grp")
    started = run(
        home, "start", "-H", "@web", "-x", "web02", "--name", name, "--json", "--", "true"
    )
    assert started.rc == 0, started
    assert [job["host"] for job in doc(started)["jobs"]] == ["web01", "web03", "web04"]
    listed = run(home, "get", "-H", "@web", "-x", "web[02-03]", "--name", name, "--json")
    assert {host for host, _ in pairs(doc(listed))} == {"web01", "web04"}
    run(home, "wait", "-H", "@web", "--name", name, "--timeout", "30")
    run(home, "remove", "-H", "@web", "--name", name, "--throttle", "1")


def test_an_id_is_a_job_of_each_host_and_one_missing_everywhere_folds(home: Home) -> None:
    missing = run(home, "wait", "99999999", "-H", WEB, "--timeout", "5")
    assert missing.rc == 1, missing
    assert summary_rows(missing) == [
        [
            "web[01-03]",
            "3",
            "1",
            "no job with id 99999999 on this job host; 'asyncjobs get' lists them",
        ]
    ]
    assert "3 hosts: 3 failed" in missing.err
    as_json = run(home, "stop", "99999999", "-H", WEB, "--json")
    failures = doc(as_json)["failures"]
    assert [(f["host"], f["id"], f["type"]) for f in failures] == [
        (host, 99999999, "NoSuchJob") for host in HOSTS
    ]
    assert doc(as_json)["error"]["type"] == "NoSuchJob" and as_json.rc == 1
    both = run(home, "wait", "1", "--name", "x", "-H", WEB)
    assert both.rc == 2 and "takes job IDs or --name, not both" in both.err, both


# -- a host that is down among three --------------------------------------------------------


@pytest.fixture
def dying(home: Home, fresh_ssh_host: TestHosts) -> TestHosts:
    """``dying``: a test host of its own (yours to kill), in the HOME's config and known_hosts."""
    host = fresh_ssh_host.hosts[0]
    home.config(
        f"Host dying\n  HostName 127.0.0.1\n  Port {host.port}\n"
        f"  User {fresh_ssh_host.username}\n  IdentityFile {fresh_ssh_host.client_key}\n"
        f"  IdentityFile {home.ssh / 'id_ed25519'}\n"
    )
    kind, key = fresh_ssh_host.host_public_key(0).split()[:2]
    with (home.ssh / "known_hosts").open("a") as known:
        known.write(f"[127.0.0.1]:{host.port} {kind} {key}\n")
    return fresh_ssh_host


def test_one_host_down_fails_its_row_and_the_exit_status_only(home: Home, dying: TestHosts) -> None:
    three = "web01,dying,web02"
    name = unique("down")
    started = run(home, "start", "-H", three, "--name", name, "--json", "--", "sleep 1; echo up")
    assert started.rc == 0, started
    assert [job["host"] for job in doc(started)["jobs"]] == ["web01", "dying", "web02"]
    dying.kill(0)  # sshd gone: the job host there lives on, but nobody reaches it

    listed = run(home, "get", "-H", three, "--name", name)
    assert listed.rc == 1, listed
    hosts = {line.split()[0] for line in listed.out.splitlines()[2:]}
    assert hosts == {"web01", "web02"}  # the others' jobs, all of them
    rows = summary_rows(listed)
    assert ["web[01-02]", "2", "0"] in rows
    [down] = [row for row in rows if row[0] == "dying"]
    assert down[1:3] == ["1", "1"] and "connection refused" in down[3], listed.err
    assert "3 hosts: 2 ok, 1 failed" in listed.err

    for args in (
        ["wait", "--name", name, "--timeout", "60"],
        ["receive", "--name", name, "--wait"],
        ["stop", "--name", name],
    ):
        got = run(home, *args, "-H", three, "--json")
        assert got.rc == 1, (args, got)
        document = doc(got)
        [failure] = document["failures"]
        assert failure["host"] == "dying" and failure["id"] is None
        assert "connection refused" in failure["message"] and failure["type"] == "ConnectionFailed"
        assert {"web01", "web02"} <= {job["host"] for job in document["jobs"]}, args
        assert "asyncjobs: host dying (" in got.err  # with --json: a line per failure, on stderr
    run(home, "remove", "-H", "web01,web02", "--name", name, "--throttle", "1")

    refused = run(home, "start", "-H", three, "--name", name, "--", "true")
    assert refused.rc == 1, refused
    assert [line.split()[0] for line in refused.out.splitlines()[2:]] == ["web01", "web02"]
    assert any(
        row[0] == "dying" and "connection refused" in row[3] for row in summary_rows(refused)
    )
    run(home, "remove", "-H", "web01,web02", "--name", name, "--throttle", "1")


# -- receive --from SEQ ----------------------------------------------------------------------


def _from_twice(call: Any, where: list[str]) -> None:
    started = call("start", *where, "--json", "--", "seq 1 5")
    [job] = doc(started)["jobs"]
    job_id = str(job["id"])
    assert call("wait", job_id, *where, "--timeout", "30").rc == 0
    first = call("receive", job_id, "--from", "2", *where, "--json")
    second = call("receive", job_id, "--from", "2", *where, "--json")
    assert first.rc == second.rc == 0, (first, second)
    got = [(r["seq"], r["value"]) for r in doc(first)["records"]]
    assert got == [(2, "3"), (3, "4"), (4, "5")]
    assert [(r["seq"], r["value"]) for r in doc(second)["records"]] == got
    assert {r["host"] for r in doc(first)["records"]} == {job["host"]}
    text = call("receive", job_id, "--from", "4", *where)
    assert text.out == "5\n", text
    plain = call("receive", job_id, *where)  # nothing was consumed
    assert plain.out == "1\n2\n3\n4\n5\n", plain
    assert call("receive", job_id, *where).out == ""
    assert doc(call("receive", job_id, "--from", "0", *where, "--json"))["records"][0]["seq"] == 0
    follow = call("receive", job_id, "--from", "3", "--wait", *where)
    assert follow.rc == 0 and follow.out == "4\n5\n", follow
    call("remove", job_id, *where)


def test_receive_from_twice_gives_the_same_records_and_consumes_nothing_remote(
    home: Home,
) -> None:
    _from_twice(lambda *args: run(home, *args), ["-H", "web01"])


def test_receive_from_twice_gives_the_same_records_and_consumes_nothing_here(
    hostdir: Path,
) -> None:
    _from_twice(local, [])


# -- remove --state / --name, a missing id among several --------------------------------------


def local(*args: str, timeout: float = 60) -> Run:
    """``asyncjobs ARGS`` on this machine's job host (``hostdir``'s)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_remove_by_state_and_name_and_a_missing_id_among_several_here(hostdir: Path) -> None:
    ids = {}
    for name, command in [("bench-1", "true"), ("bench-2", "true"), ("keep", "true"),
                          ("bench-run", "sleep 300")]:  # fmt: skip
        ids[name] = doc(local("start", "--name", name, "--json", "--", command))["jobs"][0]["id"]
    assert local("wait", "--name", "bench-[12]", "--timeout", "30").rc == 0
    assert local("wait", "--name", "keep", "--timeout", "30").rc == 0
    named = local("remove", "--name", "bench-*", "--state", "completed", "--json")
    assert named.rc == 0, named
    assert sorted(job["id"] for job in doc(named)["jobs"]) == [ids["bench-1"], ids["bench-2"]]
    running = local("remove", "--name", "bench-*")  # bench-run runs: reported, not removed
    assert running.rc == 1, running
    running.error_line(
        f"job {ids['bench-run']} ('bench-run') is Running; stop it first or pass --force"
    )
    nothing = local("remove", "--name", "nothing-matches-*", "--json")
    assert nothing.rc == 0 and doc(nothing)["jobs"] == [], nothing
    completed = local("remove", "--state", "completed", "--json")
    assert [job["name"] for job in doc(completed)["jobs"]] == ["keep"]
    assert [job["name"] for job in doc(local("get", "--json"))["jobs"]] == ["bench-run"]

    a = doc(local("start", "--json", "--", "true"))["jobs"][0]["id"]
    b = doc(local("start", "--json", "--", "true"))["jobs"][0]["id"]
    local("wait", str(a), str(b), "--timeout", "30")
    several = local("remove", str(a), "99999", str(b), "--json")
    assert several.rc == 1, several
    document = doc(several)
    assert [job["id"] for job in document["jobs"]] == [a, b]  # the rest removed
    assert [(f["id"], f["type"]) for f in document["failures"]] == [(99999, "NoSuchJob")]
    assert document["error"]["type"] == "NoSuchJob" and document["ok"] is False
    several.error_line("no job with id 99999 on this job host")
    assert [job["id"] for job in doc(local("get", "--json"))["jobs"]] == [ids["bench-run"]]
    assert local("remove", "--name", "bench-*", "--force").rc == 0
    usage = local("remove")
    assert usage.rc == 2 and "remove needs job IDs or --state STATE or --name NAME" in usage.err


def test_remove_by_state_and_name_on_many_hosts(home: Home) -> None:
    stem = unique("bench")
    started = set()
    for i in (1, 2):
        got = run(home, "start", "-H", WEB, "--name", f"{stem}-{i}", "--json", "--", "true")
        started |= pairs(doc(got))
    long = run(home, "start", "-H", "web01", "--name", f"{stem}-run", "--json", "--", "sleep 300")
    assert run(home, "wait", "-H", WEB, "--name", f"{stem}-[12]", "--timeout", "30").rc == 0
    # one host after another: hosts that share a job host find each job once
    removed = run(home, "remove", "-H", WEB, "--throttle", "1", "--state", "completed",
                  "--name", f"{stem}-*", "--json")  # fmt: skip
    assert removed.rc == 0, removed
    ids = {job_id for _, job_id in started}
    assert sorted(job["id"] for job in doc(removed)["jobs"]) == sorted(ids)
    assert {job["host"] for job in doc(removed)["jobs"]} <= set(HOSTS)
    left = run(home, "get", "-H", WEB, "--name", f"{stem}-*", "--json")
    assert {job["name"] for job in doc(left)["jobs"]} == {f"{stem}-run"}
    [run_id] = [job["id"] for job in doc(long)["jobs"]]
    one = doc(run(home, "start", "-H", "web01", "--json", "--", "true"))["jobs"][0]["id"]
    run(home, "wait", str(one), "-H", "web01", "--timeout", "30")
    several = run(home, "remove", str(one), "99999999", str(run_id), "-H", "web01", "--force")
    assert several.rc == 1, several
    several.error_line("no job with id 99999999 on this job host")
    gone = run(home, "get", "-H", "web01", "--name", f"{stem}-*", "--json")
    assert doc(gone)["jobs"] == []


# -- session remove --------------------------------------------------------------------------


def _session_remove(call: Any, where: list[str]) -> None:
    session = unique("nightly")
    job = doc(call("start", *where, "--session", session, "--json", "--", "sleep 300"))["jobs"][0]
    listed = doc(call("session", "list", *where, "--json"))["sessions"]
    assert session in [s["name"] for s in listed]
    removed = call("session", "remove", session, *where, "--json")
    assert removed.rc == 0 and removed.err == "", removed
    assert [s["name"] for s in doc(removed)["sessions"]] == [session]
    after = doc(call("session", "list", *where, "--json"))["sessions"]
    assert session not in [s["name"] for s in after]
    [info] = [j for j in doc(call("get", *where, "--json"))["jobs"] if j["id"] == job["id"]]
    assert info["state"] == "Stopped"  # its jobs were stopped, and are still there
    missing = call("session", "remove", session, *where)
    assert missing.rc == 1, missing
    missing.error_line(f"no session named {session!r} on this job host; sessions: ")
    call("remove", str(job["id"]), *where)


def test_session_remove_closes_a_named_session_here(hostdir: Path) -> None:
    _session_remove(local, [])


def test_session_remove_closes_a_named_session_on_a_remote_job_host(home: Home) -> None:
    _session_remove(lambda *args: run(home, *args), ["-H", "web02"])
