"""``TestHosts``: the public face of the sshd test hosts (lifecycle, what tests use, faults)."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from ._machine import (
    TEST_HOME,
    TEST_USER,
    Addresses,
    Mode,
    TestHostsError,
    check_machine,
    ensure_test_user,
    free_port,
    ip,
    loopback_addresses,
    resolve_mode,
    stop_job_hosts_under,
)
from ._procs import comm, proc_table, signal_pid, wait_gone
from ._server import Host, ServerSet, SSHOptions, _Server

_live: set[TestHosts] = set()  # started and not closed (strong refs: dropping one is no cleanup)


@atexit.register
def _close_leftovers() -> None:  # a program that forgot close() must not leave sshds behind
    for hosts in list(_live):
        with contextlib.suppress(Exception):
            hosts.close()


class TestHosts(ServerSet):
    """``count`` real OpenSSH ``sshd`` processes on loopback, for tests of code that uses SSH.

    Each host has its own generated ed25519 host key; one generated client key logs in to all
    of them, and a ``known_hosts`` lists exactly these hosts, so host keys are verified as in
    production. Use it as a context manager, sync or async (it starts OS processes; ``async
    with`` does that in a worker thread, on asyncio and on trio), or ``start()``/``close()``::

        async with TestHosts(4) as hosts:
            async with asyncjobs.JobManager() as jobs:
                job = await jobs.invoke(hosts.targets, "uptime", **hosts.ssh_options())

    Who logs in (``mode``): as root (``"root"``), every sshd runs as root and accepts one
    dedicated user, ``asyncjobs-test`` (created on first use, shell ``/bin/sh``, an empty home
    ``/var/lib/asyncjobs-test`` that all hosts share); as any other user (``"user"``), every sshd
    runs as you and accepts only you, and each host's sessions get a ``HOME`` of their own under
    ``directory`` (so a job host started there is that host's alone; commands still start in
    your real home directory, where sshd changes to). ``"auto"`` picks by who you are.

    ``load=True`` raises sshd's limits for load tests (``MaxSessions 1000``, ``MaxStartups
    1000:30:1000``); the default keeps sshd's own (``MaxSessions 10``, ``MaxStartups 10:30:100``)
    so a test can prove them. ``max_sessions``/``max_startups`` set either limit explicitly.
    ``addresses="ports"`` puts every host on 127.0.0.1 with its own port; ``"loopback-range"``
    gives each its own address (127.0.0.2, 127.0.0.3, …), on one shared port where possible;
    ``"netns"`` (root only) runs each in a network namespace of its own on port 22, reached over
    a veth pair with a /30 from 198.18.0.0/15 (for faults that need a real link:
    ``cut_network``). ``start_timeout``: once keys are made and every sshd is launched, how long
    they all get to answer with an SSH banner before ``start()`` fails with their stderr.

    It records the pids it starts and stops exactly those and their descendants (and, in user
    mode, the job hosts that live in its homes); nothing is left behind by ``close()``.
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
        mode: Mode = "auto",
        start_timeout: float = 10.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if addresses not in ("ports", "loopback-range", "netns"):
            raise ValueError(
                f"addresses must be 'ports', 'loopback-range' or 'netns', got {addresses!r}"
            )
        if mode not in ("auto", "root", "user"):
            raise ValueError(f"mode must be 'auto', 'root' or 'user', got {mode!r}")
        super().__init__(
            count,
            addresses,
            max_sessions if max_sessions is not None else (1000 if load else None),
            max_startups if max_startups is not None else ("1000:30:1000" if load else None),
            start_timeout,
        )
        self.mode: Mode = mode
        #: seconds the last start() took (keys, configs, sshds up and answering)
        self.start_seconds: float | None = None

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

    async def __aenter__(self) -> Self:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import anyio
        import anyio.to_thread

        with anyio.CancelScope(shield=True):  # the sshds must go even if the test was cancelled
            await anyio.to_thread.run_sync(self.close)

    def start(self) -> Self:
        """Generate keys and configs and start every sshd; return once all answer with a banner.

        Raises ``TestHostsError`` saying what the machine lacks (sshd, root for some options)."""
        if self._dir is not None:
            raise TestHostsError("these test hosts are already started")
        t0 = time.monotonic()
        self._mode = check_machine(self.mode, self.addresses)
        self._user = ensure_test_user() if self._mode == "root" else pwd.getpwuid(os.getuid())
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
        root = self._mode == "root"
        if root:
            # Private to root, except that the test user's group may traverse it (not list it) to
            # read authorized_keys: sshd opens that file as the user.
            os.chown(d, 0, self._user.pw_gid)
            d.chmod(0o710)
        self._keygen([d / "client_key"] + [d / f"host_key_{i}" for i in range(self.count)])
        auth = d / "authorized_keys"
        auth.write_bytes((d / "client_key.pub").read_bytes())
        if root:
            os.chown(auth, 0, self._user.pw_gid)
        auth.chmod(0o640 if root else 0o600)

        namespaces: list[tuple[str, str] | None] = [None] * self.count
        if self.addresses == "ports":
            addrs = ["127.0.0.1"] * self.count
            ports = [free_port(["127.0.0.1"]) for _ in range(self.count)]
        elif self.addresses == "loopback-range":
            addrs = loopback_addresses(self.count)
            ports = [free_port(addrs)] * self.count
        else:
            addrs, namespaces = self._make_namespaces()
            ports = [22] * self.count
        self._servers = [
            _Server(
                index=i,
                address=addrs[i],
                port=ports[i],
                username=self._user.pw_name,
                host_key=d / f"host_key_{i}",
                config=d / f"sshd_config_{i}",
                log=d / f"sshd_{i}.log",
                home=None if root else d / f"home-{i}",
                netns=ns[0] if (ns := namespaces[i]) else None,
                link=ns[1] if ns else None,
            )
            for i in range(self.count)
        ]
        for s in self._servers:
            if s.home is not None:
                s.home.mkdir(mode=0o700)
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
        if self._dir is not None and self._mode == "user" and self._user is not None:
            stop_job_hosts_under(self._dir, self._user.pw_name)
        for name in self._namespaces:  # deleting one deletes its veth pair
            with contextlib.suppress(TestHostsError):
                ip("netns", "delete", name)
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
        """One ``Host(address, port, username)`` per sshd, in start order."""
        self._check_started()
        return [s.host for s in self._servers]

    @property
    def targets(self) -> list[str]:
        """``user@address:port`` for every host, as ``JobManager.invoke`` and the CLI take them."""
        return [h.target for h in self.hosts]

    @property
    def username(self) -> str:
        """The one user every host accepts: ``asyncjobs-test`` in root mode, you in user mode."""
        if self._user is not None:
            return self._user.pw_name
        return TEST_USER if resolve_mode(self.mode) == "root" else pwd.getpwuid(os.getuid()).pw_name

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

    def home(self, i: int) -> Path:
        """The ``HOME`` of host ``i``'s sessions: the test user's shared home in root mode, a
        directory of its own (under ``directory``) in user mode."""
        s = self._server(i)
        return TEST_HOME if s.home is None else s.home

    def ssh_options(self) -> SSHOptions:
        """Options for ``asyncssh.connect(host.address, host.port, **options)``, and as well for
        ``asyncjobs.connect`` and ``JobManager.invoke``: these hosts' known_hosts and the client
        key only, the one user, no agent, no ~/.ssh/config."""
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

    def running(self, i: int) -> bool:
        """True if host ``i``'s listener is alive (paused counts as alive)."""
        s = self._server(i)
        return s.proc is not None and s.proc.poll() is None

    def processes(self, i: int) -> list[int]:
        """Live pids belonging to host ``i``: its listener, every descendant (per-connection sshd,
        the user's shells and their children), and any process of its user whose
        ``SSH_CONNECTION`` names this host (a remote command that double-forked away)."""
        return sorted(self._host_pids(self._server(i)))

    def pgrep(self, i: int | None, pattern: str) -> list[int]:
        """``pgrep -u <user> -f pattern``, limited to processes of host ``i`` (of any of these
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
            table = proc_table()
            s.roots |= {(p, t) for p, (pp, _, t) in table.items() if pp == s.proc.pid}
            s.proc.kill()
            s.proc.wait(timeout=10)
            s.proc = None

    def cut_link(self, i: int) -> None:
        """SIGKILL host ``i``'s sshd processes only — the listener and every connection's sshd —
        as if the network to it were cut: the user's processes there (a job host, say) live on.
        ``restart(i)`` brings sshd back."""
        s = self._server(i)
        victims = {p for p in self._host_pids(s) if comm(p) == "sshd"}
        for p in victims:
            signal_pid(p, signal.SIGKILL)
        self._reap_listener(s)
        if survivors := wait_gone(victims, time.monotonic() + 10):
            raise TestHostsError(f"sshd processes survived SIGKILL: {survivors}")

    def cut_network(self, i: int) -> None:
        """Cut the link to netns host ``i`` silently: its end of the veth pair goes down, so
        packets to it are dropped without a reset or an ICMP error, as on a dead cable. sshd,
        its connections and their commands live on, unaware. ``restore_network(i)`` mends it."""
        s = self._server(i)
        if s.netns is None or s.link is None:
            raise TestHostsError("cut_network needs TestHosts(..., addresses='netns')")
        ip("link", "set", s.link, "down", netns=s.netns)

    def restore_network(self, i: int) -> None:
        """Bring the link that ``cut_network(i)`` cut back up (connections that survived the cut,
        if TCP has not given up, carry on)."""
        s = self._server(i)
        if s.netns is None or s.link is None:
            raise TestHostsError("restore_network needs TestHosts(..., addresses='netns')")
        ip("link", "set", s.link, "up", netns=s.netns)

    def pause(self, i: int) -> None:
        """SIGSTOP host ``i``'s listener and all its descendants ("host hangs"): TCP connects still
        complete (the kernel's backlog), but no banner and no channel data come."""
        s = self._server(i)
        s.paused |= self._freeze([s])

    def resume(self, i: int) -> None:
        """SIGCONT what ``pause(i)`` stopped."""
        s = self._server(i)
        for p in s.paused | self._host_pids(s):
            signal_pid(p, signal.SIGCONT)
        s.paused.clear()

    def restart(self, i: int) -> None:
        """(Kill and) start host ``i`` again, on the same address, port and host key."""
        s = self._server(i)
        if self.running(i) or s.paused:
            self.kill(i)
        self._launch(s)
        self._until_ready(s, time.monotonic() + self.start_timeout, new_port=False)
