"""Arguments refused before anything runs, with the same rules and messages wherever the call is
made: ``JobManager``, a ``Job``, ``session.jobs`` on a real job host (checked before sending:
the session stays usable), the host's own check of what ``CommandSpec.build`` is given, and
the protocol's field checks (issue 10, items 4, 7 and 8)."""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import JobArgumentError, JobManager, JobState, ProtocolError
from asyncjobs._host.client import HostJobs, HostSession, connect_local
from asyncjobs._host.protocol import START_COMMAND, validate_args
from asyncjobs._local.command import CommandSpec

pytestmark = pytest.mark.anyio

NAN = float("nan")

# -- NUL bytes (item 7) and the other start_command arguments ------------------------------------

#: start_command(command, **kwargs) → a regex the JobArgumentError must match (it names the
#: argument, the element for argv, and the value). Refused alike locally and on a job host.
BAD_STARTS: list[tuple[Any, dict[str, Any], str]] = [
    (["echo", "a\0b"], {}, r"command\[1\] holds a NUL byte: 'a\\x00b'.*remove it"),
    (["\0echo"], {}, r"command\[0\] holds a NUL byte"),
    ("echo a\0b", {}, r"command holds a NUL byte at index 6: 'echo a\\x00b'.*remove it"),
    (["echo"], {"cwd": "/tmp\0x"}, r"cwd holds a NUL byte: '/tmp\\x00x'"),
    (["echo"], {"env": {"A\0": "1"}}, r"env must map str to str: 'A\\x00' is not a valid"),
    (["echo"], {"env": {"A": "1\0"}}, r"env\['A'\] must be a str without NUL, got str: '1\\x00'"),
    (["echo"], {"env": {"A": 1}}, r"env\['A'\] must be a str without NUL, got int: 1"),
    (["echo"], {"env": {"A=B": "1"}}, r"env must map str to str: 'A=B' is not a valid"),
    (["echo"], {"env": {"": "1"}}, r"env must map str to str: '' is not a valid"),
    (["echo"], {"env": ["A"]}, r"env must be a mapping of str to str, got \['A'\]"),
    (["cat"], {"input": 42}, r"input must be bytes, str or an iterable of lines.*got int: 42"),
    (["cat"], {"input": ["ok", 7]}, r"input line 1 must be str or bytes, got int: 7"),
    (["echo"], {"name": 3}, r"name must be a str, got int: 3"),
    (["echo"], {"name": b"n"}, r"name must be a str, got bytes: b'n'"),
    ([], {}, r"empty argv"),
    ("  ", {}, r"empty command string"),
    (["ls", 3], {}, r"command\[1\] must be a str, got int: 3"),
]


@pytest.mark.parametrize(("command", "kwargs", "match"), BAD_STARTS)
async def test_start_command_refuses_bad_arguments_and_makes_no_job(
    command: Any, kwargs: dict[str, Any], match: str
) -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=match):
            await jobs.start_command(command, **kwargs)
        assert jobs.get() == []


def test_the_job_host_refuses_nul_bytes_in_what_it_builds() -> None:
    """The job host makes its command jobs with ``CommandSpec.build``: the same refusals."""
    for command, kwargs, match in BAD_STARTS:
        if "name" in kwargs:
            continue  # the host's job table checks the name, not CommandSpec
        args: dict[str, Any] = {"cwd": None, "env": None, "input": None, **kwargs}
        with pytest.raises(JobArgumentError, match=match):
            CommandSpec.build(command, stop_grace=5.0, **args)


async def test_nul_free_arguments_still_run(tmp_path: Path) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command(
            ["sh", "-c", 'echo "$A" "$1"; pwd; cat', "sh", "x"],
            cwd=tmp_path,
            env={"A": "a"},
            input=["in"],
        )
        assert await job == ["a x", str(tmp_path), "in"]


# -- seconds: NaN, negative, infinite (item 8) --------------------------------------------------


