"""Command jobs with real processes, on both backends: lines in, exit statuses out, stop that
escalates and reaps the whole process group, backpressure that reaches the program.

The line splitter is tested on its own first (pure, no processes)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from asyncjobs import (
    Buffer,
    BufferStatistics,
    CommandFailed,
    Job,
    JobArgumentError,
    JobFailed,
    JobManager,
    JobState,
    JobStopped,
)
from asyncjobs._core.clock import FakeClock
from asyncjobs._core.lines import MAX_LINE, Line, LineSplitter, input_chunks
from asyncjobs._core.log import RecordLog
from asyncjobs._core.runner import Body, Run, run_in_slot
from asyncjobs._local.command import CommandSpec, run_command

from .conftest import eventually, pid_alive, python

pytestmark = pytest.mark.anyio


async def first_output(job: Job) -> str:
    """The job's first output line, without consuming it."""
    await eventually(lambda: job.read_records(streams=["output"], limit=1), timeout=10)
    value = job.read_records(streams=["output"], limit=1)[0].value
    assert isinstance(value, str)
    return value


async def until_dead(pid: int) -> None:
    """A grandchild is killed, not reaped by us: give the kernel a moment to finish it."""
    await eventually(lambda: not pid_alive(pid), timeout=5)


def buffer_stats(job: Job) -> BufferStatistics:
    stats = job.statistics().buffer
    assert stats is not None
    return stats


def lone_job(spec: CommandSpec) -> tuple[Job, Body]:
    """A command job outside any manager, with its body: the runner on its own."""
    log = RecordLog(job_id=1, location="localhost", buffer=Buffer(), name="job 1 ('t')")
    job = Job._leaf(
        id=1, name="t", kind="BackgroundJob", command=spec.display, location="localhost", log=log
    )

    async def body(run: Run) -> None:
        await run_command(run, spec)

    return job, body


PRINT_PID = "import os; print(os.getpid(), flush=True)\n"


# -- the line splitter -----------------------------------------------------------------------


def split(data: bytes, *, max_line: int = MAX_LINE, chunk: int = 65536) -> list[Line]:
    splitter = LineSplitter(max_line)
    out: list[Line] = []
    for i in range(0, len(data), chunk):
        out.extend(splitter.feed(data[i : i + chunk]))
    tail = splitter.flush()
    return [*out, tail] if tail is not None else out


def test_lines_split_on_newline_only_and_keep_cr() -> None:
    assert split(b"a\r\nb\n\nc") == ["a\r", "b", "", "c"]
    assert split(b"") == []
    assert split(b"\n") == [""]


def test_lines_survive_any_chunking() -> None:
    data = "héllo wörld €\nsecond 😀 line\n\nlast".encode()
    expected = split(data)
    assert expected == ["héllo wörld €", "second 😀 line", "", "last"]
    for chunk in range(1, len(data) + 1):
        assert split(data, chunk=chunk) == expected


def test_lines_that_are_not_utf8_stay_bytes() -> None:
    lines = split(b"ok\n\xff\xfe\nlatin-1 \xe9t\xe9\nok")
    assert lines == ["ok", b"\xff\xfe", b"latin-1 \xe9t\xe9", "ok"]


def test_long_lines_come_in_pieces_cut_between_characters() -> None:
    line = "a€" * 10  # 'a' is 1 byte, '€' 3 bytes: cuts at 8 bytes must move back
    pieces = split(line.encode() + b"\nnext\n", max_line=8, chunk=5)
    assert pieces[-1] == "next"
    texts = [p for p in pieces if isinstance(p, str)]
    assert texts == pieces  # no piece was cut inside a character
    assert all(len(p.encode()) <= 8 for p in texts)
    assert "".join(texts[:-1]) == line


def test_splitter_holds_at_most_max_line_of_an_unfinished_line() -> None:
    splitter = LineSplitter(16)
    out: list[Line] = []
    for _ in range(100):
        out += splitter.feed(b"x" * 7)
        assert splitter.pending <= 16
    assert all(p == "x" * 16 for p in out)
    assert sum(map(len, out)) + splitter.pending == 700
    assert repr(splitter).startswith("<LineSplitter max_line=16")


