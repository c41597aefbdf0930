"""Where and with what a started job runs (issue 11, item 3): the command line run as a
subprocess, against a real job host (``hostdir``) and, for ``-H``, real sshd test hosts.

A local ``asyncjobs start`` (and ``invoke`` without ``-H``) runs in the caller's directory with
the caller's environment, as ``nohup`` would, not in the job host's; ``--cwd DIR`` and
``--env K=V`` (repeatable) say otherwise, and a bad one is a usage error. A job on a remote job
host sees the remote user's environment, not the runtime bundle's ``PYTHONPATH`` or the first
connection's ``SSH_CONNECTION``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testhosts import TestHosts


def _env(**extra: str) -> dict[str, str]:
    clean = dict(os.environ)
    clean.pop("SSH_AUTH_SOCK", None)
    clean.pop("AJ_FOO", None)
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    # The job host imports asyncjobs from this checkout wherever it is started.
    clean["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), clean.get("PYTHONPATH")])
    )
    return clean | extra


def cli(
    *args: str, cwd: Path | str = "/", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        cwd=cwd,
        env=_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    run = cli(*args, **kwargs)  # type: ignore[arg-type]
    assert run.returncode == 0, run
    return run


def started(run: subprocess.CompletedProcess[str]) -> str:
    [job] = json.loads(run.stdout)["jobs"]
    return str(job["id"])


def output(job_id: str, *extra: str) -> list[str]:
    return ok("receive", job_id, "--wait", *extra).stdout.splitlines()


def usage_error(run: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert run.returncode == 2, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- a local start: the caller's directory and environment ------------------------------------


def test_start_runs_in_the_callers_directory_and_environment(hostdir: Path, tmp_path: Path) -> None:
    # The job host is started from elsewhere, without AJ_FOO: that is what a job saw before.
    first = ok("start", "--json", "--", "true", cwd="/")
    output(started(first))
    project = tmp_path / "proj"
    project.mkdir()
    job = ok("start", "--json", "--", "pwd; echo ${AJ_FOO-unset}", cwd=project,
             env=_env(AJ_FOO="bar"))  # fmt: skip
    assert output(started(job)) == [str(project), "bar"]
    # An argv (no shell) the same; and the caller's whole environment, PATH and all.
    argv = ok("start", "--json", "--", "sh", "-c", 'pwd; echo "$AJ_FOO $PATH"', cwd=project,
              env=_env(AJ_FOO="argv", PATH="/usr/bin:/bin:/aj-marker"))  # fmt: skip
    assert output(started(argv)) == [str(project), "argv /usr/bin:/bin:/aj-marker"]


def test_cwd_and_env_options_say_otherwise(hostdir: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    job = ok("start", "--json", "--cwd", "sub", "--env", "AJ_FOO=over", "--env", "AJ_B=x=y",
             "--env", "AJ_EMPTY=", "--", 'pwd; echo "$AJ_FOO|$AJ_B|${AJ_EMPTY-unset}|$AJ_KEEP"',
             cwd=tmp_path, env=_env(AJ_FOO="caller", AJ_KEEP="kept"))  # fmt: skip
    assert output(started(job)) == [str(tmp_path / "sub"), "over|x=y||kept"]
    absolute = ok("start", "--json", "--cwd", str(tmp_path), "--", "pwd", cwd="/")
    assert output(started(absolute)) == [str(tmp_path)]


def test_bad_cwd_and_env_are_usage_errors_naming_them(hostdir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    usage_error(cli("start", "--env", "NOEQUALS", "--", "true"), "--env", "NOEQUALS", "K=V")
    usage_error(cli("start", "--env", "=v", "--", "true"), "--env", "'=v'")
    usage_error(cli("start", "--env", "A B=v", "--", "true"), "--env", "A B=v")
    usage_error(cli("start", "--cwd", str(tmp_path / "nope"), "--", "true"), "--cwd", "nope")
    usage_error(cli("start", "--cwd", str(tmp_path / "file"), "--", "true"), "--cwd", "file")
    usage_error(cli("start", "--cwd", "nope", "--", "true", cwd=tmp_path), "--cwd", "nope")
    assert json.loads(ok("get", "--json").stdout)["jobs"] == []  # nothing was started


def test_invoke_without_hosts_runs_here_too(hostdir: Path, tmp_path: Path) -> None:
    ok("start", "--json", "--", "true", cwd="/")  # the job host runs, started elsewhere
    run = ok("invoke", "--", "pwd; echo $AJ_FOO", cwd=tmp_path, env=_env(AJ_FOO="inv"))
    assert [line.split(": ", 1)[1] for line in run.stdout.splitlines()] == [str(tmp_path), "inv"]


# -- a remote job host: the user's environment, not the bridge's -------------------------------


@pytest.fixture
def remote(ssh_hosts: TestHosts) -> Iterator[TestHosts]:
    """The test hosts with no job host running: the test's job host is started by the code
    under test (one an earlier bridge started would hide what this one does); it is stopped
    afterwards."""

    def stop() -> None:
        for pid in ssh_hosts.pgrep(None, "asyncjobs._host.daemon"):
            subprocess.run(["kill", "-TERM", str(pid)], check=False)

    stop()
    yield ssh_hosts
    stop()


def _ssh(hosts: TestHosts, i: int = 0) -> list[str]:
    return [
        "-H", f"{hosts.hosts[i].address}:{hosts.hosts[i].port}",
        "-l", hosts.username, "-i", str(hosts.client_key),
        "--known-hosts", str(hosts.known_hosts), "-F", "none",
    ]  # fmt: skip


PROBE = textwrap.dedent("""\
    import os, sys
    print("PYTHONPATH", os.environ.get("PYTHONPATH", "unset"))
    print("runtime-on-path", any("asyncjobs" in p for p in sys.path))
    for name in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"):
        print(name, os.environ.get(name, "unset"))
    try:
        import idna
        print("idna", idna.__file__)
    except ImportError:
        print("idna", "missing")
    print("cwd", os.getcwd() == os.path.expanduser("~"))
