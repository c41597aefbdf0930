"""output="json": stdout lines parsed as JSON into data records; local commands on both
backends, remote commands against real sshd; the faults of issue 15 (truncated, 10 MB and
over-long lines, non-UTF-8) and a ``block`` buffer's backpressure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import Buffer, JobArgumentError, JobManager, JobState, Record
from asyncjobs._core.jsonlines import JSON_MAX_LINE, JsonLineError, JsonLines
from asyncjobs._core.models import StreamName
from tests.ssh_fixtures import on_hosts
from tests.testhosts import TestHosts

MIXED = (
    "printf '%s\\n' '{\"a\": 1, \"b\": [true, null]}' '\"text\"' 'not json' '' "
    "'{\"cut\": ' 3.5; printf '\\377\\376\\n'; printf '[1]'"
)


def check_mixed(records: list[Record], where: str) -> None:
    """What ``MIXED`` prints becomes, in order (the blank line 4 is skipped)."""
    got = [(r.stream, r.value) for r in records]
    assert [s for s, _ in got] == [
        "output",
        "output",
        "error",
        "error",
        "output",
        "error",
        "output",
    ]
    assert got[0][1] == {"a": 1, "b": [True, None]} and got[1][1] == "text"
    assert got[4][1] == 3.5 and got[6][1] == [1]  # the last line had no newline
    errors = [v for s, v in got if s == "error"]
    assert all(isinstance(e, JsonLineError) for e in errors)
    assert [(e.lineno, e.line) for e in errors] == [
        (3, "not json"),
        (5, '{"cut": '),
        (7, b"\xff\xfe"),
    ]
    assert str(errors[0]).startswith(f"{where}: stdout line 3 is not JSON (Expecting value")
    assert "not UTF-8" in str(errors[2])
    assert errors[1].to_dict() == {
        "error": str(errors[1]), "lineno": 5, "line": '{"cut": '
    }  # fmt: skip


async def test_local_command_lines_become_data_records(anyio_backend: str) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command(MIXED, output="json", name="mixed")
        await job.wait()
        assert job.state is JobState.COMPLETED  # bad lines are records, not a failure
        check_mixed(await job.receive_records(streams=None), "job 1 ('mixed')")


async def test_local_stderr_stays_text(anyio_backend: str) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("echo '{\"x\": 2}'; echo '{\"e\": 1}' >&2", output="json")
        await job.wait()
        records = await job.receive_records(streams=None)
        assert sorted((r.stream, repr(r.value)) for r in records) == [
            ("error", repr('{"e": 1}')),
            ("output", repr({"x": 2})),
        ]


async def test_a_10_mb_line_is_one_record(anyio_backend: str) -> None:
    code = "import json, sys; sys.stdout.write(json.dumps({'blob': 'x' * 10_000_000}) + '\\n')"
    async with JobManager() as jobs:
        job = await jobs.start_command([sys.executable, "-c", code], output="json")
        [value] = await job
        assert value == {"blob": "x" * 10_000_000}


async def test_a_line_over_the_limit_comes_in_pieces(anyio_backend: str) -> None:
    n = JSON_MAX_LINE * 2 + 123
    code = f"import sys; sys.stdout.write('[' + '1,' * ({n} // 2) + '1]\\n{{}}\\n')"
    async with JobManager() as jobs:
        job = await jobs.start_command([sys.executable, "-c", code], output="json")
        await job.wait()
        records = await job.receive_records(streams=None)
    *pieces, last = records
    assert last.stream == "output" and last.value == {}
    assert [r.stream for r in pieces] == ["error"] * 3
    assert [r.value.piece for r in pieces] == [1, 2, 3]
    assert all(r.value.lineno == 1 for r in pieces)
    assert "longer than 16 MiB: not parsed, piece 1" in str(pieces[0].value)
    line = "".join(r.value.line for r in pieces)
    assert line == "[" + "1," * (n // 2) + "1]"  # nothing lost


async def test_bad_output_arguments(anyio_backend: str) -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match="output must be 'text'"):
            await jobs.start_command("true", output="yaml")
        with pytest.raises(JobArgumentError, match="needs lines=True"):
            await jobs.start_command("true", output="json", lines=False)
        assert jobs.get() == []


# -- the parser alone -------------------------------------------------------------------------


def feed_all(parse: JsonLines, chunks: list[bytes]) -> list[tuple[StreamName, Any]]:
    out = []
    for chunk in chunks:
        out += [(s, v) for s, values in parse.feed(chunk) for v in values]
    return out + [(s, v) for s, values in parse.flush() for v in values]


def test_lines_split_anywhere_parse_the_same() -> None:
    data = b'{"a": 1}\n[2, 3]\n"\xc3\xa9"\nnull\n'
    whole = feed_all(JsonLines("t"), [data])
    assert whole == [("output", {"a": 1}), ("output", [2, 3]), ("output", "é"), ("output", None)]
    for size in (1, 2, 3, 7):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed_all(JsonLines("t"), chunks) == whole


def test_data_only_and_nothing_lost() -> None:
    parse = JsonLines("host h1:22", max_line=64)
    got = feed_all(parse, [b'{"__class__": "os.system"}\n', b"[" * 5000 + b"\n", b"9" * 10, b"\n"])
    assert got[0] == ("output", {"__class__": "os.system"})  # a dict, nothing more
    # 5000 bytes on a 64-byte limit: pieces; a huge int would raise in json.loads, kept too
    assert {s for s, _ in got[1:-1]} == {"error"}
    assert b"".join(v.line.encode() for _, v in got[1:-1]) == b"[" * 5000
    assert got[-1] == ("output", 9_999_999_999)
    deep = feed_all(JsonLines("t"), [b"[" * 100_000 + b"]" * 100_000 + b"\n"])
    assert deep[0][0] == "error" and "nested too deep" in str(deep[0][1])
    assert parse.lineno == 3


# -- remote commands ---------------------------------------------------------------------------


@on_hosts
async def test_remote_lines_become_data_records(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[:2], MIXED, output="json", **ssh_hosts.ssh_options()
        )
        await parent.wait()
        for child in parent.children:
            assert child.state is JobState.COMPLETED
            records = await child.receive_records(streams=None)
            first_error = next(r.value for r in records if r.stream == "error")
            check_mixed(records, first_error.where)
            assert first_error.where.startswith("host ")
            assert child.location.rpartition(":")[2] in first_error.where  # its port


@on_hosts
async def test_remote_10_mb_line_and_truncated_end(ssh_hosts: TestHosts) -> None:
    code = (
        "import json, sys; sys.stdout.write(json.dumps({'blob': 'y' * 10_000_000}) + '\\n{\"x\"')"
    )
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0], ["python3", "-c", code], output="json", **ssh_hosts.ssh_options()
        )
        await parent.wait()
        [child] = parent.children
        records = await child.receive_records(streams=None)
    assert [r.stream for r in records] == ["output", "error"]
    assert records[0].value == {"blob": "y" * 10_000_000}
    assert records[1].value.line == '{"x"' and records[1].value.lineno == 2


@on_hosts
async def test_remote_block_buffer_holds_the_host(ssh_hosts: TestHosts) -> None:
    """Values (not lines) through the channel's backlog: every record once, in order."""
    command = 'i=0; while [ $i -lt 3000 ]; do echo "{\\"i\\": $i}"; i=$((i+1)); done; echo bad'
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[0], command, output="json",
            buffer=Buffer(max_items=50, mode="block"), **ssh_hosts.ssh_options(),
        )  # fmt: skip
        [child] = parent.children
        got = [r async for r in child.stream_records(streams=None)]
    assert [r.value for r in got[:-1]] == [{"i": i} for i in range(3000)]
    assert got[-1].stream == "error" and got[-1].value.line == "bad"


