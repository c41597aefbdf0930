"""Remote jobs against real OpenSSH sshd processes on loopback (see tests/testhosts.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import asyncjobs
from asyncjobs import (
    Buffer,
    CommandFailed,
    ConnectionFailed,
    HostKeyError,
    JobFailed,
    JobManager,
    JobState,
)
from tests.conftest import eventually
from tests.testhosts import TestHosts

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
    pytest.mark.usefixtures("no_leftovers"),  # no controller task or connection left behind
]


def tag() -> str:
    """A unique word to find our remote processes with pgrep."""
    return f"aj{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def session(ssh_hosts: TestHosts) -> AsyncIterator[asyncjobs.Session]:
    host = ssh_hosts.hosts[0]
    async with asyncjobs.connect(host.address, host.port, **ssh_hosts.ssh_options()) as s:
        yield s


def sleeper(word: str, seconds: int) -> str:
    """A remote shell that sleeps and whose command line carries ``word`` for pgrep."""
    return f"sh -c 'sleep {seconds}; :' {word}"


def opts(hosts: TestHosts, **extra: Any) -> dict[str, Any]:
    return {**hosts.ssh_options(), **extra}


async def wait_gone(hosts: TestHosts, pattern: str) -> list[int]:
    with anyio.move_on_after(5):
        while hosts.pgrep(None, pattern):
            await anyio.sleep(0.05)
    return hosts.pgrep(None, pattern)


async def test_session_invoke_returns_output_and_raises_on_failure(
    session: asyncjobs.Session,
) -> None:
    assert await session.invoke("echo hi; echo there") == ["hi", "there"]
    assert await session.invoke(["printf", "%s\\n", "a b", "$HOME;x"]) == ["a b", "$HOME;x"]
    with pytest.raises(JobFailed, match="exited with status 3") as info:
        await session.invoke("exit 3")
    assert isinstance(info.value.reason, CommandFailed)
    assert info.value.reason.exit_status == 3
    assert repr(session).startswith("<asyncjobs.Session asyncjobs-test@127.0.0.1:")
    assert session.statistics()["channels_in_use"] == 0


async def test_fan_out_children_in_order_with_locations(ssh_hosts: TestHosts) -> None:
    targets = ssh_hosts.targets
    async with JobManager() as jobs:
        job = await jobs.invoke(targets, "echo out-$PPID; echo err >&2", **opts(ssh_hosts))
        assert await job.wait(timeout=30)
        assert job.state is JobState.COMPLETED and job.kind == "RemoteJob"
        locations = [h.target.split("@")[1] for h in ssh_hosts.hosts]
        assert [c.location for c in job.children] == locations
        assert [c.exit_status for c in job.children] == [0, 0, 0]
        records = await job.receive_records()
        outputs = [r for r in records if r.stream == "output"]
        assert [r.location for r in outputs] == locations  # child order
        assert [r.value for r in records if r.stream == "error"] == ["err"] * 3
        assert jobs.get(include_children=True) == [job, *job.children]
        assert jobs.get(location=locations[1], include_children=True) == [job.children[1]]


async def test_one_failing_host_fails_only_its_child(ssh_hosts: TestHosts) -> None:
    good = ssh_hosts.targets[:2]
    async with JobManager() as jobs:
        job = await jobs.invoke(
            [good[0], "asyncjobs-test@127.0.0.1:1", good[1]], "echo ok", **opts(ssh_hosts)
        )
        with pytest.raises(JobFailed, match="connection refused"):
            await job
        states = [c.state for c in job.children]
        assert states == [JobState.COMPLETED, JobState.FAILED, JobState.COMPLETED]
        bad = job.children[1]
        assert isinstance(bad.reason, ConnectionFailed)
        assert "127.0.0.1:1" in str(bad.reason)
        assert await job.receive() == ["ok", "ok"]
        errors = await bad.receive_records(streams=["error"])
        assert [type(r.value) for r in errors] == [ConnectionFailed]


async def test_exit_status_signal_and_bytes(session: asyncjobs.Session) -> None:
    async with JobManager() as jobs:
        failed = await jobs.invoke([session], "echo before; exit 7")
        killed = await jobs.invoke([session], "kill -s KILL $$")
        raw = await jobs.invoke([session], r"printf 'ok\n\377\376\n\200pickle.\n'")
        await jobs.wait(failed, killed, raw, timeout=30)
        child = failed.children[0]
        assert (child.state, child.exit_status) == (JobState.FAILED, 7)
        assert await failed.receive() == ["before"]
        assert killed.state is JobState.FAILED
        assert "SIGKILL" in str(killed.children[0].reason)
        assert await raw.receive() == ["ok", b"\xff\xfe", b"\x80pickle."]


async def test_lines_false_brings_remote_bytes_back_unsplit(
    ssh_hosts: TestHosts, session: asyncjobs.Session
) -> None:
    # 3 MB of every byte value: more than one read, more than one SSH window.
    produce = "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 12000)'"
    data = bytes(range(256)) * 12000
    host = ssh_hosts.hosts[1]
    async with JobManager() as jobs:
        job = await jobs.invoke(
            [session, f"{host.address}:{host.port}"], produce, lines=False, **opts(ssh_hosts)
        )
        await job.wait(timeout=30)
        assert [c.state for c in job.children] == [JobState.COMPLETED] * 2
        for child in job.children:
            chunks = await child.receive()
            assert all(isinstance(c, bytes) for c in chunks)
            assert b"".join(chunks) == data  # the group-id marker line is not in it
    assert b"".join(await session.invoke("printf 'a\\nb\\377'", lines=False)) == b"a\nb\xff"
    assert await session.invoke("printf 'a\\nb'") == ["a", "b"]


async def test_output_edges_short_empty_and_unterminated(session: asyncjobs.Session) -> None:
    # The group-id marker line is taken off stdout whatever follows it.
    assert await session.invoke("printf abc") == ["abc"]
    assert await session.invoke("true") == []
    assert await session.invoke("printf '\\n\\n'") == ["", ""]
    assert await session.invoke("printf x >&2; printf y") == ["y"]
    assert await session.invoke("true", lines=False) == []


async def test_lines_false_block_mode_holds_the_producer_and_stop_ends_it(
    ssh_hosts: TestHosts, session: asyncjobs.Session
) -> None:
    word = tag()
    buffer = Buffer(max_items=3, max_bytes=None, mode="block")
    async with JobManager() as jobs:
        job = await jobs.invoke([session], f"yes {word}", lines=False, buffer=buffer)
        child = job.children[0]
        await eventually(lambda: child.statistics().buffer.blocked_producers != 0, timeout=10)
        held = child.statistics().buffer.next_seq
        await anyio.sleep(0.3)
        assert child.statistics().buffer.next_seq == held  # reading paused: the window is shut
        assert ssh_hosts.pgrep(0, f"yes {word}") != []
        data = b""
        async for chunk in child.stream():  # receiving opens it again
            data += chunk
            if len(data) > 4 << 20:
                break
        assert data.startswith(f"{word}\n".encode())
        assert set(data.split(b"\n")[:-1]) == {word.encode()}
        await job.stop()
        assert job.state is JobState.STOPPED
        assert await wait_gone(ssh_hosts, f"yes {word}") == []


async def test_lines_false_is_refused_on_a_named_session(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        with pytest.raises(asyncjobs.JobArgumentError, match="lines must be True"):
            await jobs.invoke([ssh_hosts.hosts[0].address], "true", lines=1)  # type: ignore[arg-type]
        host = ssh_hosts.hosts[0]
        named = await asyncjobs.connect(
            host.address, host.port, name=f"raw-{tag()}", **ssh_hosts.ssh_options()
        )
        async with named:
            with pytest.raises(asyncjobs.JobArgumentError, match="named session"):
                await jobs.invoke([named], "true", lines=False)
        assert jobs.get() == []


async def test_stop_kills_the_remote_group_with_its_children(
    ssh_hosts: TestHosts, session: asyncjobs.Session
) -> None:
    word = tag()
    async with JobManager() as jobs:
        job = await jobs.invoke(
            [session], f"{sleeper(word, 1000)} & {sleeper(word, 1001)}; echo never"
        )
        await eventually(lambda: len(ssh_hosts.pgrep(0, word)) >= 3, timeout=10)
        with anyio.fail_after(15):
            await job.stop()
        assert job.state is JobState.STOPPED
        assert ssh_hosts.pgrep(None, word) == []  # STOPPED only once the group is gone
        assert await job.receive() == []


async def test_leaving_the_manager_stops_remote_commands(ssh_hosts: TestHosts) -> None:
    word = tag()
    with anyio.fail_after(20):
        async with JobManager() as jobs:
            job = await jobs.invoke(
                ssh_hosts.targets, f"yes {word} | {sleeper(word, 1000)}", **opts(ssh_hosts)
            )
            while len(ssh_hosts.pgrep(None, f"sleep 1000; :' {word}")) < 3:
                await anyio.sleep(0.02)
    assert job.state is JobState.STOPPED
    assert await wait_gone(ssh_hosts, word) == []


async def test_command_timeout_kills_it(ssh_hosts: TestHosts, session: asyncjobs.Session) -> None:
    word = tag()
    async with JobManager() as jobs:
        job = await jobs.invoke([session], sleeper(word, 30), timeout=0.5)
        with anyio.fail_after(15):
            await job.wait()
        assert job.state is JobState.FAILED
        assert "timed out after 0.5 s" in str(job.reason)
        assert ssh_hosts.pgrep(None, word) == []


async def test_unknown_host_key_and_refused_auth(ssh_hosts: TestHosts, tmp_path: Any) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    wrong_key = tmp_path / "wrong"
    import asyncssh

    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong_key))
    target = ssh_hosts.targets[0]
    async with JobManager() as jobs:
        unknown = await jobs.invoke([target], "true", **opts(ssh_hosts, known_hosts=str(empty)))
        refused = await jobs.invoke(
            [target], "true", **opts(ssh_hosts, client_keys=[str(wrong_key)])
        )
        await jobs.wait(timeout=30)
        assert isinstance(unknown.reason, HostKeyError)
        assert "known_hosts" in str(unknown.reason) and "127.0.0.1" in str(unknown.reason)
        assert isinstance(refused.reason, ConnectionFailed)
        assert "authentication refused" in str(refused.reason)
    host = ssh_hosts.hosts[0]
    with pytest.raises(HostKeyError, match="ssh-keyscan"):
        await asyncjobs.connect(host.address, host.port, **opts(ssh_hosts, known_hosts=str(empty)))


async def test_retries_only_for_connection_level_failures(
    ssh_hosts: TestHosts, tmp_path: Any
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    async with JobManager() as jobs:
        refused = await jobs.invoke(["127.0.0.1:1"], "true", retries=2, **opts(ssh_hosts))
        hostkey = await jobs.invoke(
            [ssh_hosts.targets[0]], "true", retries=2, **opts(ssh_hosts, known_hosts=str(empty))
        )
        await jobs.wait(timeout=30)
        assert refused.children[0].timings.attempts == 3
        assert hostkey.children[0].timings.attempts == 1
        assert refused.state is hostkey.state is JobState.FAILED


async def test_a_hanging_host_times_out_and_never_hangs_the_parent(
    fresh_ssh_host: TestHosts, ssh_hosts: TestHosts
) -> None:
    fresh_ssh_host.pause(0)
    try:
        async with JobManager() as jobs:
            job = await jobs.invoke(
                [fresh_ssh_host.targets[0], ssh_hosts.targets[0]],
                "echo alive",
                **opts(
                    fresh_ssh_host,
                    connect_timeout=1,
                    known_hosts=[str(fresh_ssh_host.known_hosts), str(ssh_hosts.known_hosts)],
                    client_keys=[str(fresh_ssh_host.client_key), str(ssh_hosts.client_key)],
                ),
            )
            with anyio.fail_after(15):
                await job.wait()
            hung, fine = job.children
            assert hung.state is JobState.FAILED and "timed out after 1 s" in str(hung.reason)
            assert fine.state is JobState.COMPLETED and await fine.receive() == ["alive"]
    finally:
        fresh_ssh_host.resume(0)


async def test_sshd_killed_mid_command_fails_the_child(fresh_ssh_host: TestHosts) -> None:
    async with JobManager() as jobs:
        job = await jobs.invoke(
            fresh_ssh_host.targets, "echo started; sleep 1000", **opts(fresh_ssh_host)
        )
        child = job.children[0]
        async for line in child.stream():
            assert line == "started"
            break
        fresh_ssh_host.kill(0)
        with anyio.fail_after(15):
            await job.wait()
        assert child.state is JobState.FAILED
        assert isinstance(child.reason, ConnectionFailed)
        assert "connection was lost" in str(child.reason) or "lost" in str(child.reason)


async def test_forty_channels_on_one_session_with_default_sshd(fresh_ssh_host: TestHosts) -> None:
    host = fresh_ssh_host.hosts[0]
    async with (
        asyncjobs.connect(host.address, host.port, **fresh_ssh_host.ssh_options()) as s,
        JobManager() as jobs,
    ):
        started = [await jobs.invoke([s], f"echo {i}; sleep 0.2") for i in range(40)]
        with anyio.fail_after(60):
            await jobs.wait(*started)
        assert [j.state for j in started] == [JobState.COMPLETED] * 40
        assert [await j.receive() for j in started] == [[str(i)] for i in range(40)]


async def test_block_mode_holds_the_remote_producer(
    ssh_hosts: TestHosts, session: asyncjobs.Session
) -> None:
    word = tag()
    async with JobManager() as jobs:
        job = await jobs.invoke(
            [session], f"yes {word}", buffer=Buffer(max_items=100, max_bytes=None, mode="block")
        )
        child = job.children[0]
        await eventually(lambda: child.statistics().buffer.blocked_producers != 0, timeout=10)
        first = child.statistics().buffer.next_seq
        await anyio.sleep(0.3)
        # The reader is held, so the SSH window fills and `yes` on the host blocks: no growth.
        assert child.statistics().buffer.next_seq == first
        assert child.statistics().buffer.items == 100
        assert ssh_hosts.pgrep(0, f"yes {word}") != []
        got = 0
        async for line in child.stream():
            assert line == word
            got += 1
            if got == 5000:
                break
        await job.stop()
        assert job.state is JobState.STOPPED


async def test_failure_policies(ssh_hosts: TestHosts, session: asyncjobs.Session) -> None:
    word = tag()
    async with JobManager() as jobs:
        fast = await jobs.invoke(
            [session, session, session],
            sleeper(word, 30),
            on_failure="fail_fast",
        )
        await jobs.invoke([session], "true")
        bad = await jobs.invoke(
            [session, "127.0.0.1:1", session],
            sleeper(word, 30),
            on_failure="fail_fast",
            **opts(ssh_hosts),
        )
        with anyio.fail_after(20):
            await bad.wait()
        assert [c.state for c in bad.children] == [
            JobState.STOPPED,
            JobState.FAILED,
            JobState.STOPPED,
        ]
        assert bad.state is JobState.FAILED
        await fast.stop()
        with pytest.raises(ValueError, match="on_failure must be"):
            await jobs.invoke([session], "true", on_failure="sometimes")  # type: ignore[arg-type]
    assert await wait_gone(ssh_hosts, word) == []


async def test_bad_input_is_refused_before_connecting(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        with pytest.raises(ValueError, match="bad target 'web1:99999'"):
            await jobs.invoke([ssh_hosts.targets[0], "web1:99999"], "true")
        with pytest.raises(ValueError, match="throttle_limit must be an int >= 1, got 0"):
            await jobs.invoke(ssh_hosts.targets, "true", throttle_limit=0)
        with pytest.raises(asyncjobs.JobArgumentError, match="empty"):
            await jobs.invoke(ssh_hosts.targets, "  ")
        with pytest.raises(ValueError, match="at least one target"):
            await jobs.invoke([], "true")
        assert jobs.get(include_children=True) == []


async def test_throttle_limits_children_at_once(ssh_hosts: TestHosts) -> None:
    targets = ssh_hosts.targets * 3
    async with JobManager() as jobs:
        job = await jobs.invoke(targets, "sleep 0.3", throttle_limit=2, **opts(ssh_hosts))
        peak = 0
        with anyio.fail_after(30):
            while not job.state.is_finished:
                running = sum(
                    1
                    for c in job.children
                    if c.state is not JobState.NOT_STARTED and not c.state.is_finished
                )
                peak = max(peak, running)
                await anyio.sleep(0.01)
        assert peak <= 2 and job.state is JobState.COMPLETED


async def test_timings_on_every_child_as_json_lines(ssh_hosts: TestHosts) -> None:
    async with JobManager() as jobs:
        job = await jobs.invoke(ssh_hosts.targets, "echo hi", **opts(ssh_hosts))
        await job.wait(timeout=30)
        rows = [json.loads(line) for line in asyncjobs.timings_jsonl(job).splitlines()]
        assert [r["job_id"] for r in rows] == [c.id for c in job.children]
        for row in rows:
            for phase in ("connect", "auth", "channel_open", "first_byte", "exit"):
                assert row[phase] is not None and row[phase] >= 0, phase
            assert row["bytes_in"] > 0 and row["attempts"] == 1 and row["exit_status"] == 0
            assert row["bytes_out"] > len("echo hi")  # the command line, and its wrapper
        assert job.children[0].statistics().timings is job.children[0].timings


async def test_max_startups_resets_are_retried(fresh_ssh_host: TestHosts) -> None:
    # 40 concurrent connects to one sshd with its default MaxStartups 10:30:100: some are reset
    # during the handshake, and are retried until they get through.
    target = fresh_ssh_host.targets[0]
    async with JobManager() as jobs:
        job = await jobs.invoke([target] * 40, "echo ok", throttle_limit=40, **opts(fresh_ssh_host))
        with anyio.fail_after(60):
            await job.wait()
        assert [c.state for c in job.children] == [JobState.COMPLETED] * 40, [
            str(c.reason) for c in job.children if c.reason
        ]
        assert await job.receive() == ["ok"] * 40


async def test_a_host_that_hangs_after_connecting_fails_the_channel_open(
    fresh_ssh_host: TestHosts,
) -> None:
    host = fresh_ssh_host.hosts[0]
    options = opts(fresh_ssh_host, connect_timeout=1)
    async with asyncjobs.connect(host.address, host.port, **options) as s, JobManager() as jobs:
        assert await s.invoke("echo up") == ["up"]
        fresh_ssh_host.pause(0)
        try:
            job = await jobs.invoke([s], "echo never")
            with anyio.fail_after(15):
                await job.wait()
            assert job.state is JobState.FAILED
            assert "timed out after 1 s" in str(job.children[0].reason)
        finally:
            fresh_ssh_host.resume(0)
