"""On trio, remote features say they need asyncio; local jobs keep working there."""

from __future__ import annotations

import pytest

import asyncjobs
from asyncjobs import AsyncJobsError, JobManager
from tests.testhosts import TestHosts

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"])]


def local() -> str:
    return "local still works"


async def test_remote_features_say_they_need_asyncio(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    with pytest.raises(AsyncJobsError, match="needs asyncio"):
        await asyncjobs.connect(host.address, host.port, **ssh_hosts.ssh_options())
    async with JobManager() as jobs:
        with pytest.raises(AsyncJobsError, match="needs asyncio"):
            await jobs.invoke(ssh_hosts.targets, "true")
        assert await (await jobs.start_thread(local)) == ["local still works"]