def test_splitter_random_bytes_lose_nothing() -> None:
    rng = random.Random(7)
    alphabet = [b"a", b"\n", b"\r", "é".encode(), "€".encode(), "😀".encode(), b"\xff", b"\x80"]
    for _ in range(300):
        data = b"".join(rng.choice(alphabet) * rng.randint(1, 9) for _ in range(rng.randint(0, 40)))
        max_line, chunk = rng.randint(4, 30), rng.randint(1, 40)
        lines = split(data, max_line=max_line, chunk=chunk)
        pieces = [p if isinstance(p, bytes) else p.encode() for p in lines]
        assert all(len(p) <= max_line for p in pieces)
        assert b"".join(pieces) == data.replace(b"\n", b"")
        whole = [p if isinstance(p, bytes) else p.encode() for p in split(data, chunk=chunk)]
        expected = data.split(b"\n")
        if expected[-1] == b"":  # ended with a newline (or was empty): no last partial line
            expected.pop()
        assert whole == expected


def test_splitter_rejects_a_silly_max_line() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(0)


def test_input_lines_are_encoded_and_batched_lazily() -> None:
    fed: list[int] = []

    def lines() -> Iterator[str | bytes]:
        for i in range(5):
            fed.append(i)
            yield "é" if i % 2 else b"raw\n"

    chunks = input_chunks(lines(), size=8)
    assert next(chunks) == b"raw\n" + "é\n".encode() + b"raw\n"  # 11 bytes: >= 8, one chunk
    assert fed == [0, 1, 2]  # only what the first chunk needed was consumed
    assert list(chunks) == ["é\n".encode() + b"raw\n"]
    assert b"".join(input_chunks(["a", b"b\n", ""])) == b"a\nb\n\n"
    with pytest.raises(JobArgumentError, match="input line 1 must be str or bytes, got int"):
        list(input_chunks(["a", 1]))


# -- arguments, checked before a job exists --------------------------------------------------


def test_spec_from_argv_and_from_shell_string() -> None:
    spec = CommandSpec.build(
        ["echo", "two words", Path("p")], cwd=None, env=None, input=None, stop_grace=1
    )
    assert spec.argv == ("echo", "two words", "p")
    assert spec.display == "echo 'two words' p"
    assert spec.cwd == os.getcwd()
    shell = CommandSpec.build(
        "echo $HOME | wc -c", cwd=None, env={"A": "1"}, input="x", stop_grace=0
    )
    assert shell.argv == ("/bin/sh", "-c", "echo $HOME | wc -c")
    assert shell.display == "echo $HOME | wc -c"
    assert shell.env is not None
    assert shell.env["A"] == "1" and shell.env["PATH"] == os.environ["PATH"]  # added to it
    assert shell.input == b"x"
    assert repr(shell) == (
        "CommandSpec(argv=('/bin/sh', '-c', 'echo $HOME | wc -c'), display='echo $HOME | wc -c', "
        f"cwd={os.getcwd()!r}, stop_grace=0.0, lines=True)"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"command": []}, "empty argv"),
        ({"command": "  "}, "empty command"),
        ({"command": ["ls", 3]}, r"command\[1\] must be a str, got int"),
        ({"command": b"ls"}, "argv list of str"),
        ({"command": ["ls"], "env": {"A": 1}}, r"env\['A'\] must be a str"),
        ({"command": ["ls"], "env": {"A=B": "1"}}, "not a valid variable name"),
        ({"command": ["ls"], "env": ["A"]}, "env must be a mapping"),
        ({"command": ["cat"], "input": 42}, "input must be bytes, str or an iterable"),
        ({"command": ["cat"], "input": ["ok", 7]}, "input line 1 must be str or bytes"),
        ({"command": ["ls"], "stop_grace": -1}, "stop_grace"),
        ({"command": ["ls"], "cwd": 3}, "cwd must be a path"),
    ],
)
async def test_bad_arguments_raise_and_create_no_job(kwargs: dict[str, object], match: str) -> None:
    options = dict(kwargs)  # the parameters are shared by both backends' runs
    command = options.pop("command")
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=match):
            await jobs.start_command(command, **options)  # type: ignore[arg-type]
        assert jobs.get() == []


