"""Streaming one SSH channel: ``job.stream()`` (raw bytes and lines) vs asyncssh's ``read(1 MiB)``.

One sshd test host. The remote command writes ``--size`` MiB (default 512 MiB; ``--quick``: 64)
of 1,001-byte lines (1,000 ``x`` + newline), whole lines only, written a ~1 MiB block at a
time by ``python3 -I -S -c PRODUCER LINES`` (``--producer yes``: ``yes "$(head -c 1000
/dev/zero | tr '\\0' x)" | head -n LINES``, which alone tops out near 0.6 GB/s here). The
producer's own rate into a pipe, without SSH, is printed first.

- asyncjobs raw (the goal's subject: "512 MiB of raw bytes"): ``asyncjobs.connect(...)``,
  ``job = await jobs.invoke([session], COMMAND, lines=False)`` (the default ``spill`` buffer
  unless ``--buffer``), ``async for chunk in job.stream()`` counting bytes, then
  ``await job.wait()`` (must be Completed).
- asyncssh (the yardstick): ``conn.create_process(COMMAND, encoding=None)`` and
  ``await process.stdout.read(1 MiB)`` until EOF, counting bytes (no line splitting).
- asyncjobs lines (context, no goal): the same with ``lines=True`` (the default): one output
  item per line, decoded, counted.
- asyncssh lines (context, no goal): ``async for line in process.stdout`` with
  ``encoding="utf-8"``, what splitting lines costs asyncssh itself.

Each is run three ways, both sides with the same cipher order: asyncjobs's default order
(AES-GCM first on a CPU with AES instructions, else asyncssh's; ``asyncjobs/_sshdefaults.py``),
``chacha20-poly1305@openssh.com`` (asyncssh's and OpenSSH's default), and
``aes128-gcm@openssh.com``; the negotiated cipher is printed. The connection
is opened before the clock starts; a round is timed from starting the command until EOF and
exit. Per repeat and cipher: asyncjobs raw, asyncssh, asyncjobs lines, asyncssh lines. GB/s are
10^9 bytes per second, newlines counted.

Goals (issue 4): asyncjobs raw >= 0.7 GB/s with the default cipher; with aes128-gcm ≈ 0.9
GB/s; ChaCha20-Poly1305 is reported (asyncssh's own ceiling with it is below 0.7 here). The
ratio asyncssh GB/s / asyncjobs raw GB/s is printed beside, and the controller's CPU seconds
per GB, which says what one core allows whatever else loads the machine.

    .venv/bin/python benchmarks/bench_remote_stream.py [--quick] [--repeats 5] [--size MiB]
        [--buffer spill|block] [--no-lines] [--profile]
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
import anyio
import asyncssh
from _common import header, median, parser, report_pair
from _remote_common import profile_async, report_goal, ssh_options, start_hosts

import asyncjobs
from tests.testhosts import Host, TestHosts

LINE = 1001  # bytes per line, newline included
CIPHERS: dict[str, list[str] | None] = {
    # asyncjobs's own order (AES-GCM first on CPUs with AES instructions, see
    # asyncjobs/_sshdefaults.py); the asyncssh yardstick is given the same order.
    "default": None,
    "chacha20-poly1305": ["chacha20-poly1305@openssh.com"],  # asyncssh's and OpenSSH's default
    "aes128-gcm": ["aes128-gcm@openssh.com"],
}
GOALS: dict[str, float | None] = {"default": 0.7, "chacha20-poly1305": None, "aes128-gcm": 0.9}
READ = 1 << 20


# The producer: one process writing whole lines a ~1 MiB block at a time (``yes | head -n``
# tops out near 0.6 GB/s on this machine before any SSH, below the goal; see --producer).
PRODUCER = """import sys
n = int(sys.argv[1])
block = (b"x" * 1000 + b"\\n") * 1024
w = sys.stdout.buffer.write
for _ in range(n // 1024):
    w(block)
w(block[: (n % 1024) * 1001])
"""


def command(lines: int, producer: str = "python") -> str:
    """The remote shell command writing ``lines`` lines of ``LINE`` bytes."""
    if producer == "yes":
        return f"yes \"$(head -c {LINE - 1} /dev/zero | tr '\\0' x)\" | head -n {lines}"
    return shlex.join(["python3", "-I", "-S", "-c", PRODUCER, str(lines)])


class Round:
    """One streaming run: bytes and lines read, seconds taken."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.bytes = 0
        self.lines = 0
        self.seconds = 0.0
        self.cpu = 0.0  # controller CPU seconds (process_time), the sshd and producer not included
        self.cipher = "?"
        self.note = ""

    def check(self) -> None:
        assert self.bytes == self.expected, (self.bytes, self.expected)

    @property
    def gb_per_s(self) -> float:
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0


def _cipher(conn: asyncssh.SSHClientConnection) -> str:
    return str(conn.get_extra_info("recv_cipher", "?"))


def _options(hosts: TestHosts, cipher: str) -> dict[str, Any]:
    """The same cipher order for both sides: asyncjobs's default order is made explicit."""
    algs = CIPHERS[cipher]
    if algs is None:
        return ssh_options(hosts)  # asyncjobs's order, written out for both sides
    return ssh_options(hosts, encryption_algs=algs)


async def asyncjobs_round(
    host: Host,
    options: dict[str, Any],
    cmd: str,
    lines: int,
    buffer: asyncjobs.Buffer,
    split: bool = False,
) -> Round:
    r = Round(lines * LINE)
    async with (
        asyncjobs.connect(host.address, host.port, **options) as session,
        asyncjobs.JobManager(buffer=buffer) as jobs,
    ):
        r.cipher = _cipher(session.connection)
        c0 = time.process_time()
        t0 = time.perf_counter()
        job = await jobs.invoke([session], cmd, lines=split)
        count = 0
        size = 0
        async for item in job.stream():
            count += 1
            size += len(item)
        await job.wait()
        r.seconds = time.perf_counter() - t0
        r.cpu = time.process_time() - c0
        r.lines, r.bytes = (count, size + count) if split else (lines, size)
        child = job.children[0]
        assert child.state is asyncjobs.JobState.COMPLETED, (child.state, child.reason)
        stats = child.statistics().buffer
        r.note = f"{count:,} items, spilled {stats.spilled}, high-water {stats.high_water} items"
        await jobs.remove(job)
    r.check()
    assert r.lines == lines
    return r


async def asyncssh_round(host: Host, options: dict[str, Any], cmd: str, lines: int) -> Round:
    r = Round(lines * LINE)
    async with asyncssh.connect(host.address, host.port, **options) as conn:
        r.cipher = _cipher(conn)
        c0 = time.process_time()
        t0 = time.perf_counter()
        async with conn.create_process(cmd, encoding=None) as process:
            size = 0
            while data := await process.stdout.read(READ):
                size += len(data)
            await process.wait()
        r.seconds = time.perf_counter() - t0
        r.cpu = time.process_time() - c0
        r.bytes = size
        assert process.exit_status == 0, process.exit_status
    r.check()
    return r


async def asyncssh_lines_round(host: Host, options: dict[str, Any], cmd: str, lines: int) -> Round:
    r = Round(lines * LINE)
    async with asyncssh.connect(host.address, host.port, **options) as conn:
        r.cipher = _cipher(conn)
        c0 = time.process_time()
        t0 = time.perf_counter()
        async with conn.create_process(cmd, encoding="utf-8") as process:
            count = 0
            size = 0
            async for line in process.stdout:
                count += 1
                size += len(line)  # the newline is kept
            await process.wait()
        r.seconds = time.perf_counter() - t0
        r.cpu = time.process_time() - c0
        r.lines, r.bytes = count, size
        assert process.exit_status == 0, process.exit_status
    r.check()
    return r


async def main_async(
    hosts: TestHosts,
    producer: str,
    lines: int,
    repeats: int,
    buffer: asyncjobs.Buffer,
    with_lines: bool,
) -> None:
    host = hosts.hosts[0]
    cmd = command(lines, producer)
    warm_cmd = command(max(1, lines // 16), producer)
    results: dict[str, dict[str, list[Round]]] = {
        c: {"asyncjobs": [], "asyncssh": [], "asyncjobs lines": [], "lines": []} for c in CIPHERS
    }
    warm = max(1, lines // 16)
    for cipher in CIPHERS:  # warm-up: imports, the sshd's page cache, the cipher code
        await asyncjobs_round(host, _options(hosts, cipher), warm_cmd, warm, buffer)
        await asyncssh_round(host, _options(hosts, cipher), warm_cmd, warm)
    for i in range(repeats):
        line = f"  repeat {i + 1}/{repeats}:"
        for cipher in CIPHERS:
            options = _options(hosts, cipher)
            got = results[cipher]
            got["asyncjobs"].append(await asyncjobs_round(host, options, cmd, lines, buffer))
            got["asyncssh"].append(await asyncssh_round(host, options, cmd, lines))
            line += (
                f"  [{cipher}] asyncjobs {got['asyncjobs'][-1].gb_per_s:.3f}  "
                f"asyncssh {got['asyncssh'][-1].gb_per_s:.3f}"
            )
            if with_lines:
                got["asyncjobs lines"].append(
                    await asyncjobs_round(host, options, cmd, lines, buffer, split=True)
                )
                got["lines"].append(await asyncssh_lines_round(host, options, cmd, lines))
                line += (
                    f"  lines: asyncjobs {got['asyncjobs lines'][-1].gb_per_s:.3f}"
                    f" asyncssh {got['lines'][-1].gb_per_s:.3f}"
                )
        print(line + "  GB/s", flush=True)
    size = lines * LINE
    for cipher, goal in GOALS.items():
        got = results[cipher]
        ours, theirs = got["asyncjobs"], got["asyncssh"]
        print(
            f"-- {size / 2**20:,.1f} MiB of {LINE}-byte lines on one channel, cipher {cipher} "
            f"(negotiated: asyncjobs {ours[0].cipher}, asyncssh {theirs[0].cipher}); asyncjobs "
            "with lines=False"
        )
        report_pair(
            "throughput",
            [r.gb_per_s for r in ours],
            [r.gb_per_s for r in theirs],
            unit="GB/s",
            yardstick=f"asyncssh create_process + stdout.read({READ}) until EOF, no line split",
            goal=None,
            lower_is_better=False,
        )
        if got["lines"]:
            # Issue 13: one item per line, at least asyncssh's own `async for line`.
            report_pair(
                "lines",
                [r.gb_per_s for r in got["asyncjobs lines"]],
                [r.gb_per_s for r in got["lines"]],
                unit="GB/s",
                yardstick='asyncssh `async for line in process.stdout`, encoding="utf-8"',
                goal=1.0,
                lower_is_better=False,
            )
        cpu_a = median([r.cpu / (r.bytes / 1e9) for r in ours])
        cpu_b = median([r.cpu / (r.bytes / 1e9) for r in theirs])
        print(
            f"  controller CPU per GB: asyncjobs {cpu_a:.2f} s, asyncssh read {cpu_b:.2f} s "
            f"(one core's ceiling: {1 / cpu_a:.2f} vs {1 / cpu_b:.2f} GB/s; the sshd, the "
            "producer and other load share the machine's cores)"
        )
        print(f"  asyncjobs buffer ({buffer.mode}): {ours[-1].note}")
        if goal is None:
            continue
        report_goal(
            f"asyncjobs {cipher}",
            median([r.gb_per_s for r in ours]),
            goal,
            unit=" GB/s",
            at_least=True,
        )
        # The best repeat is what the code does when nothing else wants the two cores (the
        # sshd and the producer share them with this process); the median is the goal's.
        best = max(ours, key=lambda r: r.gb_per_s)
        pair = theirs[ours.index(best)]
        print(
            f"  best repeat: asyncjobs {best.gb_per_s:.3f} GB/s, asyncssh in the same repeat "
            f"{pair.gb_per_s:.3f} GB/s"
        )


def producer_alone(cmd: str, nbytes: int) -> None:
    """Time the producer into a pipe here (the hosts are this machine): its own ceiling."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", f"{cmd} | cat > /dev/null"], check=True, timeout=120)
        best = min(best, time.perf_counter() - t0)
    print(
        f"  producer alone (into a pipe, no SSH; best of 3): {nbytes / 1e9 / best:.2f} GB/s"
        f"   [{cmd if len(cmd) < 80 else cmd.split(chr(10))[0] + ' ...'}]",
        flush=True,
    )


def profile(hosts: TestHosts, producer: str, lines: int, buffer: asyncjobs.Buffer) -> None:
    host = hosts.hosts[0]
    options = _options(hosts, "aes128-gcm")
    cmd = command(lines, producer)

    def run(body: Callable[[], Awaitable[Any]]) -> None:
        anyio.run(body, backend="asyncio")

    async def stream() -> None:
        await asyncjobs_round(host, options, cmd, lines, buffer)

    profile_async(f"asyncjobs stream of {lines * LINE / 2**20:,.0f} MiB (aes128-gcm)", run, stream)


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--size", type=int, default=None, help="MiB to stream (default 512)")
    p.add_argument(
        "--buffer",
        choices=("spill", "block"),
        default="spill",
        help="asyncjobs Buffer mode (default spill, the library default)",
    )
    p.add_argument(
        "--producer",
        choices=("python", "yes"),
        default="python",
        help="remote writer: python3 writing 1 MiB blocks (default) or yes | head -n",
    )
    p.add_argument("--no-lines", action="store_true", help="skip the line-by-line context runs")
    p.add_argument(
        "--profile", action="store_true", help="then profile one asyncjobs round with cProfile"
    )
    args = p.parse_args()
    mib = args.size or (64 if args.quick else 512)
    lines = mib * 2**20 // LINE
    buffer = asyncjobs.Buffer(mode=args.buffer)
    header("bench_remote_stream: one SSH channel, job.stream() vs asyncssh read", "asyncio")
    with start_hosts(1, load=True) as hosts:
        producer_alone(command(lines, args.producer), lines * LINE)
        anyio.run(
            main_async,
            hosts,
            args.producer,
            lines,
            args.repeats,
            buffer,
            not args.no_lines,
            backend="asyncio",
        )
        if args.profile:
            profile(hosts, args.producer, lines, buffer)


if __name__ == "__main__":
    main()
