"""Remote commands through sudo (issue 14, item 6): ``become=`` / ``become_password=`` on
``JobManager.invoke``, ``--sudo [--sudo-user U] [--ask-pass]`` on ``asyncjobs invoke``, against
the real sshd test hosts and the machine's real sudo (Debian's package, from
``scripts/ensure-sshd``).

The ``sudoers`` fixture installs a rule file for the test user in ``/etc/sudoers.d`` (mode
0440, checked with ``visudo -cf`` before it is put in place) and removes it at the end:
NOPASSWD for every target user but one, ``asyncjobs-sudo`` (a user made for these tests), which
asks for *its own* password (sudoers' ``targetpw``). The password is not the test user's own
because every ``TestHosts`` start resets the test user's password field to ``*``
(``ensure_test_user``): another test run on the machine would change it under us. What sudo
does with the password (the prompt, a wrong one, "Sorry, try again") is the same either way.

"sudo missing" is shown by taking the execute bit for others off ``/usr/bin/sudo`` for the test
(``command -v sudo`` then finds nothing for the test user, as on a host without sudo; restored
at once). The module takes a lock file for all that, so two test runs on one machine don't
trip over each other's sudoers file and sudo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import secrets
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import asyncjobs
from asyncjobs import JobArgumentError, JobManager, JobState
from asyncjobs._ssh.become import Become, make_become
from tests.testhosts import TestHosts

SUDO = Path("/usr/bin/sudo")
SUDOERS = Path("/etc/sudoers.d/asyncjobs-test")
TARGET = "asyncjobs-sudo"  # the user whose password sudo asks for (targetpw)
LOCK = Path("/run/asyncjobs-sudo-tests.lock")
#: A wrong password fails within this (sudo's PAM waits ~2 s before "Sorry, try again").
QUICK = 10.0


def on_asyncio(test: Any) -> Any:
    """An async test, on asyncio only (asyncssh); the command-line tests are plain functions."""
    return pytest.mark.anyio(pytest.mark.parametrize("anyio_backend", ["asyncio"])(test))


@attrs.frozen
class Sudo:
    """What the fixture set up: the target user's password."""

    password: str


def _run(*argv: str, stdin: bytes | None = None) -> None:
    subprocess.run(argv, input=stdin, capture_output=True, timeout=30, check=True)


@pytest.fixture(scope="module")
def sudoers(ssh_hosts: TestHosts) -> Iterator[Sudo]:
    if not SUDO.exists() or shutil.which("visudo") is None:
        pytest.fail(
            "sudo is missing: these tests need Debian's sudo package (scripts/ensure-sshd "
            "installs it, as root)",
            pytrace=False,
        )
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _restore_sudo()  # a run killed in the middle of the "missing" test
        made = False
        try:
            pwd.getpwnam(TARGET)
        except KeyError:
            _run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TARGET)
            made = True
        password = "pw-" + secrets.token_hex(12)
        _run("chpasswd", stdin=f"{TARGET}:{password}\n".encode())
        test_user = ssh_hosts.username
        rules = (
            "# tests/test_sudo.py: removed when it ends\n"
            f"Defaults>{TARGET} targetpw\n"
            f"Defaults:{test_user} lecture=always\n"  # before every prompt: never a record
            f"{test_user} ALL=(ALL:ALL) NOPASSWD: ALL\n"
            f"{test_user} ALL=({TARGET}) PASSWD: ALL\n"  # the last match wins
        )
        staged = Path(tempfile.mkdtemp()) / "rules"
        staged.write_text(rules)
        _run("visudo", "-cf", str(staged))
        staged.chmod(0o440)
        shutil.move(staged, SUDOERS)
        staged.parent.rmdir()
        try:
            yield Sudo(password)
        finally:
            SUDOERS.unlink(missing_ok=True)
            if made:
                _run("userdel", TARGET)
            else:
                _run("usermod", "--lock", TARGET)