@pytest.mark.parametrize("timeout", [NAN, -1, -0.5, "1", True, -math.inf])
async def test_wait_refuses_a_timeout_that_is_not_seconds(timeout: Any) -> None:
    gate = threading.Event()
    async with JobManager() as jobs:
        job = await jobs.start_thread(gate.wait, 10)
        message = f"timeout must be a number of seconds >= 0 or None (no limit), got {timeout!r}"
        with pytest.raises(JobArgumentError, match=re.escape(message)):
            await jobs.wait(job, timeout=timeout)
        with pytest.raises(JobArgumentError, match="timeout must be a number of seconds"):
            await job.wait(timeout=timeout)
        gate.set()
        assert await jobs.wait(job, timeout=math.inf) == [job]  # infinity: no limit, like None
        assert await job.wait(timeout=math.inf)


async def test_stop_grace_must_be_finite_seconds() -> None:
    for grace in (NAN, math.inf, -1, "5"):
        with pytest.raises(JobArgumentError, match=r"stop_grace must be a finite number"):
            JobManager(stop_grace=grace)  # type: ignore[arg-type]
    async with JobManager() as jobs:
        for grace in (NAN, math.inf, -1):
            with pytest.raises(JobArgumentError, match=r"stop_grace must be a finite number"):
                await jobs.start_command(["true"], stop_grace=grace)
        assert jobs.get() == []


async def test_invoke_refuses_nan_seconds_before_connecting() -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"timeout must be a number of seconds"):
            await jobs.invoke("nowhere.invalid", "true", timeout=NAN)
        with pytest.raises(JobArgumentError, match=r"stop_grace must be a finite number"):
            await jobs.invoke("nowhere.invalid", "true", stop_grace=NAN)
        assert jobs.get() == []


async def test_read_records_refuses_a_bad_position_or_limit() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_thread(lambda: [1, 2, 3])
        await job.wait()
        with pytest.raises(JobArgumentError, match=r"from_seq must be an int >= 0, got -5"):
            job.read_records(-5)
        with pytest.raises(JobArgumentError, match=r"limit must be an int >= 1 or None"):
            job.read_records(0, limit=0)
        with pytest.raises(JobArgumentError, match=r"unknown stream\(s\) 'nope'"):
            job.read_records(0, streams=["nope"])  # type: ignore[list-item]
        assert [r.value for r in job.read_records(0, limit=1)] == [[1, 2, 3]]


# -- session.jobs: refused before sending, the session goes on (item 4) -------------------------

HostCall = Callable[[HostJobs, int], Awaitable[Any]]