async def test_missing_cwd_raises_and_creates_no_job(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=f"cwd '{missing}' does not exist; create it"):
            await jobs.start_command(["ls"], cwd=missing)
        (tmp_path / "file").write_text("")
        with pytest.raises(JobArgumentError, match="is not a directory"):
            await jobs.start_command(["ls"], cwd=tmp_path / "file")
        assert jobs.get() == []


# -- running -----------------------------------------------------------------------------------


async def test_argv_and_shell_string_run() -> None:
    async with JobManager() as jobs:
        direct = await jobs.start_command(["echo", "two  words"], name="direct")
        shell = await jobs.start_command("echo one && echo two")
        assert await direct == ["two  words"]
        assert await shell == ["one", "two"]
    assert direct.command == "echo 'two  words'"
    assert shell.command == "echo one && echo two"
    assert (direct.kind, direct.state) == ("BackgroundJob", JobState.COMPLETED)
    assert direct.exit_status == 0
    assert repr(direct) == "<asyncjobs.Job 1 'direct' BackgroundJob COMPLETED>"
    assert direct.started_at is not None and direct.finished_at is not None


async def test_stdout_is_output_and_stderr_is_error_records() -> None:
    code = """
        import sys
        for i in range(3):
            print(f"out{i}", flush=True)
            print(f"err{i}", file=sys.stderr, flush=True)
    """
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code))
        await job.wait()
        records = await job.receive_records(keep=True)
        assert [r.seq for r in records] == sorted(r.seq for r in records)
        assert [r.value for r in records if r.stream == "output"] == ["out0", "out1", "out2"]
        assert [r.value for r in records if r.stream == "error"] == ["err0", "err1", "err2"]
        assert {r.stream for r in records} == {"output", "error"}
        assert await job == ["out0", "out1", "out2"]
        assert job.state is JobState.COMPLETED  # stderr alone does not fail a command


async def test_cwd_and_env(tmp_path: Path) -> None:
    code = """
        import os
        print(os.getcwd())
        print(os.environ['ASYNCJOBS_X'])
        print('PATH' in os.environ)
    """
    where = os.path.realpath(tmp_path)
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code), cwd=tmp_path, env={"ASYNCJOBS_X": "é x"})
        assert await job == [where, "é x", "True"]


def lazy_lines() -> Iterator[str | bytes]:
    yield "one"
    yield b"two\n"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (b"a\nb\n", ["a", "b"]),
        (bytearray(b"q"), ["q"]),
        (b"", []),
        ("é\nno newline", ["é", "no newline"]),
        (["x", "y\n", b"z"], ["x", "y", "z"]),
        (lazy_lines, ["one", "two"]),
    ],
    ids=["bytes", "bytearray", "empty", "str", "list", "generator"],
)
async def test_input_is_fed_to_stdin(given: object, expected: list[str]) -> None:
    if callable(given):  # a fresh generator for each backend's run
        given = given()
    async with JobManager() as jobs:
        job = await jobs.start_command(["cat"], input=given)  # type: ignore[arg-type]
        assert await job == expected


async def test_no_input_means_dev_null_and_early_exit_is_not_a_failure() -> None:
    async with JobManager() as jobs:
        empty = await jobs.start_command(["cat"])
        assert await empty == []
        head = await jobs.start_command(["head", "-c", "3"], input=b"x" * 10_000_000)
        assert await head == ["xxx"]


async def test_a_failing_input_iterable_fails_the_job() -> None:
    def lines() -> Iterator[str]:
        yield "ok"
        raise ValueError("no more lines")

    async with JobManager() as jobs:
        job = await jobs.start_command(["cat"], input=lines())
        with pytest.raises(JobFailed) as info:
            await job
        assert isinstance(info.value.reason, ValueError)


async def test_bytes_that_are_not_utf8_come_back_as_bytes() -> None:
    code = "import sys; sys.stdout.buffer.write(b'ok\\n\\xff\\xfe\\nend')"
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code))
        assert await job == ["ok", b"\xff\xfe", "end"]


