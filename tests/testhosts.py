"""Real OpenSSH test hosts on loopback, for the remote-job tests and the benchmarks.

``TestHosts(n)`` starts ``n`` real ``/usr/sbin/sshd -D -e`` processes (as root, on 127.0.0.0/8
only), each with its own generated ed25519 host key, one generated client key, a ``known_hosts``
that lists exactly those hosts, and a dedicated test user (``asyncjobs-test``, shell ``/bin/sh``,
no rc files). It records the pids it starts and stops exactly those and their descendants::

    with TestHosts(3, load=True) as hosts:
        h = hosts.hosts[0]
        conn = await asyncssh.connect(h.address, h.port, **hosts.ssh_options())

Faults for tests: ``kill(i)`` (sshd killed mid-command), ``pause(i)``/``resume(i)`` (host hangs),
``restart(i)`` (same port, same host key). With ``addresses="netns"`` every sshd runs in a network
namespace of its own, reached over a veth pair, and ``cut_network(i)``/``restore_network(i)``
cut the link silently (no RST, no FIN: packets just stop) and mend it. ``pgrep(i, pattern)``
finds the test user's processes that host ``i`` started (all hosts are this machine). Run by
hand: ``scripts/testhosts N``.

Setup facts behind the choices here: ``/work/shared/reference/measured-facts.md``, pitfalls 3–5.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import ipaddress
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self, TypedDict

import attrs

__all__ = [
    "SSHD",
    "TEST_HOME",
    "TEST_USER",
    "Host",
    "SSHOptions",
    "TestHosts",
    "TestHostsError",
    "ensure_test_user",
    "main",
    "sshd_version",
    "stop_job_hosts",
]

SSHD = "/usr/sbin/sshd"
TEST_USER = "asyncjobs-test"
TEST_HOME = Path("/var/lib/asyncjobs-test")
INSTALL_HINT = "install Debian's openssh-server (apt-get install -y openssh-server)"

# Files that would make a remote command start slower or differently (pitfall 5). /bin/sh is dash
# here, which reads none of them for `sh -c`, and sshd is told `PermitUserRC no`; we still insist
# the home stays clean so a later change of shell cannot bring them back silently.
RC_FILES = (
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

Addresses = Literal["ports", "loopback-range", "netns"]

#: The benchmarking range (RFC 2544), never routed on the internet: the veth links of netns hosts
#: get /30s from it. A test's traffic to them goes only into namespaces the tests made.
NETNS_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
IPROUTE_HINT = "network namespaces need root and iproute2 (apt-get install -y iproute2)"


class TestHostsError(RuntimeError):
    """The test hosts could not be set up, started or stopped; the message says why and how to
    fix it."""

    __test__ = False


@attrs.frozen
class Host:
    """One test host: connect to ``(address, port)`` as ``username``."""

    address: str
    port: int
    username: str = TEST_USER

    @property
    def target(self) -> str:
        """``user@address:port``, the form ``JobManager.invoke`` targets take."""
        return f"{self.username}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How this host is named in ``known_hosts`` (``[addr]:port`` unless the port is 22)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


class SSHOptions(TypedDict):
    """Keyword arguments for ``asyncssh.connect(address, port, **options)``."""

    #: path of a known_hosts file listing exactly these hosts (host keys are verified)
    known_hosts: str
    #: the one generated client key; nothing from ~/.ssh is loaded
    client_keys: list[str]
    #: the test user
    username: str
    #: None: never ask an ssh-agent (SSH_AUTH_SOCK is ignored)
    agent_path: None
    #: []: no OpenSSH client config files, so ~/.ssh/config cannot leak in
    config: list[str]


@attrs.define(eq=False)
class _Server:
    """Mutable state of one sshd."""

    index: int
    address: str
    port: int
    host_key: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    netns: str | None = None  # the network namespace it runs in (addresses="netns")
    link: str | None = None  # the namespace's end of its veth pair
    # (pid, start time) of the processes whose trees belong to this host: every listener started,
    # and connections orphaned by kill(connections=False).
    roots: set[tuple[int, int]] = attrs.Factory(set)
    paused: set[int] = attrs.Factory(set)

    @property
    def host(self) -> Host:
        return Host(self.address, self.port)


class _BindFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, uid, start time in clock ticks) for every live (non-zombie) process."""
    table: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            uid = os.stat(f"/proc/{name}").st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            table[int(name)] = (int(fields[1]), uid, int(fields[19]))
    return table


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _ssh_connection(pid: int) -> str | None:
    """The ``SSH_CONNECTION`` variable a process started with, if any."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"SSH_CONNECTION="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], deadline: float) -> list[int]:
    """Wait until none of ``pids`` is alive (or the deadline passes); return those still alive."""
    left = set(pids)
    while left:
        left = {p for p in left if _pid_alive(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return sorted(left)


# ---------------------------------------------------------------------------------------------
# Machine setup
# ---------------------------------------------------------------------------------------------


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
    raise TestHostsError(f"cannot tell the OpenSSH version of {SSHD}; {INSTALL_HINT}")


def _check_machine() -> None:
    if not os.path.exists(SSHD):
        raise TestHostsError(f"{SSHD} is missing: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise TestHostsError("the sshd test hosts must be started as root (sshd drops privileges)")
    if shutil.which("ssh-keygen") is None:
        raise TestHostsError(f"ssh-keygen is missing: {INSTALL_HINT}")


def _shadow_password(user: str) -> str | None:
    with open("/etc/shadow") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    return None


_user_lock = threading.Lock()


def ensure_test_user() -> pwd.struct_passwd:
    """Create (once per machine) the test user and its empty home; return its passwd entry.

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


