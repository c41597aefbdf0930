"""Copy one big file to 4 hosts: ``JobManager.copy`` vs 4 parallel ``scp`` processes.

4 sshd test hosts on this machine (``TestHosts(4, load=True)``), each host's SFTP sessions
started in a directory of its own (``internal-sftp -d``, as ``tests/test_transfer.py`` does),
so that each host writes its own file, as four real machines would.

- asyncjobs: ``job = await jobs.copy(targets, FILE, "copy.bin", **ssh_options)`` (one child
  per host over SFTP on its own connection), ``await job.wait()``; every child must be
  Completed and every host's file the right size.
- scp: 4 ``scp -q -B -F /dev/null -c aes128-gcm@openssh.com -i KEY -P PORT FILE
  user@127.0.0.1:copy.bin`` at once (OpenSSH's scp, which speaks SFTP too), waited for; the
  same key, known_hosts (checked) and cipher asyncjobs negotiates.

Per repeat: asyncjobs then scp (alternating which goes first), each on freshly deleted
destination files, the file read from the page cache (read once before). Reported: the wall
seconds of each, their throughput (MiB/s of the 4 copies together), and the median of the
per-repeat ratios scp wall / asyncjobs wall, which is asyncjobs's throughput as a fraction of
scp's. CPU: this process (``time.process_time``) vs the scp processes
(``RUSAGE_CHILDREN``); the sshds are counted on neither side. Goal (issue 14 item 5): the
ratio >= 0.8.

    .venv/bin/python benchmarks/bench_copy.py [--quick] [--repeats 5] [--size-mib 256]
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
from _common import header, median
from _remote_common import loadavg, report_goal, ssh_options

import asyncjobs
from tests.testhosts import TestHosts, TestHostsError

GOAL = 0.8
HOSTS = 4
DEST = "copy.bin"


class SftpHosts(TestHosts):
    """Test hosts whose SFTP sessions start in ``roots[i]`` (``internal-sftp -d``)."""

    def __init__(self, count: int, roots: list[Path]) -> None:
        super().__init__(count, load=True)
        self.roots = roots

    def _config_text(self, s: Any) -> str:
        text = super()._config_text(s)
        line = "Subsystem sftp internal-sftp"
        assert line in text, "the test hosts' sshd config changed: update SftpHosts"
        return text.replace(line, f"{line} -d {self.roots[s.index]}")


def _clear(roots: list[Path]) -> None:
    for root in roots:
        for path in root.iterdir():
            path.unlink()


def _check(roots: list[Path], size: int) -> None:
    for root in roots:
        got = (root / DEST).stat().st_size
        assert got == size, (root, got, size)


async def asyncjobs_copy(hosts: SftpHosts, source: Path, options: dict[str, Any]) -> float:
    async with asyncjobs.JobManager() as jobs:
        t0 = time.perf_counter()
        job = await jobs.copy(hosts.targets, source, DEST, **options)
        await job.wait()
        wall = time.perf_counter() - t0
    bad = [
        (c.location, c.reason) for c in job.children if c.state is not asyncjobs.JobState.COMPLETED
    ]
    assert not bad, bad
    return wall


async def scp_copy(hosts: SftpHosts, source: Path) -> float:
    argv = [
        "scp", "-q", "-B", "-F", "/dev/null", "-c", "aes128-gcm@openssh.com",
        "-i", str(hosts.client_key), "-o", f"UserKnownHostsFile={hosts.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
    ]  # fmt: skip
    t0 = time.perf_counter()
    procs = []
    for h in hosts.hosts:
        where = f"{h.username}@{h.address}:{DEST}"
        procs.append(
            await asyncio.create_subprocess_exec(
                *argv, "-P", str(h.port), str(source), where, stdin=subprocess.DEVNULL
            )
        )
    codes = [await p.wait() for p in procs]
    wall = time.perf_counter() - t0
    assert codes == [0] * len(procs), codes
    return wall


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = _common_parser()
    args = p.parse_args()
    size = (args.size_mib if not args.quick else 32) << 20
    header(f"copy: one {size >> 20} MiB file to {HOSTS} hosts, asyncjobs vs {HOSTS} x scp")
    if shutil.which("scp") is None:
        raise SystemExit("scp is missing: apt-get install openssh-client")
    top = Path(tempfile.mkdtemp(prefix="asyncjobs-bench-copy-"))
    top.chmod(0o755)
    roots = [top / f"host{i}" for i in range(HOSTS)]
    for root in roots:
        root.mkdir()
    source = top / "source.bin"
    with open(source, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    source.chmod(0o644)
    source.read_bytes()  # in the page cache for both sides
    try:
        hosts = SftpHosts(HOSTS, roots).start()
    except TestHostsError as exc:
        raise SystemExit(f"cannot start the sshd test hosts: {exc}") from None
    try:
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(hosts.username)
            for root in roots:
                os.chown(root, pw.pw_uid, pw.pw_gid)
        options = ssh_options(hosts)
        print(f"  cipher: {options.get('encryption_algs', ['?'])[0]} on both sides")
        print(f"  load average at start: {loadavg()}")
        ours: list[float] = []
        theirs: list[float] = []
        cpu_ours: list[float] = []
        cpu_theirs: list[float] = []

        async def run_all() -> None:
            for repeat in range(args.repeats + 1):  # the first pair warms up, not counted
                order = ("ours", "scp") if repeat % 2 else ("scp", "ours")
                for side in order:
                    _clear(roots)
                    if side == "ours":
                        c0 = time.process_time()
                        wall = await asyncjobs_copy(hosts, source, options)
                        cpu = time.process_time() - c0
                    else:
                        c0 = _children_cpu()
                        wall = await scp_copy(hosts, source)
                        cpu = _children_cpu() - c0
                    _check(roots, size)
                    if repeat:
                        (ours if side == "ours" else theirs).append(wall)
                        (cpu_ours if side == "ours" else cpu_theirs).append(cpu)
                if repeat:
                    print(
                        f"  repeat {repeat}: asyncjobs {ours[-1]:.2f} s, scp {theirs[-1]:.2f} s, "
                        f"ratio {theirs[-1] / ours[-1]:.3f}",
                        flush=True,
                    )

        asyncio.run(run_all())
        total = HOSTS * size / (1 << 20)
        ratios = [b / a for a, b in zip(ours, theirs, strict=True)]
        print(
            f"  asyncjobs: median {median(ours):.2f} s, {total / median(ours):.0f} MiB/s, "
            f"CPU {median(cpu_ours):.2f} s (this process)"
        )
        print(
            f"  4 x scp:   median {median(theirs):.2f} s, {total / median(theirs):.0f} MiB/s, "
            f"CPU {median(cpu_theirs):.2f} s (the scp and ssh processes)"
        )
        print(
            "  per-pair ratios (scp wall / asyncjobs wall): " + " ".join(f"{r:.3f}" for r in ratios)
        )
        report_goal(
            "throughput asyncjobs / scp (median of per-pair ratios)",
            median(ratios),
            GOAL,
            at_least=True,
        )
        print(f"  load average at end: {loadavg()}")
    finally:
        hosts.close()
        shutil.rmtree(top, ignore_errors=True)


def _common_parser() -> Any:
    from _common import parser

    p = parser(__doc__.splitlines()[0], backends=False)
    p.add_argument("--size-mib", type=int, default=256, help="the file's size (default 256)")
    return p


if __name__ == "__main__":
    main()
