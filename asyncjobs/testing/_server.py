"""One sshd of the test hosts, and the machinery ``TestHosts`` runs them with: keys, configs,
launching, waiting for the banner, finding every process a host started, killing them."""

from __future__ import annotations

import contextlib
import pwd
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal, TypedDict

import attrs

from ._machine import (
    SSHD,
    TEST_USER,
    Addresses,
    TestHostsError,
    free_netns_subnet,
    free_port,
    ip,
    probe,
    sshd_version,
)
from ._procs import environ_value, proc_table, signal_pid, start_time, wait_gone


@attrs.frozen
class Host:
    """One test host: connect to ``(address, port)`` as ``username``."""

    #: the address its sshd listens on (127.0.0.1, 127.0.0.N, or a netns link's)
    address: str
    #: its port
    port: int
    #: the one user it accepts
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
    """Keyword arguments for ``asyncssh.connect(address, port, **options)``, and as well for
    ``asyncjobs.connect`` and ``JobManager.invoke``."""

    #: path of a known_hosts file listing exactly these hosts (host keys are verified)
    known_hosts: str
    #: the one generated client key; nothing from ~/.ssh is loaded
    client_keys: list[str]
    #: the user every host accepts
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
    username: str
    host_key: Path
    config: Path
    log: Path
    home: Path | None = None  # user mode: the HOME its sessions get (SetEnv)
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
        return Host(self.address, self.port, self.username)


class BindFailed(Exception):
    """sshd exited because its port was taken meanwhile."""


class ServerSet:
    """The sshds of one ``TestHosts`` and what is done to them; ``TestHosts`` is its public face."""

    def __init__(
        self,
        count: int,
        addresses: Addresses,
        max_sessions: int | None,
        max_startups: str | None,
        start_timeout: float,
    ) -> None:
        self.count = count
        self.addresses: Addresses = addresses
        self.max_sessions = max_sessions
        self.max_startups = max_startups
        self.start_timeout = start_timeout
        self._mode: Literal["root", "user"] | None = None  # resolved by start()
        self._dir: Path | None = None
        self._servers: list[_Server] = []
        self._pids: list[int] = []
        self._lock = threading.Lock()
        self._user: pwd.struct_passwd | None = None
        self._namespaces: list[str] = []  # made by start(), deleted by close()

    def log(self, i: int) -> str:
        """What host ``i``'s sshd wrote to stderr so far (``LogLevel ERROR``)."""
        s = self._server(i)
        try:
            return s.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _check_started(self) -> None:
        if self._dir is None:
            raise TestHostsError(
                "the test hosts are not started: use `with TestHosts(...)`, "
                "`async with TestHosts(...)` or start()"
            )

    def _server(self, i: int) -> _Server:
        self._check_started()
        return self._servers[i]

    def _make_namespaces(self) -> tuple[list[str], list[tuple[str, str] | None]]:
        """One network namespace per host, each with a veth pair to this one and a /30: our end
        .1, the namespace's end .2 (where its sshd listens). Returns the addresses and the
        (namespace, its link) pairs."""
        token = secrets.token_hex(3)
        subnet = free_netns_subnet(self.count)
        addrs: list[str] = []
        namespaces: list[tuple[str, str] | None] = []
        for i, net in zip(range(self.count), subnet.subnets(new_prefix=30), strict=False):
            ns, ours, theirs = f"aj-{token}-{i}", f"ajh{token}{i}", f"ajn{token}{i}"
            here, there = (f"{a}/30" for a in list(net.hosts())[:2])
            ip("netns", "add", ns)
            self._namespaces.append(ns)
            ip("link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", ns)
            ip("addr", "add", here, "dev", ours)
            ip("link", "set", ours, "up")
            ip("addr", "add", there, "dev", theirs, netns=ns)
            ip("link", "set", theirs, "up", netns=ns)
            ip("link", "set", "lo", "up", netns=ns)
            addrs.append(there.split("/")[0])
            namespaces.append((ns, theirs))
        return addrs, namespaces

    @staticmethod
    def _keygen(paths: Sequence[Path]) -> None:
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
            f"AllowUsers {s.username}",
            "PermitUserRC no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AcceptEnv LANG LC_*",  # as Debian's stock sshd_config
            "LogLevel ERROR",
            "Subsystem sftp internal-sftp",
        ]
        if s.home is not None:  # user mode: each host a home of its own (sshd sets it last)
            lines.append(f'SetEnv "HOME={s.home}"')
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
        s.roots.add((s.proc.pid, start_time(s.proc.pid) or 0))
        with self._lock:
            self._pids.append(s.proc.pid)

    def _until_ready(self, s: _Server, deadline: float, *, new_port: bool) -> None:
        """Wait until ``s`` sends its banner; relaunch it if it lost its port (on a new port when
        ``new_port``, else on the same one until the deadline)."""
        while True:
            try:
                self._wait_banner(s, deadline)
            except BindFailed:
                if time.monotonic() >= deadline:
                    raise TestHostsError(
                        f"sshd {s.index} could not bind {s.address}:{s.port}:\n{self.log(s.index)}"
                    ) from None
                if new_port:
                    s.port = free_port([s.address])
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
                    raise BindFailed
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
            if probe(s.address, s.port, min(1.0, left)):
                return
            time.sleep(0.005)

    def _host_pids(self, s: _Server) -> set[int]:
        return self._pids_of([s])

    def _pids_of(self, servers: Sequence[_Server]) -> set[int]:
        """Live pids of ``servers`` (one scan of /proc): the trees under their roots, and the
        logged-in user's processes whose SSH_CONNECTION names one of them."""
        table = proc_table()
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
                conn = environ_value(pid, "SSH_CONNECTION")
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
                signal_pid(p, signal.SIGSTOP)
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
            signal_pid(p, signal.SIGKILL)
        for s in servers:
            self._reap_listener(s)
        # Descendants were reparented to init when the listener died: wait until they are gone
        # (or zombies: init reaps them in its own time).
        return wait_gone(victims, time.monotonic() + 10)

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
        assert self._dir is not None
        lines = []
        for s in self._servers:
            kind, key = s.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{s.host.known_hosts_name} {kind} {key}\n")
        known = self._dir / "known_hosts"
        known.write_text("".join(lines))
        known.chmod(0o644)
