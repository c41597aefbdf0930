"""Warm connections (issue 14 item 9): the second ``asyncjobs invoke -H <32 hosts> -- true`` on
the connections the local job host holds, against the first, which connects.

Every run is a fresh ``asyncjobs`` process, as a user runs it. Each repeat uses a job host of
its own (``ASYNCJOBS_HOST_DIR`` in a new directory), started beforehand by ``asyncjobs get``
(not timed: a user's job host is usually running already), so the first invoke finds no
connection held and connects to every host, and the second, right after, finds them all held.
A third run with ``--no-persist`` (connecting from the CLI process itself, the path without
the job host) is printed for context. The job host is stopped after each repeat.

Bytecode is cached as an installed package has it (``PYTHONDONTWRITEBYTECODE`` is dropped for
the runs, and one untimed invoke writes it).

Goal (issue 14): first / second >= 5 (median of per-repeat ratios). CPU is the CLI process's
own (``RUSAGE_CHILDREN``): the job host's work is not in it, so wall time is the measure.

    .venv/bin/python benchmarks/bench_warm.py [--quick] [--repeats 5] [--hosts 32]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _remote_common  # noqa: F401  (puts the repository root on sys.path)
from _common import header, median, parser, verdict
from _remote_common import start_hosts
from bench_cli import cli_argv, cli_ssh_flags, report, stop_host, timed

GOAL = 5.0


def main() -> None:
    p = parser(__doc__ or "", backends=False)
    p.add_argument("--hosts", type=int, default=32, help="test hosts (default 32)")
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    count = 4 if args.quick else args.hosts
    header("bench_warm: invoke on held connections vs connecting", backend="asyncio")
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    # As installed asyncjobs runs: from cached bytecode (pip writes it; a machine that sets
    # PYTHONDONTWRITEBYTECODE compiles every module of every run, ~0.15 s of each here).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with start_hosts(count) as hosts:
        addresses = ",".join(f"{h.address}:{h.port}" for h in hosts.hosts)
        flags = ["-H", addresses, *cli_ssh_flags(hosts), "--", "true"]
        timed([*cli_argv(), "invoke", "--no-persist", *flags], env)  # writes the bytecode
        first, second, direct = [], [], []
        for i in range(repeats):
            directory = Path(tempfile.mkdtemp(prefix="bench-warm-"))
            env["ASYNCJOBS_HOST_DIR"] = str(directory)
            try:
                timed([*cli_argv(), "get"], env)  # the job host runs (not timed)
                first.append(timed([*cli_argv(), "invoke", *flags], env))
                second.append(timed([*cli_argv(), "invoke", *flags], env))
                direct.append(timed([*cli_argv(), "invoke", "--no-persist", *flags], env))
            finally:
                stop_host(directory)
            print(
                f"  repeat {i + 1}/{repeats}: first {first[-1][0] * 1000:.0f} ms, second "
                f"{second[-1][0] * 1000:.0f} ms, --no-persist {direct[-1][0] * 1000:.0f} ms",
                flush=True,
            )
        print(f"-- asyncjobs invoke -H <{count} hosts> -- true, a fresh process each")
        report("first (connects, then holds)", first)
        report("second (on the held connections)", second)
        report("--no-persist (connects from the CLI)", direct)
        ratios = [a[0] / b[0] for a, b in zip(first, second, strict=True)]
        ratio = median(ratios)
        print(
            f"  ratio first/second (median of per-repeat ratios) {ratio:.2f}   runs "
            f"[{', '.join(f'{r:.2f}' for r in ratios)}]   goal >= {GOAL:g}: "
            f"{verdict(GOAL, ratio)}"
        )
        cold = median([a[0] / b[0] for a, b in zip(direct, second, strict=True)])
        print(f"  ratio --no-persist/second {cold:.2f} (the same invoke without the job host)")


if __name__ == "__main__":
    main()