""")


def test_a_job_on_a_remote_job_host_sees_the_users_environment(
    remote: TestHosts, hostdir: Path
) -> None:
    ssh = _ssh(remote, 2)
    job = ok("start", *ssh, "--json", "--", "python3", "-c", PROBE)
    lines = output(started(job), *ssh)
    assert lines == [
        "PYTHONPATH unset",  # the remote user has none
        "runtime-on-path False",
        "SSH_CONNECTION unset",  # a detached job belongs to no connection (nor the first one)
        "SSH_CLIENT unset",
        "SSH_TTY unset",
        "idna missing",  # not the bundle's copy: the test user's python3 has no idna
        "cwd True",  # the remote user's home, where ssh would run it
    ], lines
    env = ok("start", *ssh, "--json", "--env", "AJ_FOO=far", "--", "echo ${AJ_FOO-unset}")
    assert output(started(env), *ssh) == ["far"]
    missing = cli("start", *ssh, "--cwd", "/nonexistent-aj", "--", "true")
    assert missing.returncode != 0 and "/nonexistent-aj" in missing.stderr, missing
    assert "Traceback" not in missing.stderr


def test_the_bridge_gives_the_job_host_the_users_pythonpath_back(
    hostdir: Path, tmp_path: Path
) -> None:
    """The bridge as a remote shell runs it (``bridge_command``), here, with a PYTHONPATH of the
    user's and a session's SSH variables: the job host it starts, and its jobs, have the user's
    PYTHONPATH as it was, no runtime zip in it, and no SSH session."""
    import anyio

    from asyncjobs._host.client import connect_local
    from asyncjobs._host.runtime import bridge_command, build_runtime

    runtime = build_runtime()
    zip_path = tmp_path / runtime.name
    zip_path.write_bytes(runtime.data)
    env = _env(
        PYTHONPATH="/user/lib:/user/more",
        SSH_CONNECTION="10.0.0.1 5000 10.0.0.2 22",
        SSH_CLIENT="10.0.0.1 5000 22",
        SSH_AUTH_SOCK="/tmp/ssh-XXXXabcd/agent.1234",
        AJ_FOO="user",
    )
    bridge = subprocess.Popen(
        ["/bin/sh", "-c", bridge_command(str(zip_path))],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:

        async def main() -> list[str]:
            with anyio.fail_after(30):
                while not (hostdir / "host.sock").exists():  # the bridge started the host
                    await anyio.sleep(0.02)
                async with await connect_local("env", create=True) as s:
                    job = await s.jobs.start_command(
                        'echo "$PYTHONPATH|${SSH_CONNECTION-unset}|${SSH_CLIENT-unset}|'
                        '${SSH_AUTH_SOCK-unset}|$AJ_FOO"'
                    )
                    await s.jobs.wait(job, timeout=20)
                    lines: list[str] = await s.jobs.receive(job)
                    return lines

        assert anyio.run(main) == ["/user/lib:/user/more|unset|unset|unset|user"]
        assert (tmp_path / "asyncjobs").exists() is False  # nothing unpacked anywhere
    finally:
        assert bridge.stdin is not None
        bridge.stdin.close()  # the channel ends: the bridge exits
        bridge.wait(timeout=20)
