"""Host groups, exclusions and OpenSSH options (issue 14 item 4), as clush and ssh take them:
``-H @web`` from the groups file (nested groups, cycles and unknown groups refused), ``-x``
leaving hosts out, ``-o Key=Value`` with ssh's precedence. The pure parts directly; the
command line as a subprocess against the real sshd test hosts, in a HOME of the test's own,
and for every bad input proof that nothing connected (a port that nobody may connect to)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncjobs._cli._groups import GroupError, Groups, LazyGroups, exclude
from asyncjobs._cli._hosts import HostSyntaxError, gather, parse_hosts, targets
from asyncjobs._cli._openssh import OpenSSHOptions
from asyncjobs._ssh.targets import Target
from tests import test_cli_operator as operator
from tests.test_cli_operator import Home, Run, accepted, summary

home = operator.home  # the fixtures: a HOME with the test key, known_hosts and ssh config
listener = operator.listener

GROUPS = """\
# the web tier
web: web[01-03]   # three
db: web04,web05

all: @web,@db,web06
solo: web01
"""

# -- the groups file, pure ---------------------------------------------------------------


def groups(text: str) -> Groups:
    return Groups.parse(text.splitlines(keepends=True), "g")


def test_groups_expand_nested_in_order_without_duplicates() -> None:
    g = groups(GROUPS + "twice: @web,web02,@all\n")
    assert g.expand("web") == ["web01", "web02", "web03"]
    assert g.expand("all") == ["web01", "web02", "web03", "web04", "web05", "web06"]
    assert g.expand("twice") == g.expand("all")
    assert parse_hosts("x1,@db,ops@y[1-2]:2", g.expand) == [
        "x1",
        "web04",
        "web05",
        "ops@y1:2",
        "ops@y2:2",
    ]


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("a: @b\nb: @c\nc: @a\n", "a", "group cycle in g: @a -> @b -> @c -> @a"),
        ("a: x,@a\n", "a", "group cycle in g: @a -> @a"),
        ("top: @a\na: @b\nb: @a\n", "top", "group cycle in g: @a -> @b -> @a"),
        ("web: w1\n", "wbe", "unknown group @wbe: groups file g does not define it (it has @web)"),
        ("web: w1\n", "wbe", "did you mean @web?"),
        ("all: @web,@dbx\nweb: w1\n", "all", "unknown group @dbx"),
        ("web: w[1-\n", "web", "groups file g, line 1: bad host range 'w[1-'"),
    ],
)
def test_cycles_unknown_groups_and_bad_members_are_named(
    text: str, name: str, message: str
) -> None:
    with pytest.raises(GroupError) as info:
        groups(text).expand(name)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web web1\n", "g, line 1: 'web web1' is not 'name: hosts'"),
        ("ok: a\nbad name: b\n", "g, line 2: 'bad name' is not a group name"),
        ("web: a\nweb: b\n", "g, line 2: group 'web' is already defined on line 1"),
        ("failed: a\n", "@failed is reserved"),
    ],
)
def test_bad_lines_of_the_groups_file_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(GroupError, match=r"^groups file ") as info:
        groups(text)
    assert message in str(info.value)


def test_the_file_is_found_by_xdg_read_once_and_may_be_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    lazy = LazyGroups()
    with pytest.raises(GroupError, match=r"there is no groups file .*/asyncjobs/groups; write"):
        lazy("web")
    (tmp_path / "asyncjobs").mkdir()
    path = tmp_path / "asyncjobs" / "groups"
    path.write_text(GROUPS)
    lazy = LazyGroups()
    assert gather(["@solo,x"], [], None, lazy) == ["web01", "x"]
    path.write_text("solo: changed\n")  # read once per invocation: the first reading holds
    assert lazy("solo") == ["web01"]
    with pytest.raises(HostSyntaxError, match="a group can't be used here"):
        parse_hosts("@web")  # no lookup given
    with pytest.raises(HostSyntaxError, match="'@' without a group name"):
        parse_hosts("a,@", lazy)


def test_exclusions_take_hosts_ranges_and_groups_out() -> None:
    g = groups(GROUPS)
    chosen = targets(parse_hosts("@all,ops@web07:2222,web08", g.expand), user=None, port=None)
    left = exclude(chosen, ["web[02-03]", "@db"], g.expand)
    assert [t.host for t in left] == ["web01", "web06", "web07", "web08"]
    # a bare host removes it whatever its user and port; a user or port must match
    assert exclude(chosen, ["web07"], g.expand) == [t for t in chosen if t.host != "web07"]
    assert exclude(chosen, ["root@web07", "web07:22"], g.expand) == chosen
    assert Target("web07", 2222, "ops") not in exclude(chosen, ["ops@web07:2222"], g.expand)
    assert exclude(chosen, [], g.expand) == chosen
    with pytest.raises(HostSyntaxError, match=r"^-x 'a b'"):
        exclude(chosen, ["a b"], g.expand)


# -- -o, pure ------------------------------------------------------------------------------


@pytest.fixture
def host_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASYNCJOBS_HOST_DIR", str(tmp_path / "host"))
    return tmp_path / "host"


def test_options_become_one_config_file_named_by_its_content(host_dir: Path) -> None:
    given = OpenSSHOptions.parse(["port=2222", "User = ops", "ConnectTimeout=5", "BatchMode=yes"])
    assert given.items == (
        ("Port", "2222"),
        ("User", "ops"),
        ("ConnectTimeout", "5"),
        ("BatchMode", "yes"),
    )
    assert given.connect_timeout == 5.0
    path = given.file()
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["Port 2222", "User ops", "ConnectTimeout 5"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert (host_dir / "ssh-options").stat().st_mode & 0o777 == 0o700
    assert (
        OpenSSHOptions.parse(["Port=2222", "User=ops", "ConnectTimeout=5", "BatchMode=yes"]).file()
        == path
    )
    assert OpenSSHOptions.parse(["Port=2200"]).file() != path
    path.unlink()  # deleted meanwhile: written again
    assert (
        given.file()
        .read_text()
        .endswith("ConnectTimeout 5\n# BatchMode yes: asyncjobs never prompts\n")
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["Port"], "-o 'Port': write -o Key=Value"),
        (["=22"], "write -o Key=Value"),
        (["Port="], "no value for Port"),
        (["Prot=22"], "can't honour the SSH option Prot"),
        (["Prot=22"], "did you mean Port?"),
        (["ControlMaster=auto"], "can't honour the SSH option ControlMaster"),
        (["Host=web1"], "Host is config structure"),
        (["RequestTTY=yes"], "asyncjobs can't honour RequestTTY"),
        (["BatchMode=no"], "never prompts"),
        (["User=ops", "Port=abc"], "-o 'Port=abc': Invalid Port integer value: abc"),
        (["StrictHostKeyChecking=maybe"], "StrictHostKeyChecking is one of yes, accept-new"),
        (["ConnectTimeout=0"], "ConnectTimeout is a number of seconds above 0"),
    ],
)
def test_bad_options_are_refused_naming_them(
    host_dir: Path, given: list[str], message: str
) -> None:
    with pytest.raises(HostSyntaxError) as info:
        OpenSSHOptions.parse(given)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not list((host_dir / "ssh-options").glob("*abc*"))
    assert all("abc" not in p.read_text() for p in (host_dir / "ssh-options").glob("*"))


# -- the command line against the test hosts ----------------------------------------------


def run(home: Home, *args: str, timeout: float = 60) -> Run:
    """``asyncjobs ARGS`` with the groups file of ``home`` (``~/.config/asyncjobs/groups``)."""
    env = home.env()
    env["XDG_CONFIG_HOME"] = str(home.path / ".config")
    env["ASYNCJOBS_HOST_DIR"] = str(home.path / "jobhost")
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def write_groups(home: Home, text: str) -> Path:
    path = home.path / ".config" / "asyncjobs" / "groups"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


#: Prints the port the command's sshd listens on: which host it reached.
SERVER_PORT = "echo ${SSH_CONNECTION##* }"


def tagged(run: Run) -> dict[str, str]:
    """invoke's output lines, ``host: text``, as {host: text}."""
    lines = [line.partition(": ") for line in run.out.splitlines()]
    return {host: text for host, _, text in lines}