def _free_port(addresses: Sequence[str]) -> int:
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


def _ip(*args: str, netns: str | None = None) -> None:
    """Run ``ip [-n NETNS] ARGS``; a failure raises ``TestHostsError`` with ip's own words."""
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise TestHostsError(f"the ip command is missing: {IPROUTE_HINT}") from None
    if out.returncode != 0:
        raise TestHostsError(f"{' '.join(cmd)} failed: {out.stderr.strip()}; {IPROUTE_HINT}")


def _free_netns_subnet(count: int) -> ipaddress.IPv4Network:
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


def stop_job_hosts(deadline: float = 10.0) -> list[int]:
    """Stop the test user's job hosts (``python -m asyncjobs._host.daemon``), TERM then KILL, and
    return their pids. A job host detaches from the sshd session that started it (that is its
    job), so no TestHosts owns it; the dedicated test user runs nothing but what tests start,
    so the test run that is ending stops them."""
    out = subprocess.run(
        ["pgrep", "-u", TEST_USER, "-f", "asyncjobs._host.daemon"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    pids = [int(p) for p in out.stdout.split()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    end = time.monotonic() + deadline
    for pid in _wait_gone(pids, end):
        _signal(pid, signal.SIGKILL)
    return pids


def _loopback_addresses(count: int) -> list[str]:
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


def _probe(address: str, port: int, timeout: float) -> bool:
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


# ---------------------------------------------------------------------------------------------
# The hosts
# ---------------------------------------------------------------------------------------------

_live: set[TestHosts] = set()  # started and not closed (strong refs: dropping one is no cleanup)


@atexit.register
def _close_leftovers() -> None:  # a benchmark that forgot close() must not leave sshds behind
    for hosts in list(_live):
        with contextlib.suppress(Exception):
            hosts.close()


class TestHosts:
    """``count`` real sshd processes on loopback; a context manager (or ``start()``/``close()``).

    ``load=True`` raises sshd's limits for load tests (``MaxSessions 1000``, ``MaxStartups
    1000:30:1000``); the default keeps sshd's own (``MaxSessions 10``, ``MaxStartups 10:30:100``)
    so a test can prove them. ``max_sessions``/``max_startups`` set either limit explicitly.
    ``addresses="ports"`` puts every host on 127.0.0.1 with its own port; ``"loopback-range"`` gives
    each its own address (127.0.0.2, 127.0.0.3, …), on one shared port where possible;
    ``"netns"`` runs each in a network namespace of its own on port 22, reached over a veth pair
    with a /30 from 198.18.0.0/15 (for faults that need a real link: ``cut_network``).
    ``start_timeout``: once keys are made and every sshd is launched, how long they all get to
    answer with an SSH banner before ``start()`` fails with their stderr.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        count: int = 1,
        *,
        load: bool = False,
        max_sessions: int | None = None,
        max_startups: str | None = None,
        addresses: Addresses = "ports",
        start_timeout: float = 10.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if addresses not in ("ports", "loopback-range", "netns"):
            raise ValueError(
                f"addresses must be 'ports', 'loopback-range' or 'netns', got {addresses!r}"
            )
        self.count = count
        self.addresses: Addresses = addresses
        self.max_sessions = max_sessions if max_sessions is not None else (1000 if load else None)
        self.max_startups = (
            max_startups if max_startups is not None else ("1000:30:1000" if load else None)
        )
        self.start_timeout = start_timeout
        #: seconds the last start() took (keys, configs, sshds up and answering)
        self.start_seconds: float | None = None
        self._dir: Path | None = None
        self._servers: list[_Server] = []
        self._pids: list[int] = []
        self._lock = threading.Lock()
        self._user: pwd.struct_passwd | None = None
        self._namespaces: list[str] = []  # made by start(), deleted by close()

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Generate keys and configs and start every sshd; return once all answer with a banner."""
        if self._dir is not None:
            raise TestHostsError("these test hosts are already started")
        t0 = time.monotonic()
        _check_machine()
        self._user = ensure_test_user()
        self._dir = Path(tempfile.mkdtemp(prefix="asyncjobs-sshd-"))
        _live.add(self)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        assert self._dir is not None and self._user is not None
        d = self._dir
        # Private to root, except that the test user's group may traverse it (not list it) to read
        # authorized_keys: sshd opens that file as the user.
        os.chown(d, 0, self._user.pw_gid)
        d.chmod(0o710)
        self._keygen([d / "client_key"] + [d / f"host_key_{i}" for i in range(self.count)])
        auth = d / "authorized_keys"
        auth.write_bytes((d / "client_key.pub").read_bytes())
        os.chown(auth, 0, self._user.pw_gid)
        auth.chmod(0o640)

        namespaces: list[tuple[str, str] | None] = [None] * self.count
        if self.addresses == "ports":
            addrs = ["127.0.0.1"] * self.count
            ports = [_free_port(["127.0.0.1"]) for _ in range(self.count)]
        elif self.addresses == "loopback-range":
            addrs = _loopback_addresses(self.count)
            ports = [_free_port(addrs)] * self.count
        else:
            addrs, namespaces = self._make_namespaces()
            ports = [22] * self.count
        self._servers = [
            _Server(
                index=i,
                address=addrs[i],
                port=ports[i],
                host_key=d / f"host_key_{i}",
                config=d / f"sshd_config_{i}",
                log=d / f"sshd_{i}.log",
                netns=ns[0] if (ns := namespaces[i]) else None,
                link=ns[1] if ns else None,
            )
            for i in range(self.count)
        ]
        for s in self._servers:
            self._launch(s)
        # Keys are made and every sshd is launched: from here each must answer within the timeout.
        deadline = time.monotonic() + self.start_timeout
        with ThreadPoolExecutor(max_workers=min(32, self.count)) as pool:
            for _ in pool.map(
                lambda s: self._until_ready(s, deadline, new_port=True), self._servers
            ):
                pass
        self._write_known_hosts()

    def close(self) -> None:
        """Kill every sshd started here and all their descendants, reap them, remove the files.

        Idempotent. Raises ``TestHostsError`` if a process outlives SIGKILL (after cleaning up the
        rest)."""
        survivors = self._kill_servers(self._servers) if self._servers else []
        for name in self._namespaces:  # deleting one deletes its veth pair
            with contextlib.suppress(TestHostsError):
                _ip("netns", "delete", name)
        self._namespaces.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _live.discard(self)
        if survivors:
            raise TestHostsError(f"processes survived SIGKILL: {survivors}")

    # -- what tests use -------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        """One ``Host(address, port)`` per sshd, in start order."""
        self._check_started()
        return [s.host for s in self._servers]

    @property
    def targets(self) -> list[str]:
        """``user@address:port`` for every host."""
        return [h.target for h in self.hosts]

    @property
    def username(self) -> str:
        """The dedicated test user every host accepts (and the only one)."""
        return TEST_USER

    @property
    def directory(self) -> Path:
        """The private temp dir holding keys, configs and sshd logs (removed by ``close()``)."""
        self._check_started()
        assert self._dir is not None
        return self._dir

    @property
    def client_key(self) -> Path:
        """The client's private key (ed25519, no passphrase); ``.pub`` beside it."""
        return self.directory / "client_key"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file naming exactly these hosts, each with its own ed25519 key."""
        return self.directory / "known_hosts"

    @property
    def pids(self) -> list[int]:
        """Every sshd listener pid started so far (restarts add more), in start order."""
        with self._lock:
            return list(self._pids)

    def ssh_options(self) -> SSHOptions:
        """Options for ``asyncssh.connect(host.address, host.port, **options)``: these hosts'
        known_hosts and the client key only, the test user, no agent, no ~/.ssh/config."""
        return SSHOptions(
            known_hosts=str(self.known_hosts),
            client_keys=[str(self.client_key)],
            username=self.username,
            agent_path=None,
            config=[],
        )

    def host_public_key(self, i: int) -> str:
        """Host ``i``'s public key line (``ssh-ed25519 AAAA… comment``)."""
        return self._server(i).host_key.with_suffix(".pub").read_text().strip()

    def log(self, i: int) -> str:
        """What host ``i``'s sshd wrote to stderr so far (``LogLevel ERROR``)."""
        s = self._server(i)
        try:
            return s.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self, i: int) -> bool:
        """True if host ``i``'s listener is alive (paused counts as alive)."""
        s = self._server(i)
        return s.proc is not None and s.proc.poll() is None

    def processes(self, i: int) -> list[int]:
        """Live pids belonging to host ``i``: its listener, every descendant (per-connection sshd,
        the user's shells and their children), and any test-user process whose ``SSH_CONNECTION``
        names this host (a remote command that double-forked away from sshd)."""
        return sorted(self._host_pids(self._server(i)))

    def pgrep(self, i: int | None, pattern: str) -> list[int]:
        """``pgrep -u <test user> -f pattern``, limited to processes of host ``i`` (of any of these
        hosts when ``i`` is None) — e.g. "is the remote process group gone?"."""
        out = subprocess.run(
            ["pgrep", "-u", self.username, "-f", pattern],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if out.returncode not in (0, 1):
            raise TestHostsError(f"pgrep failed: {out.stderr.decode().strip()}")
        found = {int(p) for p in out.stdout.split()}
        servers = self._servers if i is None else [self._server(i)]
        return sorted(found & self._pids_of(servers))

    # -- faults ---------------------------------------------------------------------------------

    def kill(self, i: int, *, connections: bool = True) -> None:
        """SIGKILL host ``i``'s sshd ("sshd killed mid-command"): the listener and, unless
        ``connections=False``, every descendant (open connections and their commands die too).
        Connecting then fails with ``ConnectionRefusedError``; ``restart(i)`` brings it back."""
        s = self._server(i)
        if connections:
            if survivors := self._kill_servers([s]):
                raise TestHostsError(f"processes survived SIGKILL: {survivors}")
        elif s.proc is not None:
            table = _proc_table()
            s.roots |= {(p, t) for p, (pp, _, t) in table.items() if pp == s.proc.pid}
            s.proc.kill()
            s.proc.wait(timeout=10)
            s.proc = None

    def cut_link(self, i: int) -> None:
        """SIGKILL host ``i``'s sshd processes only — the listener and every connection's sshd —
        as if the network to it were cut: the user's processes there (a job host, say) live on.
        ``restart(i)`` brings sshd back."""
        s = self._server(i)
        victims = {p for p in self._host_pids(s) if _comm(p) == "sshd"}
        for p in victims:
            _signal(p, signal.SIGKILL)
        self._reap_listener(s)
        if survivors := _wait_gone(victims, time.monotonic() + 10):
            raise TestHostsError(f"sshd processes survived SIGKILL: {survivors}")

    def cut_network(self, i: int) -> None:
        """Cut the link to netns host ``i`` silently: its end of the veth pair goes down, so
        packets to it are dropped without a reset or an ICMP error, as on a dead cable. sshd,
        its connections and their commands live on, unaware. ``restore_network(i)`` mends it."""
        s = self._server(i)
        if s.netns is None or s.link is None:
            raise TestHostsError("cut_network needs TestHosts(..., addresses='netns')")
        _ip("link", "set", s.link, "down", netns=s.netns)

    def restore_network(self, i: int) -> None:
        """Bring the link that ``cut_network(i)`` cut back up (connections that survived the cut,
        if TCP has not given up, carry on)."""
        s = self._server(i)
        if s.netns is None or s.link is None:
            raise TestHostsError("restore_network needs TestHosts(..., addresses='netns')")
        _ip("link", "set", s.link, "up", netns=s.netns)

    def pause(self, i: int) -> None:
        """SIGSTOP host ``i``'s listener and all its descendants ("host hangs"): TCP connects still
        complete (the kernel's backlog), but no banner and no channel data come."""
        s = self._server(i)
        s.paused |= self._freeze([s])

    def resume(self, i: int) -> None:
        """SIGCONT what ``pause(i)`` stopped."""
        s = self._server(i)
        for p in s.paused | self._host_pids(s):
            _signal(p, signal.SIGCONT)
        s.paused.clear()

    def restart(self, i: int) -> None:
        """(Kill and) start host ``i`` again, on the same address, port and host key."""
        s = self._server(i)
        if self.running(i) or s.paused:
            self.kill(i)
        self._launch(s)
        self._until_ready(s, time.monotonic() + self.start_timeout, new_port=False)

    # -- internals ------------------------------------------------------------------------------

    def _check_started(self) -> None:
        if self._dir is None:
            raise TestHostsError(
                "the test hosts are not started: use `with TestHosts(...)` or start()"
            )

    def _server(self, i: int) -> _Server:
        self._check_started()
        return self._servers[i]

    def _make_namespaces(self) -> tuple[list[str], list[tuple[str, str] | None]]:
        """One network namespace per host, each with a veth pair to this one and a /30: our end
        .1, the namespace's end .2 (where its sshd listens). Returns the addresses and the
        (namespace, its link) pairs."""
        token = secrets.token_hex(3)
        subnet = _free_netns_subnet(self.count)
        addrs: list[str] = []
        namespaces: list[tuple[str, str] | None] = []
        for i, net in zip(range(self.count), subnet.subnets(new_prefix=30), strict=False):
            ns, ours, theirs = f"aj-{token}-{i}", f"ajh{token}{i}", f"ajn{token}{i}"
            here, there = (f"{a}/30" for a in list(net.hosts())[:2])
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", ns)
            _ip("addr", "add", here, "dev", ours)
            _ip("link", "set", ours, "up")
            _ip("addr", "add", there, "dev", theirs, netns=ns)
            _ip("link", "set", theirs, "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            addrs.append(there.split("/")[0])
            namespaces.append((ns, theirs))
        return addrs, namespaces

    def _keygen(self, paths: Sequence[Path]) -> None:
        for k in range(0, len(paths), 32):
            procs = [
                (
                    p,
                    subprocess.Popen(
                        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", p.name, "-f", str(p)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
                for p in paths[k : k + 32]
            ]
            for p, proc in procs:
                try:
                    _, err = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise TestHostsError(f"ssh-keygen for {p} took over 10 s") from None
                if proc.returncode != 0:
                    raise TestHostsError(f"ssh-keygen for {p} failed: {err.decode().strip()}")

    def _config_text(self, s: _Server) -> str:
        assert self._dir is not None
        lines = [
            f"Port {s.port}",
            "AddressFamily inet",
            f"ListenAddress {s.address}",
            f'HostKey "{s.host_key}"',
            "PidFile none",
            "UsePAM no",
            "UseDNS no",
            "StrictModes no",
            f'AuthorizedKeysFile "{self._dir / "authorized_keys"}"',
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {TEST_USER}",
            "PermitUserRC no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AcceptEnv LANG LC_*",  # as Debian's stock sshd_config
            "LogLevel ERROR",
            "Subsystem sftp internal-sftp",
        ]
        if self.max_sessions is not None:
            lines.append(f"MaxSessions {self.max_sessions}")
        if self.max_startups is not None:
            lines.append(f"MaxStartups {self.max_startups}")
        if sshd_version() >= (9, 8):
            lines.append("PerSourcePenalties no")  # 9.8+ would lock out a source after failures
        return "\n".join(lines) + "\n"

    def _launch(self, s: _Server) -> None:
        s.config.write_text(self._config_text(s))
        s.config.chmod(0o600)
        if s.log_file is not None:
            s.log_file.close()
        s.log_file = open(s.log, "ab")  # noqa: SIM115 - sshd writes it until killed
        s.log_file.write(f"--- start on {s.address}:{s.port}\n".encode())
        s.log_file.flush()
        # Absolute path: sshd re-execs itself for every connection. Same process group as us, so a
        # Ctrl-C that kills the test run kills the sshds too.
        netns = ["ip", "netns", "exec", s.netns] if s.netns else []  # it execs: same pid
        s.proc = subprocess.Popen(
            [*netns, SSHD, "-D", "-e", "-f", str(s.config)],
            stdin=subprocess.DEVNULL,
            stdout=s.log_file,
            stderr=s.log_file,
            close_fds=True,
        )
        s.roots.add((s.proc.pid, _start_time(s.proc.pid) or 0))
        with self._lock:
            self._pids.append(s.proc.pid)

    def _until_ready(self, s: _Server, deadline: float, *, new_port: bool) -> None:
        """Wait until ``s`` sends its banner; relaunch it if it lost its port (on a new port when
        ``new_port``, else on the same one until the deadline)."""
        while True:
            try:
                self._wait_banner(s, deadline)
            except _BindFailed:
                if time.monotonic() >= deadline:
                    raise TestHostsError(
                        f"sshd {s.index} could not bind {s.address}:{s.port}:\n{self.log(s.index)}"
                    ) from None
                if new_port:
                    s.port = _free_port([s.address])
                else:
                    time.sleep(0.05)
                self._launch(s)
            else:
                return

    def _wait_banner(self, s: _Server, deadline: float) -> None:
        assert s.proc is not None
        while True:
            code = s.proc.poll()
            if code is not None:
                s.proc = None
                log = self.log(s.index)
                if "Address already in use" in log.rsplit("--- start", 1)[-1]:
                    raise _BindFailed
                raise TestHostsError(
                    f"sshd {s.index} ({s.address}:{s.port}) exited with status {code}; "
                    f"its stderr:\n{log}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestHostsError(
                    f"sshd {s.index} ({s.address}:{s.port}) sent no SSH banner within "
                    f"{self.start_timeout} s; its stderr:\n{self.log(s.index)}"
                )
            if _probe(s.address, s.port, min(1.0, left)):
                return
            time.sleep(0.005)

    def _host_pids(self, s: _Server) -> set[int]:
        return self._pids_of([s])

    def _pids_of(self, servers: Sequence[_Server]) -> set[int]:
        """Live pids of ``servers`` (one scan of /proc): the trees under their roots, and the test
        user's processes whose SSH_CONNECTION names one of them."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [p for s in servers for p, t in s.roots if p in table and table[p][2] == t]
        found: set[int] = set()
        while todo:
            p = todo.pop()
            if p not in found:
                found.add(p)
                todo += children.get(p, [])
        assert self._user is not None
        uid = self._user.pw_uid
        ends = {(s.address, str(s.port)) for s in servers}
        for pid, (_, owner, _) in table.items():
            if owner == uid and pid not in found:
                conn = _ssh_connection(pid)
                if conn is not None and tuple(conn.split()[2:]) in ends:
                    found.add(pid)
        return found

    def _freeze(self, servers: Sequence[_Server]) -> set[int]:
        """SIGSTOP the servers' processes until no new one appears (a stopped one cannot fork)."""
        stopped: set[int] = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            new = self._pids_of(servers) - stopped
            if not new:
                break
            for p in new:
                _signal(p, signal.SIGSTOP)
            stopped |= new
        return stopped

    def _kill_servers(self, servers: Sequence[_Server]) -> list[int]:
        """SIGKILL the servers' processes (frozen first, so none forks meanwhile), reap the
        listeners, close the logs; return the pids still alive after 10 s."""
        victims = self._freeze(servers)
        for s in servers:
            victims |= s.paused
            s.paused.clear()
        for p in victims:
            _signal(p, signal.SIGKILL)
        for s in servers:
            self._reap_listener(s)
        # Descendants were reparented to init when the listener died: wait until they are gone
        # (or zombies: init reaps them in its own time).
        return _wait_gone(victims, time.monotonic() + 10)

    @staticmethod
    def _reap_listener(s: _Server) -> None:
        """After SIGKILL: reap ``s``'s listener (if we started one) and close its log."""
        if s.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(timeout=10)
            s.proc = None
        if s.log_file is not None:
            s.log_file.close()
            s.log_file = None

    def _write_known_hosts(self) -> None:
        lines = []
        for s in self._servers:
            kind, key = s.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{s.host.known_hosts_name} {kind} {key}\n")
        self.known_hosts.write_text("".join(lines))
        self.known_hosts.chmod(0o644)


# ---------------------------------------------------------------------------------------------
# scripts/testhosts
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Start N hosts, print one JSON line describing them, wait for SIGINT/SIGTERM, clean up."""
    parser = argparse.ArgumentParser(
        prog="scripts/testhosts",
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
    )
    try:
        with hosts:
            info = {
                "targets": hosts.targets,
                "hosts": [{"address": h.address, "port": h.port} for h in hosts.hosts],
                "username": hosts.username,
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
        print(f"testhosts: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
