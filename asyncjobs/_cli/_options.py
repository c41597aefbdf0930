"""The options commands share: ``--json`` and ``--debug`` everywhere, how to reach SSH hosts,
and ``-H`` made into a ``Where`` (one job host) or targets (many hosts)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from .._core.state import JobState
from ._hosts import HostSyntaxError

if TYPE_CHECKING:
    from .._ssh.targets import Target
    from ._access import Where

F = TypeVar("F", bound=Callable[..., Any])

JSON: Final = "asyncjobs.json"
JSON_LINES: Final = "asyncjobs.json_lines"
DEBUG: Final = "asyncjobs.debug"
#: ``--state``'s choices: every ``JobState``'s value, in the enum's order.
STATES: Final = tuple(s.value for s in JobState)
COMMAND: Final = {"allow_interspersed_args": False}  # `start -- ls -l`: -l belongs to ls


def _set(key: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[key] = True

    return callback


def _set_json_lines(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[JSON] = ctx.meta[JSON_LINES] = True


def common(f: F) -> F:
    """``--json``, ``--json-lines`` and ``--debug``, on the group and on every command."""
    f = click.option(
        "--json-lines",
        is_flag=True,
        expose_value=False,
        callback=_set_json_lines,
        help="As --json, but each record is a JSON line of its own as it comes; the document "
        "(its records empty) is the last line.",
    )(f)
    f = click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_set(JSON),
        help="Print one JSON document (schema asyncjobs-cli/1, see docs/cli.md) instead of text.",
    )(f)
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_set(DEBUG),
        help="Show the traceback of an error.",
    )(f)


def connection_options(f: F) -> F:
    """How to reach hosts: ``-l``, ``-p``, ``-i``, ``--known-hosts``, ``--connect-timeout``,
    ``-F`` and ``-o``; ~/.ssh/config applies as with ssh. (``enter`` takes these.)"""
    options = [
        click.option("--user", "-l", metavar="USER", help="User for hosts that don't say user@."),
        click.option(
            "--port",
            "-p",
            type=click.IntRange(1, 65535),
            help="Port for hosts that don't say :PORT.",
        ),
        click.option(
            "-i", "--identity", multiple=True, metavar="FILE", help="Private key file (repeatable)."
        ),
        click.option(
            "--known-hosts", metavar="FILE", help="known_hosts file to verify hosts with."
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="S",
            help="Give up connecting after S seconds (default 30).",
        ),
        click.option(
            "-F",
            "--ssh-config",
            metavar="FILE",
            help="OpenSSH client config instead of ~/.ssh/config ('none': no config).",
        ),
        click.option(
            "-o",
            "ssh_option",
            multiple=True,
            metavar="KEY=VALUE",
            help="An OpenSSH option, as ssh -o (repeatable): -o Port=2222 -o User=ops. It wins "
            "over ~/.ssh/config (the first value wins, as in ssh); -l/-p/-i/--known-hosts/"
            "--connect-timeout win over it.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def exclude_option(f: F) -> F:
    """``-x HOSTS``: hosts to leave out of ``-H`` (ranges and groups too)."""
    return click.option(
        "-x",
        "--exclude",
        multiple=True,
        metavar="HOSTS",
        help="Leave these hosts out of -H (ranges and @groups too; repeatable): -x web[03-04].",
    )(f)


def ssh_options(f: F) -> F:
    """Every option of a command that takes ``-H`` hosts, besides ``-H``: the connection
    options and ``-x``. A new command that takes hosts (``copy``, ``gather``) gets groups,
    ``-x`` and ``-o`` by using this and ``targets_of``/``where_of``."""
    return exclude_option(connection_options(f))


#: ``-H``'s help where it takes many hosts.
HOSTS_HELP: Final = (
    "Hosts: web1,web2, web[01-12], user@db[1-3]:2222, @group, '-' for stdin (repeatable)."
)


def hosts_options(f: F) -> F:
    """``-H``/``-w HOSTS`` (repeatable) and ``--hostfile`` for a command that runs on many
    hosts (``copy``, ``gather``); with ``ssh_options`` and ``targets_of`` it takes ranges,
    groups, ``-x`` and ``-o`` as ``invoke`` does."""
    f = click.option(
        "--hostfile",
        multiple=True,
        metavar="FILE",
        help="Hosts, one per line, # comments; '-': stdin.",
    )(f)
    return click.option("-H", "-w", "--hosts", multiple=True, metavar="HOSTS", help=HOSTS_HELP)(f)


def host_option(f: F) -> F:
    """``-H`` for commands that talk to one job host."""
    return click.option(
        "-H",
        "--host",
        metavar="HOST",
        help="The job host of [user@]HOST[:PORT] or a one-host @group, over SSH "
        "(default: this machine's).",
    )(f)


class UsageError(HostSyntaxError):
    """An option the command can't use, such as a file that does not exist: one line naming
    it, exit status 2 (the boundary's status for a ``HostSyntaxError``), before anything
    connects."""


#: The SSH flags that name files, and what such a file is.
_FILE_FLAGS: Final = (
    ("identity", "-i", "a private key file"),
    ("known_hosts", "--known-hosts", "an existing known_hosts file (an empty one trusts nothing)"),
    ("ssh_config", "-F", "an OpenSSH client config, or 'none' for none"),
)


def check_files(ssh: dict[str, Any]) -> None:
    """Every file the SSH flags name must be readable: ``-i /nope`` is one usage error naming
    the file, not a ``No such file or directory`` from every host. (A missing IdentityFile or
    UserKnownHostsFile in the SSH config is no error: ssh skips it, and so do we.)"""
    from .._ssh.files import file_problem

    for key, flag, what in _FILE_FLAGS:
        value = ssh.get(key)
        paths = list(value) if isinstance(value, list | tuple) else [value]
        for path in paths:
            if not path or (key == "ssh_config" and path == "none"):
                continue
            problem = file_problem(path)
            if problem is not None:
                raise UsageError(f"{flag} {path}: {problem}; give {what}")


def ssh_dict(ssh: dict[str, Any]) -> dict[str, Any]:
    """The asyncssh options of the SSH flags (``--user``/``--port`` go into the targets)."""
    options: dict[str, Any] = {}
    if ssh.get("identity"):
        options["client_keys"] = list(ssh["identity"])
    if ssh.get("known_hosts"):
        options["known_hosts"] = ssh["known_hosts"]
    if ssh.get("connect_timeout") is not None:
        options["connect_timeout"] = ssh["connect_timeout"]
    if ssh.get("ssh_config"):
        options["config"] = [] if ssh["ssh_config"] == "none" else [ssh["ssh_config"]]
    if ssh.get("ssh_option"):
        from ._openssh import OpenSSHOptions, user_config

        given = OpenSSHOptions.parse(ssh["ssh_option"])
        options["config"] = [str(given.file()), *user_config(ssh.get("ssh_config"))]
        if given.connect_timeout is not None:
            options.setdefault("connect_timeout", given.connect_timeout)
    return options


def check_ssh(ssh: dict[str, Any]) -> None:
    """Every file the flags name, and every ``-o``: a usage error before anything connects."""
    check_files(ssh)
    if ssh.get("ssh_option"):
        from ._openssh import OpenSSHOptions

        OpenSSHOptions.parse(ssh["ssh_option"])


def check_local(ssh: dict[str, Any]) -> None:
    """A command run here (no ``-H``) refuses ``-x``, which only takes hosts out of ``-H``."""
    if ssh.get("exclude"):
        raise HostSyntaxError(
            f"-x {ssh['exclude'][0]!r} leaves hosts out of -H, and no -H names any; give -H HOSTS"
        )


def where_of(host: str | None, ssh: dict[str, Any]) -> Where:
    """The one job host of ``-H`` (a host or a group of one, less ``-x``)."""
    from ._access import Where
    from ._groups import exclude
    from ._hosts import parse_hosts, targets
    from ._retry import HostLists

    if host is None:
        check_local(ssh)
        return Where()
    groups = HostLists()
    hosts = parse_hosts(host, groups)
    chosen = targets(hosts, user=ssh.get("user"), port=ssh.get("port"))
    left = exclude(chosen, ssh.get("exclude") or (), groups)
    if not left:
        raise _all_excluded(f"-H {host!r}", ssh)
    if len(left) != 1:
        raise HostSyntaxError(
            f"-H {host!r} names {len(left)} hosts; this command takes one "
            "('asyncjobs invoke' runs a command on many)"
        )
    check_ssh(ssh)
    return Where(left[0], ssh_dict(ssh))


def targets_of(hosts: Sequence[str], hostfiles: Sequence[str], ssh: dict[str, Any]) -> list[Target]:
    """The hosts of ``-H`` (groups expanded) and ``--hostfile``, less ``-x``, checked,
    ``--user``/``--port`` filled in; every ``-o`` checked. Nothing connects yet."""
    from ._groups import exclude
    from ._hosts import gather, targets
    from ._retry import HostLists

    groups = HostLists()  # @group, and @failed / @last: the hosts of an earlier invoke
    names = gather(hosts, hostfiles, sys.stdin, groups)
    if not names:
        raise HostSyntaxError("no hosts: -H and --hostfile named none")
    chosen = targets(names, user=ssh.get("user"), port=ssh.get("port"))
    left = exclude(chosen, ssh.get("exclude") or (), groups)
    if not left:
        named = " ".join([*(f"-H {h!r}" for h in hosts), *(f"--hostfile {f}" for f in hostfiles)])
        raise _all_excluded(named, ssh)
    check_ssh(ssh)
    return left


def _all_excluded(named: str, ssh: dict[str, Any]) -> HostSyntaxError:
    removed = " ".join(f"-x {x!r}" for x in ssh.get("exclude") or ())
    return HostSyntaxError(
        f"{removed} removes every host of {named}: nothing to run on, nothing connected; "
        "exclude fewer hosts"
    )
