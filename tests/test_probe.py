"""invoke(probe=True): what a host is, recorded on its child before the command, real sshd.

The test hosts are this machine, so what the probe finds there is checked against what Python
finds here (``os.uname``, ``/proc/meminfo``, ``os.cpu_count``, ``/usr/bin/python3``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncjobs
from asyncjobs._remote.probe import HostInfo
from tests.ssh_fixtures import on_hosts
from tests.testhosts import TestHosts


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


@on_hosts
async def test_probe_finds_this_machine(ssh_hosts: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets, "echo ran", probe=True, **ssh_hosts.ssh_options()
        )
        assert await parent == ["ran"] * len(ssh_hosts.targets)
    u = os.uname()
    python = subprocess.run(
        ["/usr/bin/python3", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    for child in parent.children:
        info = child.host_info
        assert isinstance(info, HostInfo)
        assert info.kernel == f"{u.sysname} {u.release} {u.machine}"
        assert info.cpu_count == os.cpu_count()
        assert info.memory_total == _mem_total()
        assert info.cpu_model and info.cpu_model in Path("/proc/cpuinfo").read_text()
        assert info.load_average is not None and all(x >= 0 for x in info.load_average)
        assert info.python == python
        assert child.clock is None  # clock= not asked for
        row = info.to_dict()
        assert row["kernel"] == info.kernel and isinstance(row["load_average"], list)


class _PathHosts(TestHosts):
    """Test hosts whose sessions get ``PATH=<bin>`` only (sshd's ``SetEnv``)."""

    def __init__(self, count: int, bin_dir: Path) -> None:
        super().__init__(count)
        self.bin_dir = bin_dir

    def _config_text(self, s: Any) -> str:
        return super()._config_text(s) + f'SetEnv "PATH={self.bin_dir}"\n'


@pytest.fixture
def no_python() -> Iterator[TestHosts]:
    """A host whose PATH holds the POSIX tools the probe uses, but no python3."""
    d = Path(tempfile.mkdtemp(prefix="aj-probe-", dir="/tmp"))
    try:
        d.chmod(0o755)
        for tool in ("uname", "getconf", "date", "sh"):
            found = shutil.which(tool)
            assert found is not None, tool
            (d / tool).symlink_to(found)
        with _PathHosts(1, d) as hosts:
            yield hosts
    finally:
        shutil.rmtree(d)


@on_hosts
async def test_a_host_without_python3_says_none(no_python: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(
            no_python.targets, "echo ran", probe=True, clock=True, **no_python.ssh_options()
        )
        assert await parent == ["ran"]
    child = parent.children[0]
    info = child.host_info
    assert isinstance(info, HostInfo)
    assert info.python is None
    assert info.kernel == " ".join(platform.uname()[i] for i in (0, 2, 4))
    assert info.cpu_count == os.cpu_count()
    assert child.clock is not None and child.clock.source == "date"  # one channel, both


@on_hosts
async def test_an_unreachable_host_fails_only_its_child(ssh_hosts: TestHosts) -> None:
    dead = "127.0.0.1:1"  # nothing listens on port 1
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(
            [ssh_hosts.targets[0], dead], "echo ran", probe=True, **ssh_hosts.ssh_options()
        )
        await parent.wait()
    good, bad = parent.children
    assert good.state is asyncjobs.JobState.COMPLETED and good.host_info is not None
    assert bad.state is asyncjobs.JobState.FAILED and bad.host_info is None


def test_probe_lines_are_parsed_as_data() -> None:
    info = HostInfo.from_lines(
        [
            "kernel=Linux 6.1.0 x86_64",
            "cpu_model=Intel(R) Xeon(R) = fast",
            "cpu_count=8",
            "memory_total=not a number",
            "load_average=0.5 0.25",
            "python=sh: python3: not found",
            "$(rm -rf /)=ignored",
        ]
    )
    assert info == HostInfo(
        kernel="Linux 6.1.0 x86_64", cpu_model="Intel(R) Xeon(R) = fast", cpu_count=8
    )
    assert HostInfo.from_lines([]) == HostInfo()
    assert HostInfo.from_lines(["load_average=1 2 3"]).load_average == (1.0, 2.0, 3.0)


@on_hosts
async def test_timings_jsonl_carries_clock_and_host_info(ssh_hosts: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets[:2], "true", probe=True, clock=True, **ssh_hosts.ssh_options()
        )
        await parent
        plain = await jobs.invoke(ssh_hosts.targets[0], "true", **ssh_hosts.ssh_options())
        await plain
    rows = [json.loads(line) for line in asyncjobs.timings_jsonl(parent).splitlines()]
    assert len(rows) == 2
    for row, child in zip(rows, parent.children, strict=True):
        assert child.clock is not None and child.host_info is not None
        assert row["clock"] == child.clock.to_dict()
        assert row["host_info"] == child.host_info.to_dict()
    [row] = [json.loads(line) for line in asyncjobs.timings_jsonl(plain).splitlines()]
    assert "clock" not in row and "host_info" not in row
