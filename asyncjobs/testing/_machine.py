"""What the test hosts need from the machine, checked, and the machine-wide pieces they share:
the dedicated test user (root mode), free ports, loopback addresses, network namespaces."""

from __future__ import annotations

import functools
import ipaddress
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from ._procs import environ_value, signal_pid, wait_gone

SSHD: Final = "/usr/sbin/sshd"
TEST_USER: Final = "asyncjobs-test"
TEST_HOME: Final = Path("/var/lib/asyncjobs-test")
INSTALL_HINT: Final = "install OpenSSH's server (Debian: apt-get install -y openssh-server)"
IPROUTE_HINT: Final = "network namespaces need root and iproute2 (apt-get install -y iproute2)"

#: What the test hosts need, said whenever something of it is missing.
REQUIREMENTS: Final = (
    f"asyncjobs.testing needs OpenSSH's sshd at {SSHD} and ssh-keygen ({INSTALL_HINT}). "
    f"As root, every sshd runs as root and accepts one dedicated user, {TEST_USER} (created on "
    "first use, home /var/lib/asyncjobs-test); as any other user, every sshd runs as you and "
    "accepts only you, each host with a home of its own. addresses='netns' needs root and "
    "iproute2."
)

Addresses = Literal["ports", "loopback-range", "netns"]
#: ``"root"``: sshd as root, the dedicated test user logs in; ``"user"``: sshd as the caller,
#: who is the one user it accepts; ``"auto"``: ``"root"`` when run as root, else ``"user"``.
Mode = Literal["auto", "root", "user"]

# Files that would make a remote command start slower or differently. /bin/sh is dash on Debian,
# which reads none of them for `sh -c`, and sshd is told `PermitUserRC no`; we still insist the
# test user's home stays clean so a later change of shell cannot bring them back silently.
RC_FILES: Final = (
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".shrc",
    ".kshrc",
    ".zshrc",
    ".zshenv",
    ".ssh/rc",
    ".ssh/environment",
)

#: The benchmarking range (RFC 2544), never routed on the internet: the veth links of netns hosts
#: get /30s from it. A test's traffic to them goes only into namespaces the tests made.
NETNS_RANGE: Final = ipaddress.IPv4Network("198.18.0.0/15")


class TestHostsError(RuntimeError):
    """The test hosts could not be set up, started or stopped; the message says why and how to
    fix it."""

    __test__ = False