def _restore_sudo() -> None:
    mode = SUDO.stat().st_mode
    if not mode & stat.S_IXOTH:
        SUDO.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@contextlib.contextmanager
def sudo_hidden() -> Iterator[None]:
    """The test user can't find sudo (``command -v sudo`` fails), as on a host without it."""
    mode = stat.S_IMODE(SUDO.stat().st_mode)
    SUDO.chmod(mode & ~stat.S_IXOTH)
    try:
        yield
    finally:
        SUDO.chmod(mode)


def ssh(hosts: TestHosts) -> dict[str, Any]:
    return dict(hosts.ssh_options())


def processes(tag: str) -> list[str]:
    """Every process on this machine (any user: root's too) whose command line has ``tag``."""
    found = subprocess.run(["pgrep", "-a", "-f", tag], capture_output=True, text=True, timeout=10)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


async def records(job: asyncjobs.Job) -> list[tuple[str, Any]]:
    return [(r.stream, r.value) for r in await job.receive_records(keep=True)]


async def gone(tag: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while processes(tag):
        assert time.monotonic() < deadline, processes(tag)
        await anyio.sleep(0.05)


# -- the Python API ---------------------------------------------------------------------------


@on_asyncio
async def test_a_password_answers_sudo_on_every_host(ssh_hosts: TestHosts, sudoers: Sudo) -> None:
    """sudo's lecture (``lecture=always`` here) comes before the prompt: it is not a record."""
    async with JobManager() as jobs:
        with anyio.fail_after(QUICK):
            parent = await jobs.invoke(
                ssh_hosts.targets, "id -un", become=TARGET, become_password=sudoers.password,
                **ssh(ssh_hosts),
            )  # fmt: skip
            await parent.wait()
        for child in parent.children:
            assert child.state is JobState.COMPLETED, child.reason
            assert await records(child) == [("output", TARGET)]  # no prompt, no marker


@on_asyncio
async def test_nopasswd_needs_no_password_and_sudo_user_runs_as_that_user(
    ssh_hosts: TestHosts, sudoers: Sudo
) -> None:
    target = ssh_hosts.targets[0]
    async with JobManager() as jobs:
        for become, user in ((True, "root"), ("nobody", "nobody")):
            job = await jobs.invoke([target], "id -un", become=become, **ssh(ssh_hosts))
            await job.wait()
            assert job.state is JobState.COMPLETED, job.children[0].reason
            assert await job.receive() == [user]


@on_asyncio
async def test_output_errors_exit_status_and_input_under_sudo(
    ssh_hosts: TestHosts, sudoers: Sudo
) -> None:
    """The command's stdin comes after sudo has its password: sudo never reads it, the command
    gets all of it (1 MiB: past the SSH windows), then EOF."""
    data = os.urandom(1 << 20)
    digest = hashlib.sha256(data).hexdigest()
    target = ssh_hosts.targets[0]
    async with JobManager() as jobs:
        for password in (sudoers.password, None):
            become = TARGET if password else "nobody"
            job = await jobs.invoke(
                [target], "sha256sum; id -un; echo oops >&2; exit 3", become=become,
                become_password=password, input=data, **ssh(ssh_hosts),
            )  # fmt: skip
            with anyio.fail_after(QUICK):
                await job.wait()
            [child] = job.children
            assert (child.state, child.exit_status) == (JobState.FAILED, 3)
            assert "exited with status 3" in str(child.reason)
            assert await records(child) == [
                ("output", f"{digest}  -"),
                ("output", become),
                ("error", "oops"),
            ]


@on_asyncio
async def test_a_wrong_password_fails_quickly_and_is_never_shown(
    ssh_hosts: TestHosts, sudoers: Sudo
) -> None:
    wrong = "not-it-" + secrets.token_hex(8)
    tag = "wrongpw" + secrets.token_hex(4)
    t0 = time.monotonic()
    async with JobManager() as jobs:
        with anyio.fail_after(QUICK):
            parent = await jobs.invoke(
                ssh_hosts.targets, f"echo ran; sleep 30 # {tag}", become=TARGET,
                become_password=wrong, input="stdin that is not a password\n", **ssh(ssh_hosts),
            )  # fmt: skip
            await parent.wait()
        assert time.monotonic() - t0 < QUICK
        for child in parent.children:
            assert child.state is JobState.FAILED
            assert "sudo: wrong password" in str(child.reason), child.reason
            seen = await records(child)
            assert ("output", "ran") not in seen
            text = repr(seen) + repr(child) + str(child.reason) + repr(parent)
            assert wrong not in text and "asyncjobs-sudo:" not in text
    await gone(tag)


@on_asyncio
async def test_a_password_sudo_wants_but_was_not_given(ssh_hosts: TestHosts, sudoers: Sudo) -> None:
    async with JobManager() as jobs:
        with anyio.fail_after(QUICK):
            job = await jobs.invoke([ssh_hosts.targets[0]], "id", become=TARGET, **ssh(ssh_hosts))
            await job.wait()
        reason = str(job.children[0].reason)
        assert "refused to run the command" in reason and "a password is required" in reason
        assert "--ask-pass" in reason


@on_asyncio
async def test_sudo_missing_on_the_host_is_named(ssh_hosts: TestHosts, sudoers: Sudo) -> None:
    host = ssh_hosts.hosts[0]
    async with JobManager() as jobs:
        with sudo_hidden(), anyio.fail_after(QUICK):
            job = await jobs.invoke([ssh_hosts.targets[0]], "id", become=True, **ssh(ssh_hosts))
            await job.wait()
        [child] = job.children
        assert child.state is JobState.FAILED
        assert f"sudo: not found on {host.address}:{host.port};" in str(child.reason), child.reason
        assert await records(child) == []  # the marker is not a record


@on_asyncio
@pytest.mark.parametrize(
    "how", ["stop", "timeout", "idle_timeout"], ids=["stop", "timeout", "idle-timeout"]
)
async def test_a_sudoed_command_that_ignores_term_is_killed(
    ssh_hosts: TestHosts, sudoers: Sudo, how: str
) -> None:
    """The login user can't kill a root (or other user's) command: sudo relays TERM, but KILL
    kills sudo alone. The kill runs through sudo too, with the password if there is one."""
    cases: list[tuple[bool | str, str | None]] = [
        (True, None),
        ("nobody", None),
        (TARGET, sudoers.password),
    ]
    for become, password in cases:
        tag = "ignoresterm" + secrets.token_hex(4)
        limits: dict[str, Any] = {how: 1.0} if how != "stop" else {}
        async with JobManager(stop_grace=0.3) as jobs:
            job = await jobs.invoke(
                [ssh_hosts.targets[0]], f"trap '' TERM; echo up; sleep 300 # {tag}",
                become=become, become_password=password, **limits, **ssh(ssh_hosts),
            )  # fmt: skip
            [child] = job.children
            with anyio.fail_after(QUICK):
                while not await child.receive(keep=True):
                    await anyio.sleep(0.02)
                assert processes(tag)  # running, as that user
                if how == "stop":
                    await job.stop()
                await job.wait()
            expected = JobState.STOPPED if how == "stop" else JobState.FAILED
            assert child.state is expected, (become, child.reason)
            assert "survived" not in str(child.reason)
            await gone(tag)


@on_asyncio
async def test_the_password_is_in_no_repr_record_or_argv(
    ssh_hosts: TestHosts, sudoers: Sudo
) -> None:
    password = sudoers.password
    become = make_become(TARGET, password)
    assert become is not None and password not in repr(become)
    assert repr(Become("x", b"secret")).count("secret") == 0
    tag = "argv" + secrets.token_hex(4)
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            ssh_hosts.targets, f"sleep 1; echo done # {tag}", become=TARGET,
            become_password=password, **ssh(ssh_hosts),
        )  # fmt: skip
        with anyio.fail_after(QUICK):
            while len(processes(tag)) < 3:  # a sudo'ed sh per host
                await anyio.sleep(0.02)
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        assert tag in ps and password not in ps
        await parent.wait()
        assert await parent.receive(keep=True) == ["done"] * 3
        seen = [await records(c) for c in parent.children]
        text = repr(seen) + repr(parent) + repr(parent.children) + str(parent.timings)
        assert password not in text