async def test_a_long_line_without_newline_survives_in_pieces() -> None:
    size = 3 * MAX_LINE + 123
    code = f"import sys; sys.stdout.write(''.join(chr(97 + i % 26) for i in range({size})))"
    async with JobManager() as jobs:
        pieces = await (await jobs.start_command(python(code)))
    assert len(pieces) == 4
    assert all(isinstance(p, str) and len(p) <= MAX_LINE for p in pieces)
    assert "".join(pieces) == "".join(chr(97 + i % 26) for i in range(size))


async def test_lines_false_passes_stdout_and_stderr_through_as_bytes() -> None:
    # 300 KB of binary data (every byte value, no line structure) on stdout, some on stderr.
    data = bytes(range(256)) * 1200
    code = (
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1200); "
        "sys.stderr.buffer.write(b'err\\xff no newline')"
    )
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code), lines=False)
        await job.wait()
        assert job.state is JobState.COMPLETED
        chunks = await job.receive()
        errors = [r.value for r in await job.receive_records(streams=["error"])]
    assert all(isinstance(c, bytes) and c for c in chunks)
    assert len(chunks) > 1  # arrived as the pipe delivered it, not as one item
    assert b"".join(chunks) == data
    assert b"".join(errors) == b"err\xff no newline"


async def test_lines_must_be_a_bool() -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match="lines must be True"):
            await jobs.start_command(["true"], lines="no")  # type: ignore[arg-type]
        assert jobs.get() == []


# -- how it ends ---------------------------------------------------------------------------------


async def test_nonzero_exit_fails_with_the_status() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("echo partial; exit 3", name="three")
        with pytest.raises(JobFailed) as info:
            await job
    assert job.state is JobState.FAILED
    assert job.exit_status == 3
    reason = info.value.reason
    assert isinstance(reason, CommandFailed) and reason.exit_status == 3 and reason.signal is None
    assert str(reason) == "job 1 ('three'): command 'echo partial; exit 3' exited with status 3"
    assert job.reason is reason and info.value.__cause__ is reason
    assert await job.receive() == ["partial"]


async def test_shell_status_127_explains_itself() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("asyncjobs-no-such-program-xyz")
        await job.wait()
    assert job.exit_status == 127
    assert "did not find the command" in str(job.reason)


async def test_a_program_that_does_not_exist_fails_naming_it(tmp_path: Path) -> None:
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    async with JobManager() as jobs:
        missing = await jobs.start_command(["asyncjobs-no-such-program-xyz", "arg"])
        denied = await jobs.start_command([str(not_executable)])
        assert missing.state is JobState.FAILED  # already when start_command returns
        with pytest.raises(JobFailed, match="asyncjobs-no-such-program-xyz"):
            await missing
        await denied.wait()
    reason = missing.reason
    assert isinstance(reason, CommandFailed)
    assert "can't run 'asyncjobs-no-such-program-xyz'" in str(reason)
    assert "check the program name" in str(reason)
    assert isinstance(reason.__cause__, FileNotFoundError)
    assert [r.value for r in await missing.receive_records(streams=["error"])] == [reason]
    assert denied.state is JobState.FAILED and "permission denied" in str(denied.reason)
    assert missing.started_at is None and missing.exit_status is None