#: A call on session.jobs (given the id of a finished job) → what the error must match.
BAD_HOST_CALLS: list[tuple[str, HostCall, str]] = [
    ("env int", lambda j, _: j.start_command(["echo"], env={"A": 1}), r"env\['A'\].*got int: 1"),  # type: ignore[dict-item]
    ("input int", lambda j, _: j.start_command(["cat"], input=42), r"input must be.*got int: 42"),  # type: ignore[arg-type]
    ("input gen", lambda j, _: j.start_command(["cat"], input=(x for x in "ab")), r"input.*list"),  # type: ignore[arg-type]
    ("argv NUL", lambda j, _: j.start_command(["echo", "a\0"]), r"command\[1\] holds a NUL byte"),
    ("shell NUL", lambda j, _: j.start_command("echo \0"), r"command holds a NUL byte at index 5"),
    ("cwd NUL", lambda j, _: j.start_command(["echo"], cwd="/\0"), r"cwd holds a NUL byte"),
    ("cwd int", lambda j, _: j.start_command(["echo"], cwd=3), r"cwd must be a path.*got 3"),  # type: ignore[arg-type]
    ("env NUL", lambda j, _: j.start_command(["echo"], env={"A": "\0"}), r"env\['A'\].*NUL"),
    ("name int", lambda j, _: j.start_command(["echo"], name=3), r"name must be a str, got int"),  # type: ignore[arg-type]
    ("argv empty", lambda j, _: j.start_command([]), r"empty argv"),
    ("wait -1", lambda j, i: j.wait(i, timeout=-1), r"timeout must be .*, got -1"),
    ("wait nan", lambda j, i: j.wait(i, timeout=NAN), r"timeout must be .*, got nan"),
    ("wait str", lambda j, i: j.wait(i, timeout="1"), r"timeout must be .*, got '1'"),  # type: ignore[arg-type]
    ("job 0", lambda j, _: j.job(0), r"job must be a job id \(an int >= 1\).*got int: 0"),
    ("job -1", lambda j, _: j.job(-1), r"job must be a job id.*got int: -1"),
    ("job True", lambda j, _: j.job(True), r"job must be a job id.*got bool: True"),
    ("job str", lambda j, _: j.job("1"), r"job must be a job id.*got str: '1'"),  # type: ignore[arg-type]
    ("wait 0", lambda j, _: j.wait(0), r"job must be a job id.*got int: 0"),
    ("stop 0", lambda j, _: j.stop(0), r"job must be a job id.*got int: 0"),
    ("remove T", lambda j, _: j.remove(True), r"job must be a job id.*got bool"),
    ("read -5", lambda j, i: j.read(i, -5), r"from_seq must be an int >= 0, got -5"),
    ("read 1.0", lambda j, i: j.read(i, 1.0), r"from_seq must be an int >= 0, got 1.0"),  # type: ignore[arg-type]
    ("read nope", lambda j, i: j.read(i, 0, streams=["nope"]), r"unknown stream\(s\) 'nope'"),  # type: ignore[list-item]
    ("read []", lambda j, i: j.read(i, 0, streams=[]), r"streams must name at least one"),
    ("read lim 0", lambda j, i: j.read(i, 0, limit=0), r"limit must be an int >= 1 or None"),
    ("read lim T", lambda j, i: j.read(i, 0, limit=True), r"limit must be an int >= 1 or None"),
    ("recv nope", lambda j, i: j.receive_records(i, streams=["x"]), r"unknown stream\(s\) 'x'"),  # type: ignore[list-item]
    ("get name", lambda j, _: j.get(name=3), r"name must be a str, got int: 3"),  # type: ignore[arg-type]
]


async def still_usable(session: HostSession) -> None:
    """The session still works: a job starts there and its output is received."""
    job = await session.jobs.start_command(["echo", "still here"])
    [done] = await session.jobs.wait(job, timeout=30)
    assert done.state is JobState.COMPLETED
    assert await session.jobs.receive(job) == ["still here"]


async def test_session_jobs_refuses_bad_arguments_before_sending(hostdir: Path) -> None:
    wrong: list[str] = []
    async with connect_local(name="checks") as s:
        job = await s.jobs.start_command(["true"])
        await s.jobs.wait(job, timeout=30)
        for label, call, match in BAD_HOST_CALLS:
            try:
                await call(s.jobs, job.id)
            except JobArgumentError as exc:
                if not re.search(match, str(exc)):
                    wrong.append(f"{label}: {exc!r} does not match {match!r}")
            except Exception as exc:
                wrong.append(f"{label}: raised {exc!r}, not JobArgumentError")
            else:
                wrong.append(f"{label}: not refused")
            try:
                await still_usable(s)
            except Exception as exc:
                wrong.append(f"{label}: the session is not usable afterwards: {exc!r}")
                break
    assert wrong == []


async def test_session_jobs_says_what_job_manager_says(hostdir: Path, tmp_path: Path) -> None:
    """One rule, one message: the same bad start is refused in the same words."""
    async with JobManager() as jobs, connect_local(name="same") as s:
        for command, kwargs, _ in BAD_STARTS:
            with pytest.raises(JobArgumentError) as local:
                await jobs.start_command(command, **kwargs)
            with pytest.raises(JobArgumentError) as remote:
                await s.jobs.start_command(command, **kwargs)
            assert str(remote.value) == str(local.value)
        for timeout in (NAN, -1):
            with pytest.raises(JobArgumentError) as local:
                await jobs.wait(timeout=timeout)
            with pytest.raises(JobArgumentError) as remote:
                await s.jobs.wait(timeout=timeout)
            assert str(remote.value) == str(local.value)
        await still_usable(s)


