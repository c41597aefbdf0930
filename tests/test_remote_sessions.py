"""``asyncjobs.connect(host, name=..., create=, idle_timeout=, output_buffering=)``: a remote
job host session's own settings, as ``connect_local`` has them, through real sshd."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import asyncjobs
from asyncjobs import AsyncJobsError, JobArgumentError, JobState
from asyncjobs._host.protocol import CLOSE_SESSION
from tests.testhosts import TestHosts

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_idle_timeout_and_output_buffering_reach_the_remote_session(
    ssh_hosts: TestHosts,
) -> None:
    host = ssh_hosts.hosts[0]
    options: dict[str, Any] = dict(ssh_hosts.ssh_options())
    name = unique("short")
    async with asyncjobs.connect(
        host.address, host.port, name=name, idle_timeout=0.5, output_buffering="drop", **options
    ) as s:
        job = await s.jobs.start_command("sleep 1000")
    infos = {i.name: i for i in await asyncjobs.get_sessions(host.address, host.port, **options)}
    if name in infos:  # it may already be gone: 0.5 s is short
        assert infos[name].idle_timeout == 0.5
    watcher = unique("watcher")
    async with asyncjobs.connect(host.address, host.port, name=watcher, **options) as w:
        [info] = await w.jobs.wait(job.id, timeout=20)
        assert info.state is JobState.STOPPED  # the idle timeout stopped the session's jobs
        names = [i.name for i in await asyncjobs.get_sessions(host.address, host.port, **options)]
        assert name not in names
        for done in await w.jobs.get():
            await w.jobs.remove(done.id, force=True)


async def test_create_false_needs_an_existing_session(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    options: dict[str, Any] = dict(ssh_hosts.ssh_options())
    missing = unique("missing")
    async with asyncjobs.connect(
        host.address, host.port, name=missing, create=False, **options
    ) as s:
        with pytest.raises(AsyncJobsError, match=f"no session named '{missing}'"):
            await s.jobs.get()  # the job host session opens on first use
    name = unique("kept")
    async with asyncjobs.connect(host.address, host.port, name=name, **options) as s:
        assert await s.jobs.get() == []
    async with asyncjobs.connect(host.address, host.port, name=name, create=False, **options) as s:
        assert await s.jobs.get() == []  # reattached
        await (await s.jobs._c.connection()).request(CLOSE_SESSION)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"idle_timeout": 0}, "idle_timeout must be seconds > 0"),
        ({"idle_timeout": "5"}, "idle_timeout must be seconds > 0"),
        ({"output_buffering": "spill"}, "output_buffering must be 'block', 'drop'"),
        ({"create": "no"}, "create must be True or False"),
        ({"name": None, "create": False}, "create=False needs the name="),
    ],
)
async def test_bad_session_options_are_refused_before_connecting(
    kwargs: dict[str, Any], match: str
) -> None:
    kwargs.setdefault("name", "x")
    with pytest.raises(JobArgumentError, match=match):
        asyncjobs.connect("127.0.0.1", 1, **kwargs)  # port 1: nothing is ever reached