async def test_spawn_errors_say_what_went_wrong(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    gone = tmp_path / "gone"
    gone.mkdir()
    spec = CommandSpec.build(["true"], cwd=gone, env=None, input=None, stop_grace=1)
    gone.rmdir()  # after the check, before the spawn
    async with JobManager() as jobs:
        job = await jobs.start_command([str(garbage)])
        assert job.state is JobState.FAILED
        assert f"can't run '{garbage}': Exec format error" in str(job.reason)
    job, body = lone_job(spec)
    await run_in_slot(job, anyio.CapacityLimiter(1), body)
    assert job.state is JobState.FAILED
    assert f"its cwd '{gone}' is gone" in str(job.reason)
    job._release()


async def test_killed_by_a_signal_fails_naming_it() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command(
            python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        )
        await job.wait()
    assert job.state is JobState.FAILED
    assert job.exit_status == -signal.SIGKILL
    assert isinstance(job.reason, CommandFailed) and job.reason.signal == signal.SIGKILL
    assert "was killed by SIGKILL (9)" in str(job.reason)


# -- stopping ------------------------------------------------------------------------------------


async def test_stop_ends_a_sleep_quickly() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command(["sleep", "100"])
        assert job.state is JobState.RUNNING
        started = time.monotonic()
        await job.stop()
        assert time.monotonic() - started < 2
        assert job.state is JobState.STOPPED and job.reason is None
        with pytest.raises(JobStopped):
            await job


async def test_stop_while_it_is_being_spawned_leaves_no_process() -> None:
    """stop() from another task as soon as the job exists: before its runner starts, or while
    the program is being spawned. Either way it ends STOPPED and nothing is left running."""
    marker = "4242.4242"
    async with JobManager() as jobs, anyio.create_task_group() as tg:

        async def stopper() -> None:
            while not jobs.get():
                await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            await jobs.get()[0].stop()

        tg.start_soon(stopper)
        job = await jobs.start_command(["sleep", marker])
    assert job.state is JobState.STOPPED
    assert children_running("sleep", marker) == []


def children_running(name: str, marker: str) -> list[psutil.Process]:
    """Our child processes running ``name`` with ``marker`` in their argv, or unreaped."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == name and (
                child.status() == psutil.STATUS_ZOMBIE or marker in child.cmdline()
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            pass  # it ended while we looked
    return found


IGNORES_TERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + PRINT_PID


async def test_a_program_ignoring_sigterm_is_killed_after_the_grace(reap_pids: list[int]) -> None:
    """TERM, the grace period (on the manager's clock: a fake one, so no real wait), KILL."""
    clock = FakeClock()
    async with JobManager(clock=clock) as jobs:
        job = await jobs.start_command(python(IGNORES_TERM + "time.sleep(100)"), stop_grace=30)
        pid = int(await first_output(job))  # printed after SIGTERM is ignored
        reap_pids.append(pid)
        started = time.monotonic()
        await job.stop()
        elapsed = time.monotonic() - started
    assert elapsed < 5 and clock.waited == [30]  # the grace, asked of the clock, not waited
    assert job.state is JobState.STOPPED
    assert job.exit_status == -signal.SIGKILL
    assert not pid_alive(pid)


async def test_the_grace_period_is_real_time_by_default(reap_pids: list[int]) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command(python(IGNORES_TERM + "time.sleep(100)"), stop_grace=0.1)
        reap_pids.append(int(await first_output(job)))
        started = time.monotonic()
        await job.stop()
        elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 5
    assert job.exit_status == -signal.SIGKILL and not pid_alive(reap_pids[0])


async def test_stop_kills_grandchildren(reap_pids: list[int]) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("sleep 1000 & echo $!; wait")
        grandchild = int(await first_output(job))
        reap_pids.append(grandchild)
        assert pid_alive(grandchild)
        await job.stop()
        assert job.state is JobState.STOPPED
        await until_dead(grandchild)


async def test_leaving_the_manager_kills_a_streaming_command(reap_pids: list[int]) -> None:
    code = PRINT_PID + "import itertools\nfor i in itertools.count(): print(i, flush=True)\n"
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code))
        pid = int(await first_output(job))
        reap_pids.append(pid)
    assert job.state is JobState.STOPPED
    assert not pid_alive(pid)  # reaped before the manager returned


async def test_cancelling_the_manager_kills_and_reaps(reap_pids: list[int]) -> None:
    with anyio.CancelScope() as scope:
        async with JobManager() as jobs:
            job = await jobs.start_command(python(PRINT_PID + "import time; time.sleep(100)"))
            reap_pids.append(int(await first_output(job)))
            scope.cancel()
            await anyio.sleep_forever()
    assert job.state is JobState.STOPPED
    assert not pid_alive(reap_pids[0])


async def test_a_cancelled_runner_kills_and_reaps(reap_pids: list[int]) -> None:
    """Without the manager's stop(): the runner's own cancellation must take the process down."""
    spec = CommandSpec.build(
        python(PRINT_PID + "import time; time.sleep(100)"),
        cwd=None,
        env=None,
        input=None,
        stop_grace=5,
    )
    job, body = lone_job(spec)
    async with anyio.create_task_group() as tg:
        await tg.start(run_in_slot, job, anyio.CapacityLimiter(1), body)
        reap_pids.append(int(await first_output(job)))
        started = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 2  # SIGTERM was enough: no grace period spent
    assert job.state is JobState.STOPPED
    assert not pid_alive(reap_pids[0])
    job._release()


