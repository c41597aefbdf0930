"""The command line's grammar: click commands that parse their options and hand the work to
their async bodies (``_jobs``, ``_invoke``, ``_enter``) through ``_boundary.run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from .._host.records import KINDS
from .._version import __version__
from ._boundary import describe, fail, run, run_on, say
from ._copy import copy as copy_command
from ._copy import gather as gather_command
from ._harness import Harness, harness_options
from ._hosts import HostSyntaxError
from ._many import job_hosts, run_jobs
from ._options import (
    COMMAND,
    HOSTS_HELP,
    STATES,
    check_local,
    common,
    connection_options,
    host_option,
    ssh_dict,
    ssh_options,
    targets_of,
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Without -H, jobs run on this machine's job host (started on first use); they and "
    "their output stay there across invocations. Docs: docs/cli.md.",
)
@click.version_option(__version__, prog_name="asyncjobs")
@common
def cli() -> None:
    """PowerShell's job commands for the shell: start jobs, list them, receive their output,
    and run commands on many hosts over SSH.

    \b
      asyncjobs start --name build -- make -j8
      asyncjobs get
      asyncjobs receive 1 --wait
      asyncjobs invoke -H web[01-12] -- uptime
    """


@cli.command(context_settings=COMMAND)
@click.option(
    "-H",
    "-w",
    "--hosts",
    multiple=True,
    metavar="HOSTS",
    help=HOSTS_HELP,
)
@click.option(
    "--hostfile", multiple=True, metavar="FILE", help="Hosts, one per line, # comments; '-': stdin."
)
@click.option(
    "--throttle", type=click.IntRange(min=1), default=32, show_default=True, help="Hosts at once."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S s."
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Fail a host whose command printed nothing for S s (and kill it).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Retry a host's connection N times (refused, reset, timed out; never auth).",
)
@click.option(
    "--max-startups",
    type=click.IntRange(min=1),
    metavar="N",
    help="SSH handshakes in flight at most, over all hosts (always <= 8 per address:port).",
)
@click.option("-N", "no_prefix", is_flag=True, help="Print lines without the host's tag.")
@click.option(
    "--outdir",
    metavar="DIR",
    help="Write each host's stdout and stderr to DIR/<host>.out and .err, not the screen.",
)
@click.option("--fail-fast", is_flag=True, help="Stop every host once one fails.")
@click.option("--fold", is_flag=True, help="Print each distinct output once, with its hosts.")
@click.option(
    "--stdin",
    "-I",
    "send_stdin",
    is_flag=True,
    help="Send this stdin to every host's command (read once, up to 8 MiB); else it gets EOF.",
)
@click.option(
    "--persist",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Keep the SSH connections open S s (default 60) in your local job host; the next "
    "invoke to those hosts reuses them.",
)
@click.option(
    "--no-persist",
    is_flag=True,
    help="Connect from here and close at the end (ASYNCJOBS_PERSIST=0).",
)
@click.option("--sudo", is_flag=True, help="Run the command through sudo on every host (as root).")
@click.option("--sudo-user", metavar="USER", help="With --sudo: run it as USER (sudo -u USER).")
@click.option(
    "--ask-pass",
    is_flag=True,
    help="With --sudo: ask for sudo's password once (no echo) and answer sudo with it on every "
    "host; without it sudo must not ask (NOPASSWD).",
)
@harness_options
@ssh_options
@common
@click.argument("command", nargs=-1, required=True)
def invoke(
    hosts: tuple[str, ...],
    hostfile: tuple[str, ...],
    throttle: int,
    timeout: float | None,
    idle_timeout: float | None,
    retries: int,
    max_startups: int | None,
    no_prefix: bool,
    outdir: str | None,
    fail_fast: bool,
    fold: bool,
    send_stdin: bool,
    persist: float | None,
    no_persist: bool,
    sudo: bool,
    sudo_user: str | None,
    ask_pass: bool,
    clock: bool,
    parse: str | None,
    probe: bool,
    command: tuple[str, ...],
    **ssh: Any,
) -> None:
    """Run COMMAND on every host and wait (Invoke-Command; pdsh).

    Lines are printed as they come, tagged with their host; a summary goes to stderr; the
    exit status is the worst host's. Without -H the command runs on this machine.

    \b
      asyncjobs invoke -H web[01-04],db1 -- uptime
      asyncjobs invoke --hostfile hosts.txt --fold -- cat /etc/debian_version
      asyncjobs invoke -H db[1-40] --idle-timeout 60 --retries 2 -- ./migrate
      asyncjobs invoke -H web[01-12] --outdir logs -- journalctl -u nginx -n 100
      asyncjobs invoke -H @web -x web03 -o User=deploy -- systemctl is-active nginx
      asyncjobs invoke -H @failed -- ./deploy    # the hosts the last invoke failed on
      asyncjobs invoke -H web[01-04] --sudo --ask-pass -- systemctl restart nginx
      asyncjobs invoke -H db1 --sudo --sudo-user postgres -- psql -c 'select 1'
      asyncjobs invoke -H web[01-32] --persist 600 -- true   # the next one starts warm
      asyncjobs invoke -H bench[1-8] --clock --probe --parse json -- ./bench --json
    """
    from ._invoke import ask_password, become_of, out_dir, read_stdin, remote_only
    from ._warm import persist_of

    if send_stdin and "-" in {h.strip() for h in hosts} | set(hostfile):
        raise click.BadParameter(
            "standard input can't be both the hosts (-H - or --hostfile -) and their input",
            param_hint="'--stdin'",
        )
    if not hosts and not hostfile:
        from ._invoke import invoke_local

        try:
            check_local(ssh)  # -x without -H
        except HostSyntaxError as exc:
            fail("invoke", exc)
            return
        remote_only(idle_timeout=idle_timeout, retries=retries, max_startups=max_startups,
                    sudo=sudo, sudo_user=sudo_user, ask_pass=ask_pass, persist=persist)  # fmt: skip
        remote_only(clock=clock, probe=probe)  # docs/harness.md
        data = read_stdin() if send_stdin else None
        run("invoke", invoke_local, command, timeout=timeout, folding=fold, input=data,
            prefix=not no_prefix, outdir=out_dir(outdir, fold, []),
            harness=Harness(parse=parse))  # fmt: skip
        return
    try:
        chosen = targets_of(hosts, hostfile, ssh)
    except HostSyntaxError as exc:
        fail("invoke", exc)
        return
    from ._invoke import invoke_remote

    become = become_of(sudo, sudo_user, ask_pass)
    data = read_stdin() if send_stdin else None
    files = out_dir(outdir, fold, [t.location for t in chosen])  # as the children name them
    password = ask_password(chosen) if ask_pass else None  # last: every usage error first

    run(
        "invoke",
        invoke_remote,
        chosen,
        command,
        throttle=throttle,
        timeout=timeout,
        idle_timeout=idle_timeout,
        retries=retries,
        max_startups=max_startups,
        prefix=not no_prefix,
        outdir=files,
        fail_fast=fail_fast,
        folding=fold,
        ssh_options=ssh_dict(ssh),
        input=data,
        become=become,
        become_password=password,
        persist=persist_of(persist, no_persist),
        harness=Harness(clock, parse, probe),
    )


@cli.command(context_settings=COMMAND)
@click.option("--name", "-n", metavar="NAME", help="The job's name (default JobN).")
@click.option("--session", metavar="NAME", help="The job host session to start it in (cli).")
@click.option("--cwd", metavar="DIR", help="Run it in DIR (default: here; with -H: the home).")
@click.option(
    "--env",
    "env",
    multiple=True,
    metavar="K=V",
    help="Set K to V for it (repeatable), over this environment (with -H: the host's).",
)
@job_hosts
@ssh_options
@common
@click.argument("command", nargs=-1, required=True)
def start(
    name: str | None,
    session: str | None,
    cwd: str | None,
    env: tuple[str, ...],
    command: tuple[str, ...],
    **ssh: Any,
) -> None:
    """Start a job and return at once (Start-Job); prints the job.

    One word is a shell command line, more are a program and its arguments. It runs here,
    with this environment, as nohup would (with -H: as ssh would run it there). With -H
    HOSTS, a job on each host's job host (a table with a Host column).

    \b
      asyncjobs start --name build -- make -j8
      asyncjobs start -- 'sleep 60; echo done'
      asyncjobs start -H web[01-04] --name deploy -- ./deploy.sh
    """
    from ._jobs import env_overrides, job_directory
    from ._jobs import start as body

    overrides = env_overrides(env)
    directory = job_directory(cwd, remote=bool(ssh["hosts"] or ssh["hostfile"]))
    run_jobs("start", body, ssh, command, name=name, session=session, cwd=directory,
             env=overrides)  # fmt: skip


@cli.command()
@click.option("--name", "-n", metavar="PATTERN", help="Only jobs whose name matches (build-*).")
@click.option(
    "--state", type=click.Choice(STATES, case_sensitive=False), help="Only jobs in this state."
)
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    help="Only jobs of this kind (RemoteJob: the invokes recorded for -H @failed / @last).",
)
@job_hosts
@ssh_options
@common
def get(name: str | None, state: str | None, kind: str | None, **ssh: Any) -> None:
    """List the jobs of the job host (Get-Job); with -H HOSTS, of each host's.

    \b
      asyncjobs get
      asyncjobs get --state failed --name 'build-*'
      asyncjobs get --kind RemoteJob
      asyncjobs get -H @build --json
      asyncjobs get -H web[01-04] --name deploy
    """
    from ._jobs import get as body

    run_jobs("get", body, ssh, name=name, state=state, kind=kind)


@cli.command()
@click.option("--name", "-n", metavar="PATTERN", help="The jobs whose name matches, not IDs.")
@click.option(
    "--from",
    "from_seq",
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Every record from SEQ on, received or not; consumes nothing.",
)
@click.option("--keep", is_flag=True, help="Leave the records there for the next receive.")
@click.option(
    "--wait", is_flag=True, help="Follow the job until it is finished; exit with its status."
)
@job_hosts
@ssh_options
@common
@click.argument("job_ids", metavar="ID...", type=int, nargs=-1)
def receive(
    job_ids: tuple[int, ...],
    name: str | None,
    from_seq: int | None,
    keep: bool,
    wait: bool,
    **ssh: Any,
) -> None:
    """Print the output of job ID not yet received (Receive-Job).

    Output goes to stdout, errors and other streams to stderr. --from SEQ reads from a
    position (a record's seq) and consumes nothing. With -H HOSTS, from each host's job
    ID (or --name), each line tagged with its host.

    \b
      asyncjobs receive 3
      asyncjobs receive 3 --wait          # follow it to the end; exit with its status
      asyncjobs receive 3 --keep -H build1
      asyncjobs receive 3 --from 100      # again from record 100, consuming nothing
      asyncjobs receive --name deploy -H web[01-04] --wait
    """
    from ._jobs import receive as body

    run_jobs("receive", body, ssh, job_ids, name=name, keep=keep, wait=wait, from_seq=from_seq,
             table=False, pick={"name": name})  # fmt: skip


@cli.command()
@click.option("--name", "-n", metavar="PATTERN", help="The jobs whose name matches, not IDs.")
@click.option("--any", "any_", is_flag=True, help="Return when one of the jobs is finished.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Give up after S seconds (exit status 124).",
)
@job_hosts
@ssh_options
@common
@click.argument("job_ids", metavar="ID...", type=int, nargs=-1)
def wait(
    job_ids: tuple[int, ...],
    name: str | None,
    any_: bool,
    timeout: float | None,
    **ssh: Any,
) -> None:
    """Wait until jobs are finished (Wait-Job); prints the finished ones.

    \b
      asyncjobs wait 3 4 5
      asyncjobs wait 3 4 --any --timeout 60   # exit status 124 if none finishes in time
      asyncjobs wait --name deploy -H web[01-04] --timeout 600
    """
    from ._jobs import wait as body

    run_jobs("wait", body, ssh, job_ids, name=name, any=any_, timeout=timeout,
             first_wins=any_, pick={"name": name})  # fmt: skip


@cli.command()
@click.option("--name", "-n", metavar="PATTERN", help="The jobs whose name matches, not IDs.")
@job_hosts
@ssh_options
@common
@click.argument("job_ids", metavar="ID...", type=int, nargs=-1)
def stop(job_ids: tuple[int, ...], name: str | None, **ssh: Any) -> None:
    """Stop the jobs (Stop-Job); prints them once they are stopped.

    An ID that is not there is reported (exit status 1); the other jobs are stopped.

    \b
      asyncjobs stop 3
      asyncjobs stop 3 4 -H build1
      asyncjobs stop --name deploy -H web[01-04]
    """
    from ._jobs import stop as body

    run_jobs("stop", body, ssh, job_ids, name=name, pick={"name": name})


@cli.command()
@click.option("--force", "-f", is_flag=True, help="Stop running jobs first.")
@click.option(
    "--state",
    type=click.Choice(STATES, case_sensitive=False),
    help="Every job in this state, not IDs.",
)
@click.option("--name", "-n", metavar="PATTERN", help="Every job whose name matches, not IDs.")
@job_hosts
@ssh_options
@common
@click.argument("job_ids", metavar="ID...", type=int, nargs=-1)
def remove(
    job_ids: tuple[int, ...],
    force: bool,
    state: str | None,
    name: str | None,
    **ssh: Any,
) -> None:
    """Delete jobs and their output (Remove-Job); a running job needs --force.

    --state and --name pick the jobs (both: jobs that match both; none matching is no
    error). An ID that is not there, or a running job without --force, is reported (exit
    status 1); the other jobs are removed.

    \b
      asyncjobs remove 3 4
      asyncjobs remove 5 --force          # stop it first
      asyncjobs remove --state completed
      asyncjobs remove --name 'bench-*' -H web[01-04]
    """
    from ._jobs import remove as body

    run_jobs("remove", body, ssh, job_ids, force=force, name=name, state=state, table=False,
             pick={"state": state, "name": name})  # fmt: skip


@cli.command()
@connection_options
@common
@click.argument("host", metavar="HOST")
def enter(host: str, **ssh: Any) -> None:
    """An interactive shell on HOST (Enter-PSSession); 'exit' returns.

    HOST is [user@]host[:port] or a group of one host; the exit status is the shell's.

    \b
      asyncjobs enter web01
      asyncjobs enter ops@db1:2222 -o StrictHostKeyChecking=accept-new
    """
    from ._enter import enter as body
    from ._groups import LazyGroups
    from ._hosts import fold, parse_hosts

    try:
        named = parse_hosts(host, LazyGroups())
    except HostSyntaxError as exc:
        fail("enter", exc)
        return
    if len(named) != 1:  # HOST is the argument here, not -H: say so, and what to do instead
        fail(
            "enter",
            HostSyntaxError(
                f"enter takes one host; {host!r} names {len(named)} ({fold(named)}): pick one, "
                f"or run a command on each with asyncjobs invoke -H {host!r} -- CMD"
            ),
        )
        return

    async def shell(screen: Any, result: Any, where: Any) -> None:
        await body(screen, result, where.target, dict(where.ssh_options))

    run_on("enter", shell, host, ssh)


# copy and gather (help with examples, options, bodies): _copy
cli.add_command(copy_command, "copy")
cli.add_command(gather_command, "gather")


@cli.group()
def session() -> None:
    """Sessions of a job host: list, connect, disconnect, remove (*-PSSession).

    \b
      asyncjobs session list
      asyncjobs session connect nightly -H build1
    """


@session.command("list")
@host_option
@click.option(
    "--connections", is_flag=True, help="The SSH connections your job host holds (--persist)."
)
@ssh_options
@common
def session_list(host: str | None, connections: bool, **ssh: Any) -> None:
    """List the sessions of the job host (Get-PSSession).

    \b
      asyncjobs session list
      asyncjobs session list -H build1 --json
      asyncjobs session list --connections   # what invoke --persist keeps open
    """
    if connections:
        if host:
            raise click.BadParameter(
                "held connections live in your local job host: drop -H", param_hint="'-H'"
            )
        from ._warm import list_connections

        run("session list", list_connections)
        return
    from ._jobs import session_list as body

    run_on("session list", body, host, ssh)


@session.command("connect")
@host_option
@ssh_options
@common
@click.argument("name", metavar="NAME")
def session_connect(name: str, host: str | None, **ssh: Any) -> None:
    """Attach to session NAME and show it with its jobs (it stays on the host).

    \b
      asyncjobs session connect cli
      asyncjobs session connect nightly -H build1
    """
    from ._jobs import session_connect as body

    run_on("session connect", body, host, ssh, name)


@session.command("disconnect")
@host_option
@ssh_options
@common
@click.argument("name", metavar="NAME")
def session_disconnect(name: str, host: str | None, **ssh: Any) -> None:
    """Leave session NAME disconnected, its jobs running.

    \b
      asyncjobs session disconnect nightly
      asyncjobs session disconnect nightly -H build1
    """
    from ._jobs import session_disconnect as body

    run_on("session disconnect", body, host, ssh, name)


@session.command("remove")
@host_option
@ssh_options
@common
@click.argument("name", metavar="NAME")
def session_remove(name: str, host: str | None, **ssh: Any) -> None:
    """Close session NAME, its running jobs stopped (Remove-PSSession).

    Its jobs stay on the job host (get, receive and remove them); an unknown NAME is an
    error that lists the sessions. Prints nothing.

    \b
      asyncjobs session remove nightly
      asyncjobs session remove nightly -H build1
    """
    from ._jobs import session_remove as body

    run_on("session remove", body, host, ssh, name)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse and run; click's own errors become one line too."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args, prog_name="asyncjobs", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        return 2
    except click.ClickException as exc:
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "asyncjobs"  # type: ignore[attr-defined]
        say(f"{exc.format_message()} (see '{command} --help')")
        return exc.exit_code
    except click.Abort:
        say("interrupted")
        return 130
    except Exception as exc:  # a bug of ours: still one line, unless --debug
        if "--debug" in args:
            raise
        say(describe(exc, str(exc)))
        return 1
    return code if isinstance(code, int) else 0