@on_hosts
async def test_invoke_checks_output_before_connecting(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match="output must be 'text'"):
            await jobs.invoke(ssh_hosts.targets, "true", output=json)  # type: ignore[arg-type]  # the module
        with pytest.raises(JobArgumentError, match="needs lines=True"):
            await jobs.invoke(ssh_hosts.targets, "true", output="json", lines=False)
        assert jobs.get() == []


# -- the command line ---------------------------------------------------------------------------

from tests import test_cli_operator as operator  # noqa: E402  # the CLI fixtures, after the rest

home = operator.home  # a HOME with the test key, known_hosts and ssh config (web01..)


def test_cli_parse_json_prints_json_lines_with_the_host(home: operator.Home) -> None:
    run = home.run(
        "invoke", "-H", "web01,web02", "--parse", "json", "--clock", "--probe",
        "--", "printf", "%s\\n", '{"ops": 12.5}', "oops", "[1, 2]",
    )  # fmt: skip
    assert run.rc == 0, run
    rows = [json.loads(line) for line in run.out.splitlines()]
    for host in ("web01", "web02"):
        mine = [r for r in rows if r["host"] == host]
        assert mine[:3] == [
            {"host": host, "data": {"ops": 12.5}},
            {"host": host, "lineno": 2, "line": "oops", "error": mine[1]["error"]},
            {"host": host, "data": [1, 2]},
        ]
        assert "stdout line 2 is not JSON" in mine[1]["error"]
        facts = mine[3]
        assert abs(facts["clock"]["offset"]) <= facts["clock"]["error"]
        assert facts["host_info"]["cpu_count"] == os.cpu_count()


def test_cli_clock_and_probe_say_what_they_found_on_stderr(home: operator.Home) -> None:
    run = home.run("invoke", "-H", "web01", "--clock", "--probe", "--", "echo hi")
    assert run.rc == 0, run
    assert run.out.splitlines() == ["web01: hi"]
    assert "web01: clock +" in run.err or "web01: clock -" in run.err
    assert f"{os.cpu_count()} CPUs" in run.err


def test_cli_harness_flags_need_hosts(home: operator.Home) -> None:
    for flag in ("--clock", "--probe"):
        run = home.run("invoke", flag, "--", "true")
        run.error_line(flag, "-H")
    run = home.run("invoke", "--parse", "yaml", "-H", "web01", "--", "true")
    assert run.rc == 2 and "'yaml' is not 'json'" in run.err


def test_cli_parse_json_without_hosts(home: operator.Home, hostdir: Path) -> None:
    """Without -H the command runs on this machine's job host; its lines are parsed here."""
    run = home.run(
        "invoke", "--parse", "json", "--", "printf", "%s\\n", '{"ops": 3}', "oops", "7"
    )  # fmt: skip
    assert run.rc == 0, run
    rows = [json.loads(line) for line in run.out.splitlines()]
    host = rows[0]["host"]
    assert rows == [
        {"host": host, "data": {"ops": 3}},
        {"host": host, "error": rows[1]["error"], "lineno": 2, "line": "oops"},
        {"host": host, "data": 7},
    ]
    assert "stdout line 2 is not JSON" in rows[1]["error"]