async def test_session_jobs_accepts_what_job_manager_accepts(hostdir: Path) -> None:
    """Lines as input= (a list, as ``JobManager`` takes), an infinite timeout (no limit)."""
    async with connect_local(name="ok") as s:
        job = await s.jobs.start_command(["cat"], input=["a", "b"])
        [done] = await s.jobs.wait(job, timeout=math.inf)
        assert done.state is JobState.COMPLETED
        assert await s.jobs.receive(job) == ["a", "b"]
        job = await s.jobs.start_command(["cat"], input=("c\n", b"d"), env={"A": "1"}, cwd="/")
        await s.jobs.wait(job, timeout=30)
        assert await s.jobs.receive(job) == ["c", "d"]
        assert [r.value for r in await s.jobs.read(job, 0, streams=["output"], limit=1)] == ["c"]


async def test_the_job_host_refuses_a_nul_cwd_sent_anyway(hostdir: Path) -> None:
    """A controller that skips the checks (another version, a raw client): the host's own
    ``CommandSpec.build`` refuses, answering that request; the session goes on."""
    async with connect_local(name="raw") as s:
        with pytest.raises(JobArgumentError, match=r"cwd holds a NUL byte"):
            await s._c.request(START_COMMAND, command=["echo"], cwd="/tmp\0x")
        await still_usable(s)


# -- the protocol's own field checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args", "match"),
    [
        ("start_command", {"command": ["echo", "a\0"]}, r"'command'\[1\] must hold no NUL byte"),
        ("start_command", {"command": "echo \0"}, r"'command' must hold no NUL byte"),
        ("start_command", {"command": ["echo"], "env": {"A": "\0"}}, r"'env'\['A'\] must hold no"),
        ("start_command", {"command": ["echo"], "env": {"A\0": "1"}}, r"'env' must.*name"),
        ("start_command", {"command": ["echo"], "env": {"A=B": "1"}}, r"'env' must.*name"),
        ("start_command", {"command": ["echo"], "env": {"": "1"}}, r"'env' must.*name"),
        ("start_command", {"command": ["echo"], "env": {"A": 1}}, r"'env' must be an object of"),
        ("wait", {"jobs": [], "timeout": NAN}, r"'timeout' must be a finite number >= 0"),
        ("wait", {"jobs": [], "timeout": math.inf}, r"'timeout' must be a finite number >= 0"),
        ("wait", {"jobs": [], "timeout": 10**400}, r"'timeout' must be a finite number >= 0"),
        ("read", {"job": 1, "wait": NAN}, r"'wait' must be a finite number >= 0"),
        ("take", {"job": 1, "wait": -1}, r"'wait' must be a finite number >= 0"),
    ],
)
def test_the_protocol_refuses_what_no_job_can_run(
    op: str, args: dict[str, Any], match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        validate_args(op, args)


def test_the_protocol_passes_good_arguments() -> None:
    assert validate_args("wait", {"jobs": [1], "timeout": 0})["timeout"] == 0.0
    env = {"PATH": os.environ.get("PATH", ""), "EMPTY": ""}
    args = validate_args("start_command", {"command": ["echo", ""], "env": env})
    assert args["command"] == ["echo", ""] and args["env"] == env


async def test_get_refuses_a_name_pattern_that_is_not_a_str() -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"name must be a str, got int: 3"):
            jobs.get(name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": float("nan")}, "idle_timeout must be seconds > 0"),
        ({"idle_timeout": -1}, "idle_timeout must be seconds > 0"),
        ({"idle_timeout": float("inf")}, "idle_timeout must be seconds > 0"),
        ({"output_buffering": "spill"}, "output_buffering must be 'block', 'drop' or None"),
        ({"create": 1}, "create must be True or False"),
    ],
)
def test_connect_local_checks_its_session_options_as_connect_does(
    options: dict[str, Any], message: str
) -> None:
    from asyncjobs._host.client import connect_local

    with pytest.raises(JobArgumentError, match=message):
        connect_local("s", **options)