def test_a_nested_group_less_exclusions_reaches_exactly_its_hosts(home: Home) -> None:
    write_groups(home, GROUPS)
    reached = run(home, "invoke", "-H", "@all", "-x", "web02", "-x", "@db", "--", SERVER_PORT)
    assert reached.rc == 0, reached
    assert tagged(reached) == {f"web{i:02d}": str(home.port(i)) for i in (1, 3, 6)}
    hostfile = home.path / "hosts"
    hostfile.write_text("@web  # a group in a host file\nweb05\n")
    both = run(home, "invoke", "--hostfile", str(hostfile), "-x", "web[01-02]", "--", "true")
    assert both.rc == 0, both
    assert summary(both) == [["web[03,05]", "2", "Completed", "0"]]


def test_the_job_commands_take_a_group_of_one_host(home: Home) -> None:
    write_groups(home, GROUPS)
    listed = run(home, "get", "-H", "@solo")
    assert listed.rc == 0, listed
    sessions = run(home, "session", "list", "-H", "@web", "-x", "web[02-03]")
    assert sessions.rc == 0, sessions
    many = run(home, "get", "-H", "@web")  # each host's job host (tests/test_cli_many.py)
    assert many.rc == 0, many
    assert many.out == "" or many.out.split()[:2] == ["Host", "Id"]