@on_asyncio
async def test_become_on_an_unnamed_session_and_refused_on_a_named_one(
    ssh_hosts: TestHosts, sudoers: Sudo
) -> None:
    host = ssh_hosts.hosts[0]
    options = ssh(ssh_hosts)
    async with (
        asyncjobs.connect(host.address, host.port, **options) as session,
        JobManager() as jobs,
    ):
        job = await jobs.invoke(
            [session, session], "id -un", become=TARGET, become_password=sudoers.password
        )
        await job.wait()
        assert await job.receive() == [TARGET, TARGET], [c.reason for c in job.children]
    named = asyncjobs.connect(host.address, host.port, name="sudo", **options)
    async with named as session, JobManager() as jobs:
        with pytest.raises(JobArgumentError, match="not available on a named session"):
            await jobs.invoke([session], "id", become=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"become_password": "x"}, "give become=True"),
        ({"become": 5}, "become must be True"),
        ({"become": "two words"}, "without spaces"),
        ({"become": "-u"}, "not an option"),
        ({"become": True, "become_password": 7}, "must be a str"),
    ],
)
@on_asyncio
async def test_bad_become_arguments_are_refused_before_connecting(
    kwargs: dict[str, Any], message: str
) -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=message):
            await jobs.invoke(["nobody.invalid"], "true", **kwargs)


