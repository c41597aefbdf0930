"""invoke(clock=True): each host's wall clock measured against ours, against real sshd.

A host whose clock is off is made without touching the machine's clock: its sshd sets
``PATH`` for every session (``SetEnv``, sshd_config) to a directory whose ``date`` is a wrapper
that runs the real GNU ``date`` shifted by a known number of seconds (``date -d "N seconds"``).
What this shows: the measurement reads the host's own ``date`` over the connection and gets the
shift back within the error bound it reports. What it does not show: a kernel clock that is
really off (libfaketime would, but Debian's faketime is not installed by scripts/ensure-sshd).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncjobs
from asyncjobs import JobManager
from asyncjobs._remote.clock import CLOCK_SCRIPT, MARK, ClockOffset, best_sample, host_ns
from tests.ssh_fixtures import on_hosts
from tests.testhosts import TestHosts

REAL_DATE = shutil.which("date") or "/usr/bin/date"


class _PathHosts(TestHosts):
    """Test hosts whose sessions get ``PATH=<bin>:...`` (sshd's ``SetEnv``, applied last)."""

    def __init__(self, count: int, bin_dir: Path) -> None:
        super().__init__(count)
        self.bin_dir = bin_dir

    def _config_text(self, s: Any) -> str:
        path = f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin"
        return super()._config_text(s) + f'SetEnv "PATH={path}"\n'


def _bin_dir(date_script: str) -> Iterator[Path]:
    """A directory every user may read holding ``date`` (the test user runs it)."""
    d = Path(tempfile.mkdtemp(prefix="aj-clock-", dir="/tmp"))
    try:
        d.chmod(0o755)
        date = d / "date"
        date.write_text(date_script)
        date.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def skewed() -> Iterator[TestHosts]:
    """Host 0 runs an hour ahead (+3600 s), host 1 37 s behind: each its own bin directory
    would need its own sshd config, so the shift is chosen by the port sshd listens on."""
    script = (
        "#!/bin/sh\n"
        "# what a host whose clock is off prints: the real date shifted by $SHIFT seconds\n"
        'case "$SSH_CONNECTION" in *" $FIRST_PORT") s=3600;; *) s=-37;; esac\n'
        f'exec {REAL_DATE} -d "$s seconds" "$@"\n'
    )
    for d in _bin_dir(script):
        with _PathHosts(2, d) as hosts:
            text = (d / "date").read_text().replace("$FIRST_PORT", str(hosts.hosts[0].port))
            (d / "date").write_text(text)
            yield hosts


@on_hosts
async def test_measures_a_known_offset(skewed: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(skewed.targets, "true", clock=True, **skewed.ssh_options())
        await parent
        first, second = parent.children
    for child, shift in ((first, 3600.0), (second, -37.0)):
        clock = child.clock
        assert isinstance(clock, ClockOffset)
        assert clock.source == "date" and clock.samples == 5
        assert 0 < clock.rtt < 1.0 and clock.error >= clock.rtt / 2
        # date -d "N seconds" is read a fork later than the plain one: allow its start-up
        assert abs(clock.offset - shift) <= clock.error + 0.05, (clock, shift)
        host_time = clock.measured_at + shift
        assert abs(clock.to_controller(host_time) - clock.measured_at) <= clock.error + 0.05
        assert clock.to_host(clock.to_controller(123.0)) == pytest.approx(123.0)
        assert set(clock.to_dict()) == {
            "offset",
            "rtt",
            "error",
            "samples",
            "source",
            "measured_at",
        }


@on_hosts
async def test_an_unskewed_host_is_within_its_bound(ssh_hosts: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets, "echo ran", clock=True, **ssh_hosts.ssh_options()
        )
        assert await parent == ["ran"] * len(ssh_hosts.targets)
    for child in parent.children:
        assert isinstance(child.clock, ClockOffset)
        assert abs(child.clock.offset) <= child.clock.error  # one machine: the same clock
        assert child.host_info is None  # probe= not asked for


@pytest.fixture
def bsd_date() -> Iterator[TestHosts]:
    """A ``date`` without GNU's ``%N`` (BSD, busybox builds): it prints ``N`` literally."""
    script = f'#!/bin/sh\n[ "$1" = "+%s%N" ] && exec {REAL_DATE} +%sN\nexec {REAL_DATE} "$@"\n'
    for d in _bin_dir(script):
        with _PathHosts(1, d) as hosts:
            yield hosts


@on_hosts
async def test_falls_back_to_python3_without_nanoseconds(bsd_date: TestHosts) -> None:
    assert os.path.exists("/usr/bin/python3")
    async with asyncjobs.JobManager() as jobs:
        parent = await jobs.invoke(bsd_date.targets, "true", clock=True, **bsd_date.ssh_options())
        await parent
    clock = parent.children[0].clock
    assert isinstance(clock, ClockOffset) and clock.source == "python3"
    assert abs(clock.offset) <= clock.error


@on_hosts
async def test_a_session_is_measured_too(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    options = ssh_hosts.ssh_options()
    async with asyncjobs.connect(host.address, host.port, **options) as s, JobManager() as jobs:
        parent = await jobs.invoke([s], "true", clock=True, probe=True)
        await parent
    child = parent.children[0]
    assert isinstance(child.clock, ClockOffset) and child.host_info is not None


@on_hosts
async def test_bad_arguments_raise_before_anything_connects(ssh_hosts: TestHosts) -> None:
    async with asyncjobs.JobManager() as jobs:
        with pytest.raises(asyncjobs.JobArgumentError, match="clock must be True or False"):
            await jobs.invoke(ssh_hosts.targets, "true", clock="yes")  # type: ignore[arg-type]
        with pytest.raises(asyncjobs.JobArgumentError, match="probe must be True or False"):
            await jobs.invoke(ssh_hosts.targets, "true", probe=1)  # type: ignore[arg-type]
        assert jobs.get() == []


def test_the_smallest_round_trip_wins() -> None:
    samples = [(0.0, 0.010, 5_000_000_000), (1.0, 1.002, 6_002_000_000), (2.0, 2.5, 1)]
    best = best_sample(samples, "date")
    assert best is not None
    assert best.rtt == pytest.approx(0.002) and best.offset == pytest.approx(5.001)
    assert best.error == pytest.approx(0.001 + 1e-9) and best.samples == 3
    assert best_sample([], "date") is None
    assert best_sample([(0.0, 0.002, 0)], "seconds").error == pytest.approx(1.001)  # type: ignore[union-attr]


def _local_samples(shell: str, n: int = 3) -> tuple[str, list[int | None]]:
    """CLOCK_SCRIPT run by ``shell`` here (a real process, pipes, not SSH): its source and
    its answers to ``n`` newlines."""
    proc = subprocess.run(
        [shell, "-c", CLOCK_SCRIPT], input=b"\n" * n, capture_output=True, timeout=30, check=True
    )
    head, *answers = proc.stdout.splitlines()
    assert head.startswith(MARK.encode()), proc.stdout
    return head[len(MARK) :].decode(), [host_ns(a) for a in answers]


def test_bash_reads_its_builtin_clock_and_dash_forks_date() -> None:
    now = time.time_ns()
    for shell, source in (("bash", "bash"), ("dash", "date")):
        assert shutil.which(shell), shell
        got, answers = _local_samples(shell)
        assert got == source and len(answers) == 3
        assert all(a is not None and abs(a - now) < 30e9 for a in answers), answers


def test_host_answers_parse_as_nanoseconds() -> None:
    assert host_ns(b"1700000000123456789\n") == 1700000000123456789
    assert host_ns(b"1700000000.123456\n") == 1700000000123456000
    assert host_ns(b"1700000000,5\n") == 1700000000500000000
    assert host_ns(b"1700000000N\n") is None and host_ns(b"") is None
    assert host_ns(b"-1.5") is None and host_ns(b"1.2.3") is None