UNKNOWN = "unknown group @nope: groups file {path} does not define it"
CYCLE = "group cycle in {path}: @looped -> @loop2 -> @looped"
PROT = "-o 'Prot=22': asyncjobs can't honour the SSH option Prot (unknown to ssh"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["invoke", "-H", "{bad},@nope", "--", "true"], UNKNOWN),
        (["invoke", "-H", "@looped", "--", "true"], CYCLE),
        (
            ["invoke", "-H", "{bad},web01", "-x", "@pair", "--", "true"],
            "-x '@pair' removes every host of -H '{bad},web01': nothing to run on",
        ),
        (["invoke", "-H", "{bad}", "-o", "Prot=22", "--", "true"], PROT),
        (["invoke", "-H", "{bad}", "-o", "Port", "--", "true"], "-o 'Port': write -o Key=Value"),
        (
            ["invoke", "-x", "web01", "--", "true"],
            "-x 'web01' leaves hosts out of -H, and no -H names any",
        ),
        (["start", "-H", "@nope", "--", "true"], UNKNOWN),
        (["get", "-H", "@looped"], CYCLE),
        (
            ["get", "-H", "{bad}", "-x", "127.0.0.1"],
            "-x '127.0.0.1' removes every host of -H '{bad}'",
        ),
        (
            ["receive", "1", "-H", "{bad}", "-o", "ControlMaster=auto"],
            "can't honour the SSH option ControlMaster",
        ),
        (
            ["session", "list", "-H", "{bad}", "-o", "Port=abc"],
            "-o 'Port=abc': Invalid Port integer value: abc",
        ),
        (["enter", "{bad}", "-o", "Prot=22"], PROT),
        (["enter", "@nope"], UNKNOWN),
    ],
)
def test_bad_groups_exclusions_and_options_exit_2_and_nothing_connects(
    home: Home, listener: socket.socket, args: list[str], message: str
) -> None:
    bad = f"127.0.0.1:{listener.getsockname()[1]}"
    path = write_groups(home, f"{GROUPS}pair: {bad},web01\nlooped: {bad},@loop2\nloop2: @looped\n")
    got = run(home, *(arg.replace("{bad}", bad) for arg in args))
    got.error_line(message.format(path=path, bad=bad))
    assert got.rc == 2 and got.out == "", got
    time.sleep(0.2)
    assert not accepted(listener)


def test_minus_x_removing_every_host_says_so_in_json(home: Home, listener: socket.socket) -> None:
    bad = f"127.0.0.1:{listener.getsockname()[1]}"
    got = run(home, "invoke", "-H", bad, "-x", "127.0.0.1", "--json", "--", "true")
    assert got.rc == 2
    error = got.doc()["error"]
    assert (
        error["type"] == "HostSyntaxError"
        and "-x '127.0.0.1' removes every host" in error["message"]
    )
    assert not accepted(listener)