@functools.cache
def sshd_version() -> tuple[int, int]:
    """(major, minor) of the OpenSSH installed as ``/usr/sbin/sshd``."""
    for argv in ([SSHD, "-V"], ["ssh", "-V"]):
        try:
            out = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(rb"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
        if m:
            return int(m[1]), int(m[2])
    raise TestHostsError(f"cannot tell the OpenSSH version of {SSHD}. {REQUIREMENTS}")


def resolve_mode(mode: Mode) -> Literal["root", "user"]:
    """The mode ``mode`` means for this caller; raises ``TestHostsError`` when it cannot be had."""
    root = os.geteuid() == 0
    if mode == "auto":
        return "root" if root else "user"
    if mode == "root" and not root:
        raise TestHostsError(f"mode='root' needs root (this is uid {os.geteuid()}). {REQUIREMENTS}")
    if mode == "user" and root:
        raise TestHostsError(
            "mode='user' is for a non-root caller (sshd accepts only the user it runs as, and "
            f"root logins are refused); as root use mode='root'. {REQUIREMENTS}"
        )
    return mode


def check_machine(mode: Mode = "auto", addresses: Addresses = "ports") -> Literal["root", "user"]:
    """Check that this machine can run test hosts in ``mode`` with ``addresses``; return the
    mode resolved, or raise ``TestHostsError`` saying what is missing and how to get it."""
    resolved = resolve_mode(mode)
    if not os.path.exists(SSHD):
        raise TestHostsError(f"{SSHD} is missing. {REQUIREMENTS}")
    if shutil.which("ssh-keygen") is None:
        raise TestHostsError(f"ssh-keygen is missing. {REQUIREMENTS}")
    if addresses == "netns":
        if resolved != "root":
            raise TestHostsError(f"addresses='netns' needs root. {REQUIREMENTS}")
        if shutil.which("ip") is None:
            raise TestHostsError(f"the ip command is missing: {IPROUTE_HINT}")
    return resolved


def _shadow_password(user: str) -> str | None:
    with open("/etc/shadow") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    return None


_user_lock = threading.Lock()


def ensure_test_user() -> pwd.struct_passwd:
    """Create (once per machine, as root) the test user and its empty home; return its entry.

    The password field is ``*`` (not useradd's ``!``): with ``UsePAM no`` sshd refuses a locked
    account even for key auth. The shell is ``/bin/sh`` and the home holds no rc files, so remote
    commands start fast and see a clean environment.
    """
    with _user_lock:
        try:
            pw = pwd.getpwnam(TEST_USER)
        except KeyError:
            argv = ["useradd", "--system", "--user-group", "--shell", "/bin/sh"]
            argv += ["--home-dir", str(TEST_HOME), "--no-create-home", "--password", "*", TEST_USER]
            made = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            try:  # another process may have created it at the same time
                pw = pwd.getpwnam(TEST_USER)
            except KeyError:
                raise TestHostsError(
                    f"cannot create the test user {TEST_USER}: {made.stderr.decode().strip()}"
                ) from None
        fixes: list[str] = []
        if _shadow_password(TEST_USER) != "*":
            fixes += ["--password", "*"]
        if pw.pw_shell != "/bin/sh":
            fixes += ["--shell", "/bin/sh"]
        if pw.pw_dir != str(TEST_HOME):
            fixes += ["--home", str(TEST_HOME)]
        if fixes:
            subprocess.run(
                ["usermod", *fixes, TEST_USER], capture_output=True, timeout=30, check=True
            )
            pw = pwd.getpwnam(TEST_USER)
        TEST_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(TEST_HOME, pw.pw_uid, pw.pw_gid)
        found = [name for name in RC_FILES if (TEST_HOME / name).exists()]
        if found:
            raise TestHostsError(
                f"the test user's home {TEST_HOME} must hold no shell rc files, found {found}: "
                "remove them (a remote command must not source anything)"
            )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        return pw


_ports_lock = threading.Lock()
_ports_handed_out: set[tuple[str, int]] = set()


def free_port(addresses: Sequence[str]) -> int:
    """A port that is free on every one of ``addresses`` now (sshd may still lose a race for it:
    the caller retries on "Address already in use")."""
    with _ports_lock:
        for _ in range(200):
            socks: list[socket.socket] = []
            try:
                first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(first)
                first.bind((addresses[0], 0))
                port: int = first.getsockname()[1]
                if any((a, port) in _ports_handed_out for a in addresses):
                    continue
                for a in addresses[1:]:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.bind((a, port))
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
            _ports_handed_out.update((a, port) for a in addresses)
            return port
    raise TestHostsError(f"found no free port on {addresses[0]}…")


def ip(*args: str, netns: str | None = None) -> None:
    """Run ``ip [-n NETNS] ARGS``; a failure raises ``TestHostsError`` with ip's own words."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise TestHostsError(f"the ip command is missing: {IPROUTE_HINT}") from None
    if out.returncode != 0:
        raise TestHostsError(f"{' '.join(cmd)} failed: {out.stderr.strip()}; {IPROUTE_HINT}")


def free_netns_subnet(count: int) -> ipaddress.IPv4Network:
    """A /24 of ``NETNS_RANGE`` that no interface of this machine uses (another test run may
    hold one): room for 64 hosts, a /30 each."""
    if count > 64:
        raise TestHostsError(f"at most 64 netns hosts per TestHosts, asked for {count}")
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False)
    used = [
        ipaddress.IPv4Interface(word).network
        for word in out.stdout.split()
        if "/" in word and word[0].isdigit()
    ]
    subnets = list(NETNS_RANGE.subnets(new_prefix=24))
    rng = random.Random()
    for _ in range(100):
        net = rng.choice(subnets)
        if not any(net.overlaps(u) for u in used):
            return net
    raise TestHostsError(f"found no free /24 in {NETNS_RANGE} for netns hosts")


def loopback_addresses(count: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, … (skipping .0/.255 endings and 127.0.1.1, Debian's hostname)."""
    out: list[str] = []
    n = int(ipaddress.IPv4Address("127.0.0.2"))
    while len(out) < count:
        a = ipaddress.IPv4Address(n)
        n += 1
        if a.packed[3] in (0, 255) or str(a) == "127.0.1.1":
            continue
        if a not in ipaddress.IPv4Network("127.0.0.0/8"):
            raise TestHostsError(f"too many hosts for 127.0.0.0/8: {count}")
        out.append(str(a))
    return out


def probe(address: str, port: int, timeout: float) -> bool:
    """True if ``address:port`` accepts TCP and sends an SSH banner within ``timeout``."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            if not data.startswith(b"SSH-"):
                return False
            # Answer in kind, so sshd does not log "kex_exchange_identification: Connection closed".
            s.sendall(b"SSH-2.0-asyncjobs_testhosts_probe\r\n")
            return True
    except OSError:  # refused, reset or timed out
        return False


def _stop(pids: Sequence[int], deadline: float) -> None:
    for pid in pids:
        signal_pid(pid, signal.SIGTERM)
    for pid in wait_gone(pids, time.monotonic() + deadline):
        signal_pid(pid, signal.SIGKILL)


def _job_host_pids(user: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-u", user, "-f", "asyncjobs._host.daemon"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return [int(p) for p in out.stdout.split()]


def stop_job_hosts(deadline: float = 10.0) -> list[int]:
    """Stop the test user's job hosts (root mode), TERM then KILL, and return their pids.

    A job host detaches from the sshd session that started it (that is its job), so no
    ``TestHosts`` owns it, and in root mode every host shares the test user's home, so one job
    host serves them all. The dedicated test user runs nothing but what tests start: call this
    when a test run ends (the pytest plugin does). Does nothing unless run as root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return []
    pids = _job_host_pids(TEST_USER)
    _stop(pids, deadline)
    return pids


def stop_job_hosts_under(directory: Path, user: str, deadline: float = 10.0) -> list[int]:
    """Stop ``user``'s job hosts whose ``HOME`` lies under ``directory`` (user mode: the homes
    of one ``TestHosts``), TERM then KILL; return their pids."""
    root = str(directory).rstrip("/")
    pids = [
        p
        for p in _job_host_pids(user)
        if (home := environ_value(p, "HOME") or "") == root or home.startswith(root + "/")
    ]
    _stop(pids, deadline)
    return pids