async def test_output_of_a_grandchild_holding_the_pipes_is_not_lost() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("(sleep 0.2; echo late) & echo early")
        assert await job == ["early", "late"]  # the shell exited first; the job waited for EOF


async def test_what_is_left_of_the_group_dies_with_the_job(reap_pids: list[int]) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_command("sleep 1000 >/dev/null 2>&1 & echo $!")
        (leftover,) = await job
        reap_pids.append(int(leftover))
        assert job.state is JobState.COMPLETED
        await until_dead(int(leftover))


# -- limits and backpressure -----------------------------------------------------------------------


async def test_block_mode_holds_the_program_until_a_consumer_drains(reap_pids: list[int]) -> None:
    lines = 20_000  # 2 MB: far more than the pipe and the reader's buffers hold
    code = PRINT_PID + f"import sys\nfor i in range({lines}): sys.stdout.write('%099d\\n' % i)\n"
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code), buffer=Buffer(max_items=10, mode="block"))
        pid = int(await first_output(job))
        reap_pids.append(pid)
        await eventually(lambda: buffer_stats(job).blocked_producers != 0, timeout=10)
        await anyio.sleep(0.3)  # unheld, the program would finish in far less
        stats = buffer_stats(job)
        assert (stats.items, stats.next_seq) == (10, 10)  # reading stopped at the bound
        assert pid_alive(pid) and job.state is JobState.RUNNING  # the kernel holds the program
        items = [item async for item in job.stream()]
    assert items == [str(pid)] + [f"{i:099d}" for i in range(lines)]
    assert job.state is JobState.COMPLETED
    assert buffer_stats(job).high_water == 10


async def test_stop_while_block_mode_holds_the_program(reap_pids: list[int]) -> None:
    code = PRINT_PID + "while True: print('y' * 99)\n"
    async with JobManager() as jobs:
        job = await jobs.start_command(python(code), buffer=Buffer(max_items=5, mode="block"))
        reap_pids.append(int(await first_output(job)))
        await eventually(lambda: buffer_stats(job).blocked_producers != 0, timeout=10)
        with anyio.fail_after(5):
            await job.stop()
        assert job.state is JobState.STOPPED
        assert not pid_alive(reap_pids[0])
        kept = await job.receive()  # what was read before the stop is kept
        assert len(kept) >= 5 and kept[0] == str(reap_pids[0])


async def test_process_limit_queues_the_second_command(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    wait_for_gate = f"""
        import os, time
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.01)
        print('first')
    """
    async with JobManager(process_limit=1) as jobs:
        first = await jobs.start_command(python(wait_for_gate))
        second = await jobs.start_command(["echo", "second"])
        await anyio.wait_all_tasks_blocked()
        assert (first.state, second.state) == (JobState.RUNNING, JobState.NOT_STARTED)
        gate.touch()
        assert await second == ["second"]
        assert await first == ["first"]
        assert first.finished_at is not None and second.started_at is not None
        assert second.started_at >= first.finished_at


async def test_a_command_job_costs_no_thread_and_no_reader_task(anyio_backend: str) -> None:
    """On asyncio a command without input runs on the loop's reader callbacks and a pidfd
    (``_local.pipes``): no child-watcher thread (asyncio's default starts one per program),
    and its body is the job's only task. The same job on trio takes the anyio path."""
    import threading

    from asyncjobs._local import pipes

    native = anyio_backend == "asyncio" and hasattr(os, "pidfd_open")
    assert pipes.available() is native
    async with JobManager() as jobs:
        before = {t.ident for t in threading.enumerate()}
        job = await jobs.start_command(
            python("import time; print('up', flush=True); time.sleep(0.3)")
        )
        assert await first_output(job) == "up"
        started = {t.name for t in threading.enumerate() if t.ident not in before}
        assert await job == ["up"]
    if native:
        assert not [n for n in started if n.startswith("waitpid")], started