def test_o_port_and_user_win_over_the_ssh_config_and_lose_to_p_and_l(home: Home) -> None:
    # web01 says Port of host 1; -o sends it to host 2's port, the first -o Port wins
    moved = run(
        home,
        "invoke",
        "-H",
        "web01",
        "-o",
        f"Port={home.port(2)}",
        "-o",
        f"Port={home.port(3)}",
        "--",
        SERVER_PORT,
    )
    assert moved.rc == 0, moved
    assert tagged(moved) == {"web01": str(home.port(2))}
    # -p wins over -o Port, as a host's own :PORT wins over -p
    flag = run(
        home,
        "invoke",
        "-H",
        f"web01,web02:{home.port(2)}",
        "-p",
        str(home.port(3)),
        "-o",
        "Port=1",
        "--",
        SERVER_PORT,
    )
    assert flag.rc == 0, flag
    p2, p3 = home.port(2), home.port(3)
    assert tagged(flag) == {f"web01:{p3}": str(p3), f"web02:{p2}": str(p2)}
    # a config whose User is wrong: -o User fixes it; -o User=nobody breaks a good host
    home.config(home.alias("wrong", 1, "User nobody-here"))
    refused = run(home, "invoke", "-H", "wrong", "--", "whoami")
    assert refused.rc != 0 and "nobody-here@127.0.0.1" in refused.err, refused
    fixed = run(home, "invoke", "-H", "wrong", "-o", f"User={home.hosts.username}", "--", "whoami")
    assert fixed.rc == 0, fixed
    assert tagged(fixed) == {"wrong": home.hosts.username}
    broken = run(home, "invoke", "-H", "web01", "-o", "User=nobody-here", "--", "whoami")
    assert broken.rc != 0 and f"nobody-here@127.0.0.1:{home.port(1)}" in broken.err, broken
    won = run(
        home,
        "invoke",
        "-H",
        "web01",
        "-l",
        home.hosts.username,
        "-o",
        "User=nobody-here",
        "--",
        "whoami",
    )
    assert won.rc == 0, won


def test_o_host_key_options_reach_the_host_key_check(home: Home) -> None:
    """UserKnownHostsFile and StrictHostKeyChecking given by -o are the ones applied."""
    (home.ssh / "known_hosts").write_text("")  # the user's file knows no host now
    unknown = run(home, "invoke", "-H", "web01", "--", "true")
    assert unknown.rc != 0 and "host key not verified" in unknown.err, unknown
    other = home.path / "other_known_hosts"
    other.write_text(f"{home.known_line(1)}\n")
    known = run(home, "invoke", "-H", "web01", "-o", f"UserKnownHostsFile={other}", "--", "true")
    assert known.rc == 0, known
    added = run(
        home, "invoke", "-H", "web02", "-o", "StrictHostKeyChecking=accept-new", "--", "true"
    )
    assert added.rc == 0, added
    assert f"[127.0.0.1]:{home.port(2)}" in (home.ssh / "known_hosts").read_text()


def test_o_reaches_the_job_host_commands(home: Home) -> None:
    write_groups(home, GROUPS)
    started = run(
        home, "start", "-H", "@solo", "-o", "Port=1", "-o", "ConnectTimeout=3", "--", "true"
    )
    assert started.rc != 0 and "127.0.0.1:1" in started.err, started
    listed = run(
        home,
        "get",
        "-H",
        "wrong-port",
        "-o",
        "Hostname=127.0.0.1",
        "-o",
        f"Port={home.port(1)}",
        "-l",
        home.hosts.username,
    )
    assert listed.rc == 0, listed
    assert os.path.isdir(home.path / "jobhost" / "ssh-options")


def test_docs_list_exactly_the_options_o_takes() -> None:
    from asyncjobs._cli._openssh import honoured

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    section = text.split("`-o` takes: ", 1)[1].split("; and", 1)[0]
    assert [name.strip(" `\n") for name in section.split(",")] == honoured()


# -- help with an example for every command (issue 14 item 10) -----------------------------


def command_paths() -> list[list[str]]:
    import click

    from asyncjobs._cli._app import cli

    paths: list[list[str]] = [[]]
    for name, command in sorted(cli.commands.items()):
        paths.append([name])
        if isinstance(command, click.Group):
            paths.extend([name, sub] for sub in sorted(command.commands))
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "asyncjobs")
def test_every_command_s_help_shows_an_example_of_itself(path: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncjobs", *path, "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    examples = [
        line.split() for line in proc.stdout.splitlines() if line.startswith("    asyncjobs ")
    ]
    assert any(words[1 : 1 + len(path)] == path for words in examples), proc.stdout


def test_o_connect_timeout_bounds_the_connect_and_the_flag_wins(
    home: Home, listener: socket.socket
) -> None:
    """A port that accepts and never speaks SSH: ConnectTimeout=1 gives up after 1 s, not 30;
    --connect-timeout wins over it."""
    silent = f"127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    quick = run(home, "invoke", "-H", silent, "-o", "ConnectTimeout=1", "--", "true")
    assert quick.rc != 0 and "timed out after 1 s" in quick.err, quick
    assert time.monotonic() - started < 15
    flag = run(
        home,
        "invoke",
        "-H",
        silent,
        "--connect-timeout",
        "2",
        "-o",
        "ConnectTimeout=1",
        "--",
        "true",
    )
    assert flag.rc != 0 and "timed out after 2 s" in flag.err, flag