@on_asyncio
async def test_a_password_with_a_line_break_is_refused_without_showing_it() -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError) as caught:
            await jobs.invoke(
                ["nobody.invalid"], "true", become=True, become_password="hunter2\nmore"
            )
    assert "line break" in str(caught.value) and "hunter2" not in str(caught.value)


# -- the command line -------------------------------------------------------------------------


def env() -> dict[str, str]:
    clean = dict(os.environ)
    clean.pop("SSH_AUTH_SOCK", None)
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    return clean


def ssh_args(hosts: TestHosts) -> list[str]:
    return [
        "-l", hosts.username, "-i", str(hosts.client_key),
        "--known-hosts", str(hosts.known_hosts), "-F", "none",
    ]  # fmt: skip


def host_list(hosts: TestHosts) -> str:
    return ",".join(f"{h.address}:{h.port}" for h in hosts.hosts)


@attrs.frozen
class Typed:
    rc: int
    transcript: bytes
    ps: str  # every process's argv, seen while it ran


def in_terminal(args: list[str], password: str | None, stdin: bytes | None = None) -> Typed:
    """Run the command line on a terminal of its own (its controlling terminal: getpass asks
    on /dev/tty), type ``password`` at the prompt, and watch ``ps`` meanwhile."""
    master, slave = os.openpty()

    def controlling() -> None:  # after setsid (start_new_session): the pty is our terminal
        fcntl.ioctl(1, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", *args],
        stdin=subprocess.PIPE if stdin is not None else slave, stdout=slave, stderr=slave,
        env=dict(env(), TERM="xterm", NO_COLOR="1"), start_new_session=True,
        preexec_fn=controlling,  # a test: no threads here
    )  # fmt: skip
    os.close(slave)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    seen = bytearray()
    ps: list[str] = []
    typed = password is None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps.append(
            subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        )
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: it ended
                break
            if not data:
                break
            seen.extend(data)
        if not typed and b"password on" in seen:
            assert password is not None
            os.write(master, password.encode() + b"\n")
            typed = True
    os.close(master)
    return Typed(proc.wait(timeout=30), bytes(seen), "".join(ps))


