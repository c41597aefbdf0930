"""Process jobs: real child processes on both backends; results, streams, errors, reuse, stop.

The module-level functions below are the job functions: a child process imports this module to
unpickle them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import asyncjobs
from asyncjobs import (
    Buffer,
    CommandFailed,
    JobArgumentError,
    JobFailed,
    JobManager,
    JobState,
    JobStopped,
    Progress,
    RemoteError,
)
from asyncjobs._core.clock import FakeClock
from asyncjobs._local.process import WorkerPool
from tests.conftest import eventually, pid_alive

pytestmark = pytest.mark.anyio


# -- job functions (they run in a child process) -------------------------------------------


def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    return (a + b) * scale


def pid() -> int:
    return os.getpid()


def nothing() -> None:
    return None


def wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.005)


def gated(path: str) -> Iterator[int]:
    yield 1
    wait_for(path)
    yield 2


async def async_double(x: int) -> int:  # run by asyncio.run() in the child
    await asyncio.sleep(0)
    return 2 * x


async def async_count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def chatty() -> str:
    asyncjobs.emit("careful", "warning")
    asyncjobs.progress("copying", current=1, total=4)
    asyncjobs.emit("between", "verbose")
    return "done"


def fails_here() -> None:
    asyncjobs.emit("about to fail", "warning")
    raise ValueError("bad input 42")


def returns_a_lock() -> threading.Lock:
    return threading.Lock()


def emits_a_lock() -> None:
    asyncjobs.emit(threading.Lock())


def sleeper(seconds: float = 100.0) -> None:
    asyncjobs.emit(os.getpid())
    time.sleep(seconds)


def where() -> tuple[int, str, str | None]:
    return os.getpid(), os.getcwd(), os.environ.get("ASYNCJOBS_TEST_VAR")


def prints() -> int:
    print("hello from the child process")
    print("x" * 100_000)
    sys.stdout.flush()
    return 42


def big_items(n: int, size: int, progress_file: str) -> Iterator[str]:
    for i in range(n):
        yield str(i % 10) * size
        Path(progress_file).write_text(str(i + 1))


def exits(code: int) -> None:
    sys.exit(code)


def leaves_a_grandchild() -> int:
    return subprocess.Popen(["sleep", "100"]).pid


def returns_a_child_only_class() -> object:
    module = types.ModuleType("asyncjobs_test_only_in_the_child")
    sys.modules[module.__name__] = module
    exec("class Thing:\n    pass\n", module.__dict__)
    return module.Thing()


def ignores_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncjobs.emit(os.getpid())
    time.sleep(100)


def starts_a_grandchild() -> None:
    child = subprocess.Popen(["sleep", "100"])
    asyncjobs.emit(child.pid)
    asyncjobs.emit(os.getpid())
    child.wait()


# -- results and streams -------------------------------------------------------------------


async def test_return_value_args_and_kwargs() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_process(add, 2, 3, scale=10, name="adder")
        assert await job == [50]
        assert job.state is JobState.COMPLETED and job.kind == "BackgroundJob"
        assert job.command == "add" and job.name == "adder" and job.location == "localhost"
        assert job.reason is None and job.exit_status is None
        assert repr(job) == "<asyncjobs.Job 1 'adder' BackgroundJob COMPLETED>"
        assert await (await jobs.start_process(nothing)) == []  # None is no item


async def test_jobs_one_after_another_run_on_the_warm_worker_as_they_return() -> None:
    """Each job started once the one before has finished gets the free slot and the idle
    worker at once (the slot queue hands it to its lingering driver): it returns running or
    done, never queued, and one worker serves them all, in order."""
    async with JobManager(process_limit=1) as jobs:
        assert await (await jobs.start_process(add, 0)) == [0]  # the worker is warm now
        results, states = [], set()
        for i in range(1, 60):
            job = await jobs.start_process(add, i, scale=2)
            states.add(job.state)
            results.extend(await job)
        assert results == [2 * i for i in range(1, 60)]
        assert JobState.NOT_STARTED not in states
        assert jobs._workers is not None and jobs._workers.statistics().spawned == 1


async def test_generator_items_stream_while_it_runs(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    async with JobManager() as jobs:
        job = await jobs.start_process(gated, str(gate))
        items = job.stream()
        with anyio.fail_after(10):
            assert await items.__anext__() == 1
        assert job.state is JobState.RUNNING
        gate.touch()
        with anyio.fail_after(10):
            assert [x async for x in items] == [2]
        assert job.state is JobState.COMPLETED


async def test_async_function_and_async_generator() -> None:
    async with JobManager() as jobs:
        assert await (await jobs.start_process(async_double, 21)) == [42]
        assert await (await jobs.start_process(async_count, 4)) == [0, 1, 2, 3]


async def test_emit_and_progress_arrive_on_their_streams_in_order() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_process(chatty)
        await job.wait()
        records = await job.receive_records()
        assert [(r.stream, r.value) for r in records] == [
            ("warning", "careful"),
            ("progress", Progress("copying", None, 25.0, 1, 4)),
            ("verbose", "between"),
            ("output", "done"),
        ]
        assert [r.seq for r in records] == [0, 1, 2, 3]
        assert all(r.job_id == job.id and r.location == "localhost" for r in records)


async def test_print_in_the_child_does_not_break_the_protocol(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with JobManager() as jobs:
        assert await (await jobs.start_process(prints)) == [42]
        assert await (await jobs.start_process(add, 1)) == [1]
    assert "hello from the child process" in capfd.readouterr().err


async def test_block_mode_holds_the_child_at_the_pipe(tmp_path: Path) -> None:
    progress, n, size = tmp_path / "progress", 40, 256 * 1024
    async with JobManager() as jobs:
        job = await jobs.start_process(
            big_items, n, size, str(progress), buffer=Buffer(max_items=1, mode="block")
        )
        await eventually(lambda: job.statistics().buffer.blocked_producers != 0, timeout=10)
        assert job.state is JobState.RUNNING
        produced = int(progress.read_text() or 0) if progress.exists() else 0
        assert produced < n // 2, f"the child ran ahead by {produced} items of {n}"
        with anyio.fail_after(10):
            items = [item async for item in job.stream()]
        assert len(items) == n and items[7] == "7" * size
        assert job.state is JobState.COMPLETED


# -- failures ------------------------------------------------------------------------------


async def test_exception_fails_the_job_with_the_remote_traceback() -> None:
    async with JobManager() as jobs:
        job = await jobs.start_process(fails_here)
        with pytest.raises(JobFailed) as info:
            await job
        assert job.state is JobState.FAILED
        reason = job.reason
        assert isinstance(reason, RemoteError) and info.value.reason is reason
        assert reason.type_name == "ValueError"
        assert str(reason) == "ValueError: bad input 42"
        assert "in fails_here" in reason.traceback
        assert 'raise ValueError("bad input 42")' in reason.traceback
        assert reason.__notes__ == [reason.traceback.rstrip("\n")]
        assert isinstance(reason.__cause__, ValueError)  # the original, unpickled
        records = await job.receive_records(streams=("warning", "error"))
        assert [r.stream for r in records] == ["warning", "error"]
        assert records[1].value is reason


async def test_sys_exit_fails_the_job_and_the_worker_carries_on() -> None:
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(exits, 3)
        await job.wait()
        assert isinstance(job.reason, RemoteError) and job.reason.type_name == "SystemExit"
        assert await (await jobs.start_process(add, 1)) == [1]
        assert len(jobs._workers.pids()) == 1  # type: ignore[union-attr]


async def test_unpicklable_callable_raises_at_start_and_makes_no_job() -> None:
    def local() -> None:
        pass

    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"<lambda>.*define it at module level") as info:
            await jobs.start_process(lambda: 1)
        assert info.value.__cause__ is not None
        with pytest.raises(JobArgumentError, match=r"local.*define it at module level"):
            await jobs.start_process(local)
        with pytest.raises(JobArgumentError, match=r"arguments of add.*pass picklable arguments"):
            await jobs.start_process(add, threading.Lock())
        assert isinstance(info.value, TypeError)
        assert jobs.get() == []


async def test_bad_cwd_and_env_raise_at_start_and_make_no_job(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=str(missing)):
            await jobs.start_process(add, 1, cwd=missing)
        with pytest.raises(JobArgumentError, match="env must map str to str"):
            await jobs.start_process(add, 1, env={"A": 1})  # type: ignore[dict-item]
        assert jobs.get() == []


async def test_unpicklable_result_fails_clearly_and_the_worker_survives() -> None:
    async with JobManager(process_limit=1) as jobs:
        first = await (await jobs.start_process(pid))
        job = await jobs.start_process(returns_a_lock)
        await job.wait()
        assert job.state is JobState.FAILED
        assert isinstance(job.reason, RemoteError) and job.reason.type_name == "TypeError"
        message = str(job.reason)
        assert "return value of returns_a_lock" in message and "_thread.lock" in message
        assert "cannot be pickled" in message
        emitted = await jobs.start_process(emits_a_lock)
        await emitted.wait()
        reason = str(emitted.reason)
        assert "_thread.lock" in reason and "emit picklable data" in reason
        assert await (await jobs.start_process(pid)) == first


async def test_a_value_the_parent_cannot_unpickle_fails_the_job_clearly() -> None:
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(returns_a_child_only_class)
        await job.wait()
        assert job.state is JobState.FAILED and isinstance(job.reason, CommandFailed)
        assert "cannot unpickle" in str(job.reason)
        assert "asyncjobs_test_only_in_the_child" in str(job.reason)
        assert isinstance(job.reason.__cause__, ModuleNotFoundError)
        assert await (await jobs.start_process(add, 2)) == [2]


# -- workers: reuse, isolation, stop, death, cwd/env ------------------------------------------


async def test_workers_are_reused_and_isolated_jobs_get_a_fresh_one() -> None:
    async with JobManager(process_limit=2) as jobs:
        (one,) = await (await jobs.start_process(pid))
        assert await (await jobs.start_process(pid)) == [one]
        assert jobs.statistics().idle_workers == 1
        (fresh,) = await (await jobs.start_process(pid, isolated=True))
        assert fresh != one and not pid_alive(fresh)
        pool = jobs._workers
        assert pool is not None and pool.pids() == [one]
        assert repr(pool) == "<asyncjobs.WorkerPool open live=1 idle=1 size=2>"
        assert pool.statistics().spawned == 2


async def test_stop_kills_the_worker_and_the_next_job_gets_a_new_one() -> None:
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(sleeper)
        with anyio.fail_after(10):
            worker = await job.stream().__anext__()
        await job.stop()
        assert job.state is JobState.STOPPED and not pid_alive(worker)
        with pytest.raises(JobStopped):
            await job
        assert jobs._workers is not None and jobs._workers.pids() == []
        (other,) = await (await jobs.start_process(pid))
        assert other != worker


async def test_a_worker_ignoring_sigterm_is_killed_after_the_grace(
    reap_pids: list[int],
) -> None:
    """TERM, ``stop_grace`` (on a fake clock: asked for, not waited), KILL."""
    clock = FakeClock()
    async with JobManager(process_limit=1, stop_grace=30, clock=clock) as jobs:
        job = await jobs.start_process(ignores_sigterm)
        with anyio.fail_after(10):
            worker = await job.stream().__anext__()
        reap_pids.append(worker)
        started = time.monotonic()
        await job.stop()
        assert time.monotonic() - started < 5 and clock.waited == [30]
        assert job.state is JobState.STOPPED and not pid_alive(worker)


async def test_the_workers_grace_period_is_real_time_by_default(
    reap_pids: list[int],
) -> None:
    async with JobManager(process_limit=1, stop_grace=0.1) as jobs:
        job = await jobs.start_process(ignores_sigterm)
        with anyio.fail_after(10):
            worker = await job.stream().__anext__()
        reap_pids.append(worker)
        started = time.monotonic()
        await job.stop()
        assert time.monotonic() - started >= 0.1
        assert job.state is JobState.STOPPED and not pid_alive(worker)


async def test_stop_kills_what_the_job_started_too(reap_pids: list[int]) -> None:
    async with JobManager(stop_grace=5) as jobs:
        job = await jobs.start_process(starts_a_grandchild)
        with anyio.fail_after(10):
            grandchild = await job.stream().__anext__()
        reap_pids.append(grandchild)
        started = time.monotonic()
        await job.stop()
        assert time.monotonic() - started < 2  # SIGTERM was enough: no grace period spent
        with anyio.fail_after(10):  # an orphan is reaped by init, a moment later
            while pid_alive(grandchild):
                await anyio.sleep(0.01)


async def test_what_a_dead_worker_left_behind_is_killed(reap_pids: list[int]) -> None:
    async with JobManager() as jobs:
        job = await jobs.start_process(starts_a_grandchild)
        with anyio.fail_after(10):
            grandchild, worker = [x async for x in _first(job.stream(), 2)]
        reap_pids.extend([grandchild, worker])
        os.kill(worker, signal.SIGKILL)
        with anyio.fail_after(10):
            await job.wait()
            while pid_alive(grandchild):
                await anyio.sleep(0.01)
        assert isinstance(job.reason, CommandFailed) and job.reason.signal == signal.SIGKILL


async def _first(items: AsyncIterator[int], n: int) -> AsyncIterator[int]:
    for _ in range(n):
        yield await items.__anext__()


async def test_a_cancelled_manager_kills_and_reaps_its_workers(reap_pids: list[int]) -> None:
    with anyio.CancelScope() as scope:
        async with JobManager() as jobs:
            job = await jobs.start_process(sleeper)
            with anyio.fail_after(10):
                worker = await job.stream().__anext__()
            reap_pids.append(worker)
            scope.cancel()
            await anyio.sleep_forever()
    assert job.state is JobState.STOPPED and not pid_alive(worker)


async def test_a_worker_killed_mid_job_fails_the_job() -> None:
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(sleeper, name="victim")
        with anyio.fail_after(10):
            worker = await job.stream().__anext__()
        os.kill(worker, signal.SIGKILL)
        with anyio.fail_after(10):
            await job.wait()
        assert job.state is JobState.FAILED
        reason = job.reason
        assert isinstance(reason, CommandFailed) and reason.signal == signal.SIGKILL
        assert str(reason) == (
            f"worker process {worker} of job 1 ('victim') died (killed by SIGKILL) "
            "while running sleeper"
        )
        assert not pid_alive(worker)
        assert await (await jobs.start_process(add, 5)) == [5]


async def test_cwd_and_env_apply_to_one_job_only(tmp_path: Path) -> None:
    here = os.getcwd()
    async with JobManager(process_limit=1) as jobs:
        job = await jobs.start_process(where, cwd=tmp_path, env={"ASYNCJOBS_TEST_VAR": "on"})
        ((worker, cwd, var),) = await job
        assert (cwd, var) == (str(tmp_path), "on")
        assert await (await jobs.start_process(where)) == [(worker, here, None)]
        assert await (await jobs.start_process(where, cwd=tmp_path)) == [
            (worker, str(tmp_path), None)
        ]


async def test_process_limit_queues_jobs_in_not_started(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    async with JobManager(process_limit=1) as jobs:
        first = await jobs.start_process(wait_for, str(gate))
        second = await jobs.start_process(add, 1)
        assert first.state is JobState.RUNNING and second.state is JobState.NOT_STARTED
        assert jobs.statistics().processes_in_use == 1
        gate.touch()
        with anyio.fail_after(10):
            assert await second == [1]
        assert first.state is JobState.COMPLETED


async def test_leaving_the_manager_reaps_running_and_idle_workers() -> None:
    async with JobManager(process_limit=2) as jobs:
        running = await jobs.start_process(sleeper)
        with anyio.fail_after(10):
            busy = await running.stream().__anext__()
        (idle,) = await (await jobs.start_process(pid))  # a second worker, idle from now on
        assert jobs.statistics().idle_workers == 1
        assert busy != idle and pid_alive(busy) and pid_alive(idle)
    assert running.state is JobState.STOPPED
    assert not pid_alive(busy) and not pid_alive(idle)


async def test_nothing_a_job_left_running_outlives_the_manager(reap_pids: list[int]) -> None:
    async with JobManager() as jobs:
        (grandchild,) = await (await jobs.start_process(leaves_a_grandchild))
        reap_pids.append(grandchild)
        assert pid_alive(grandchild)
    await eventually(lambda: not pid_alive(grandchild), timeout=10)


async def test_a_pool_reaps_every_worker_it_started() -> None:
    async with WorkerPool(size=2, stop_grace=5) as pool:
        first = await pool.acquire(isolated=False)
        second = await pool.acquire(isolated=True)
        assert pool.keep(first, reuse=True) and pool.idle == 1
        pids = pool.pids()
        assert sorted([first.pid, second.pid]) == pids
    assert pool.pids() == [] and not any(pid_alive(p) for p in pids)


# -- the parent's __main__ -----------------------------------------------------------------

SCRIPT = """
import anyio

def lazy_emit(x):
    import asyncjobs  # first imported in the child here, inside the job
    asyncjobs.emit(x, "warning")
    return x + 1

class Point:
    def __init__(self, x):
        self.x = x

def make_point(x):
    return Point(x)

async def main():
    from asyncjobs import JobManager
    async with JobManager() as jobs:
        job = await jobs.start_process(lazy_emit, 41)
        await job.wait()
        print([(r.stream, r.value) for r in await job.receive_records()])
        point, = await (await jobs.start_process(make_point, 7))
        print(type(point).__name__, point.x)

if __name__ == "__main__":
    anyio.run(main)
"""


async def test_functions_and_classes_of_the_parents_main_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    with anyio.fail_after(30):
        result = await anyio.run_process([sys.executable, str(script)], check=False)
    assert result.stderr.decode() == "" and result.returncode == 0
    assert result.stdout.decode().splitlines() == [
        "[('warning', 41), ('output', 42)]",
        "Point 7",
    ]
