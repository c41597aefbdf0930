"""``python -m asyncjobs.testing N``: start N sshd test hosts, print one JSON line describing
them (targets, ssh options with paths, pids), wait for SIGINT/SIGTERM, clean up."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

from ._hosts import TestHosts
from ._machine import TestHostsError


def main(argv: Sequence[str] | None = None) -> int:
    """Start N hosts, print one JSON line describing them, wait for SIGINT/SIGTERM, clean up."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncjobs.testing",
        description="Start N real sshd test hosts on loopback until SIGINT/SIGTERM.",
    )
    parser.add_argument("count", type=int, help="number of hosts")
    parser.add_argument(
        "--defaults", action="store_true", help="keep sshd's default MaxSessions/MaxStartups"
    )
    parser.add_argument("--max-sessions", type=int, default=None)
    parser.add_argument("--max-startups", default=None)
    parser.add_argument(
        "--addresses", choices=["ports", "loopback-range", "netns"], default="ports"
    )
    parser.add_argument("--mode", choices=["auto", "root", "user"], default="auto")
    parser.add_argument(
        "--seconds", type=float, default=None, help="stop by itself after this long"
    )
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    hosts = TestHosts(
        args.count,
        load=not args.defaults,
        max_sessions=args.max_sessions,
        max_startups=args.max_startups,
        addresses=args.addresses,
        mode=args.mode,
    )
    try:
        with hosts:
            info = {
                "targets": hosts.targets,
                "hosts": [{"address": h.address, "port": h.port} for h in hosts.hosts],
                "username": hosts.username,
                "homes": [str(hosts.home(i)) for i in range(hosts.count)],
                "client_key": str(hosts.client_key),
                "known_hosts": str(hosts.known_hosts),
                "ssh_options": hosts.ssh_options(),
                "pids": hosts.pids,
                "max_sessions": hosts.max_sessions,
                "max_startups": hosts.max_startups,
                "start_seconds": round(hosts.start_seconds or 0.0, 4),
            }
            print(json.dumps(info), flush=True)
            end = None if args.seconds is None else time.monotonic() + args.seconds
            while end is None or time.monotonic() < end:
                time.sleep(3600 if end is None else max(0.0, min(3600, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    except TestHostsError as e:
        print(f"asyncjobs.testing: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