def test_ask_pass_prompts_once_without_echo_and_sudo_gets_it_on_every_host(
    ssh_hosts: TestHosts, sudoers: Sudo, hostdir: Path
) -> None:
    password = sudoers.password
    args = ["invoke", "-H", host_list(ssh_hosts), *ssh_args(ssh_hosts), "--sudo", "--sudo-user",
            TARGET, "--ask-pass", "--stdin", "--", "sleep 0.5; cat; id -un"]  # fmt: skip
    run = in_terminal(args, password, stdin=b"from stdin\n")
    text = run.transcript.decode(errors="replace")
    assert run.rc == 0, text
    assert text.count("password on") == 1  # once, for every host
    for h in ssh_hosts.hosts:
        assert f"{h.address}:{h.port}: from stdin" in text
        assert f"{h.address}:{h.port}: {TARGET}" in text
    assert password not in text  # no echo, and not printed
    assert "asyncjobs-sudo:" not in text  # nor the prompt or the markers
    assert password not in run.ps
    stored = b"".join(p.read_bytes() for p in hostdir.rglob("*") if p.is_file())
    assert b"sleep 0.5; cat; id -un" in stored  # the invoke was recorded there ...
    assert password.encode() not in stored  # ... without the password


def test_a_wrong_password_on_the_command_line(
    ssh_hosts: TestHosts, sudoers: Sudo, hostdir: Path
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    args = ["invoke", "-H", host_list(ssh_hosts), *ssh_args(ssh_hosts), "--sudo", "--sudo-user",
            TARGET, "--ask-pass", "--", "id -un"]  # fmt: skip
    t0 = time.monotonic()
    run = in_terminal(args, wrong)
    text = run.transcript.decode(errors="replace")
    assert time.monotonic() - t0 < QUICK + 5
    assert run.rc == 1, text
    assert "sudo: wrong password" in text and wrong not in text
    assert wrong not in run.ps
    stored = b"".join(p.read_bytes() for p in hostdir.rglob("*") if p.is_file())
    assert wrong.encode() not in stored


def test_sudo_without_a_password_and_the_usage_errors(
    ssh_hosts: TestHosts, sudoers: Sudo, hostdir: Path
) -> None:
    base = [sys.executable, "-m", "asyncjobs", "invoke"]
    remote = ["-H", host_list(ssh_hosts), *ssh_args(ssh_hosts)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=30, env=env(),
            stdin=subprocess.DEVNULL, start_new_session=True,  # no terminal at all
        )  # fmt: skip

    done = cli(*remote, "--sudo", "--", "id -un")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(
        f"{h.address}:{h.port}: root" for h in ssh_hosts.hosts
    )
    as_nobody = cli(*remote, "--sudo", "--sudo-user", "nobody", "-N", "--", "id -un")
    assert as_nobody.stdout.splitlines() == ["nobody"] * 3, as_nobody.stderr
    for args, fragment in [
        ((*remote, "--sudo-user", "nobody", "--", "id"), "give --sudo too"),
        ((*remote, "--ask-pass", "--", "id"), "give --sudo too"),
        ((*remote, "--sudo", "--sudo-user", "-x", "--", "id"), "not a user name"),
        ((*remote, "--sudo", "--ask-pass", "--", "id"), "no terminal to ask on"),
        (("--sudo", "--", "id"), "for hosts reached over SSH"),
    ]:
        refused = cli(*args)
        assert refused.returncode == 2, (args, refused)
        assert fragment in refused.stderr, (args, refused.stderr)
    with sudo_hidden():
        missing = cli(*remote, "--sudo", "--", "id")
    assert missing.returncode == 127 and "sudo: not found on" in missing.stderr, missing.stderr
