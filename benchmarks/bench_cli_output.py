"""The command line's output: ``asyncjobs invoke`` to 12 hosts vs 12 parallel ``ssh | sed``.

Both sides run the same ``seq 1 N`` on the same 12 real sshd test hosts (``web01``..``web12``
in an ssh_config this script writes), and both tag each line with its host:

- asyncjobs: ``asyncjobs invoke -F CONFIG -H 'web[01-12]' -- 'seq 1 N'``;
- yardstick: ``sh -c 'for h in web01 ... web12; do ssh -F CONFIG $h "seq 1 N" |
  sed "s/^/$h: /" & done; wait'`` (the OpenSSH client, 12 at once: what a user would type).

Each is run as a fresh process, alternately (A, B, A, B, ...), in two places:

- ``terminal``: stdout and stderr a pseudo-terminal of 120 x 40 (``TERM=xterm-256color``)
  whose master this script drains as fast as it can (asyncjobs draws its status line and
  colours its tags there; ssh and sed don't);
- ``file``: stdout a regular file (truncated before each run), stderr ``/dev/null``.

for two sizes (N = 20,000 and 200,000: 240,000 and 2,400,000 lines). Wall time is from spawn
to exit (the terminal drained); CPU is the process's user + system time with its reaped
descendants (``wait4``: sh waits for every ssh and sed). Medians of each side, the median of
the per-pair ratios (asyncjobs / yardstick), and the CPU ratio are printed, and the load
average. Goal: ratio <= 2.0 for every case. The line count of every file run is checked.

    .venv/bin/python benchmarks/bench_cli_output.py [--repeats 5] [--quick] [--sizes 20000,200000]
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
from _common import header, median, parser, verdict
from _remote_common import loadavg, start_hosts

from tests.testhosts import TestHosts

GOAL = 2.0
HOSTS = 12
COLUMNS, LINES = 120, 40


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "asyncjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncjobs"]


def write_config(hosts: TestHosts, directory: Path) -> tuple[Path, list[str]]:
    """An OpenSSH client config naming the hosts web01..webNN (read by ssh and asyncjobs)."""
    names = [f"web{i + 1:02d}" for i in range(hosts.count)]
    config = directory / "ssh_config"
    config.write_text(
        "".join(
            f"Host {name}\n  HostName {h.address}\n  Port {h.port}\n  User {h.username}\n"
            f"  IdentityFile {hosts.client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {hosts.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            for name, h in zip(names, hosts.hosts, strict=True)
        )
    )
    return config, names


def environment() -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color")
    env.pop("SSH_AUTH_SOCK", None)  # the test key only, on both sides
    env.pop("NO_COLOR", None)
    return env


def run_on_terminal(argv: Sequence[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``argv`` with a pty as stdout and stderr, and the bytes that
    came through its master (drained by a thread)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    got = [0]

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 1 << 20)
            except OSError:  # EIO: every writer is gone
                return
            if not data:
                return
            got[0] += len(data)

    reader = threading.Thread(target=drain, daemon=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=environment()
    )
    os.close(slave)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    os.close(master)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}... exited {proc.returncode} on the terminal")
    return wall, usage.ru_utime + usage.ru_stime, got[0]


def run_to_file(argv: Sequence[str], target: Path, lines: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``argv`` with stdout a file; its line count is checked."""
    with target.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
            env=environment(),
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}... exited {proc.returncode}")
    data = target.read_bytes()
    written = data.count(b"\n")
    if written != lines:
        raise SystemExit(f"{argv[:3]}... wrote {written} lines, not {lines}")
    return wall, usage.ru_utime + usage.ru_stime, len(data)


def bench_case(
    where: str, size: int, ours: list[str], theirs: list[str], repeats: int, scratch: Path
) -> float:
    lines = size * HOSTS
    print(f"-- {where}: {HOSTS} hosts x seq 1 {size:,} ({lines:,} lines)   load {loadavg()}")

    def once(argv: list[str]) -> tuple[float, float, int]:
        if where == "terminal":
            return run_on_terminal(argv)
        return run_to_file(argv, scratch / "out", lines)

    once(ours)  # warm-up: the page cache, the sshds' first connections
    once(theirs)
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    sizes: tuple[list[int], list[int]] = ([], [])
    for i in range(repeats):
        for side, argv in enumerate((ours, theirs)):
            wall, cpu, nbytes = once(argv)
            walls[side].append(wall)
            cpus[side].append(cpu)
            sizes[side].append(nbytes)
        print(
            f"  repeat {i + 1}/{repeats}: asyncjobs {walls[0][-1]:6.2f} s (CPU {cpus[0][-1]:5.2f})"
            f"   ssh|sed {walls[1][-1]:6.2f} s (CPU {cpus[1][-1]:5.2f})"
            f"   ratio {walls[0][-1] / walls[1][-1]:.2f}",
            flush=True,
        )
    ratios = [a / b for a, b in zip(*walls, strict=True)]
    cpu_ratios = [a / b for a, b in zip(*cpus, strict=True)]
    ratio = median(ratios)
    print(
        f"  asyncjobs invoke   median {median(walls[0]):6.2f} s   CPU {median(cpus[0]):6.2f} s"
        f"   {median(sizes[0]) / 1e6:6.1f} MB out   {lines / median(walls[0]) / 1e3:7.0f}k lines/s"
    )
    print(
        f"  12 x ssh | sed     median {median(walls[1]):6.2f} s   CPU {median(cpus[1]):6.2f} s"
        f"   {median(sizes[1]) / 1e6:6.1f} MB out   {lines / median(walls[1]) / 1e3:7.0f}k lines/s"
    )
    print(
        f"  ratio asyncjobs/ssh|sed (median of per-pair ratios) {ratio:.3f}   runs "
        f"[{', '.join(f'{r:.2f}' for r in ratios)}]   CPU ratio {median(cpu_ratios):.3f}"
        f"   goal <= {GOAL:g}: {verdict(ratio, GOAL)}",
        flush=True,
    )
    return ratio


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument(
        "--sizes", default="20000,200000", help="lines per host, comma-separated (20000,200000)"
    )
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = args.repeats
    if args.quick:
        sizes, repeats = [2000, 20000], 2
    header("asyncjobs invoke output vs 12 parallel ssh | sed")
    results: dict[str, str] = {}
    with start_hosts(HOSTS) as hosts, tempfile.TemporaryDirectory(prefix="ajo") as tmp:
        scratch = Path(tmp)
        config, names = write_config(hosts, scratch)
        for size in sizes:
            command = f"seq 1 {size}"
            ours = [*cli_argv(), "invoke", "-F", str(config), "-H", "web[01-12]", "--", command]
            loop = (
                f"for h in {' '.join(names)}; do "
                f"ssh -F {config} $h '{command}' | sed \"s/^/$h: /\" & done; wait"
            )
            theirs = ["/bin/sh", "-c", loop]
            for where in ("terminal", "file"):
                ratio = bench_case(where, size, ours, theirs, repeats, scratch)
                results[f"{where} {size}"] = verdict(ratio, GOAL)
    print("== " + "   ".join(f"{name}: {result}" for name, result in results.items()))


if __name__ == "__main__":
    main()
