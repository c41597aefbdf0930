"""Remote command jobs over SSH: the runner of one command on one channel of a session.

The runner is the command runner's loop over an SSH channel: stdout lines become output items,
stderr lines error records, each awaited append is the backpressure (not reading the channel lets
the SSH window fill and the remote writer block). The remote command runs as the leader of its
own process group (sshd starts every session in a new session); its first output line tells us
the group id, and ``stop()`` kills the group over a second channel, so that it works without a pty
and on servers that ignore SSH signal requests, and reports STOPPED only once the group is gone.
It reports through ``Run`` (the runner API), as every runner does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import asyncssh
import attrs

from .._core.errors import CommandFailed, ConnectionFailed
from .._core.jsonlines import JsonLines
from .._core.lines import check_lines
from .._core.log import RecordLog
from .._core.runner import Run, run_alone
from .become import Become, SudoChannel, SudoState, run_as
from .channel import CommandChannel, CommandProgress
from .commandline import RemoteTimings as RemoteTimings
from .commandline import remote_input as remote_input
from .commandline import shell_command as shell_command
from .session import ConnectTimings, SSHSession, map_ssh_errors, require_asyncio

_OPEN_RETRIES: Final = 6  # a refused channel is retried with backoff this many times


def _wrapped(command: str) -> str:
    # The shell sshd starts leads its own process group; its pid ($$) is that group's id.
    return f"printf '\\036asyncjobs-pgid %s\\n' \"$$\"; {command}"


#: ``_kill_script``'s exit statuses: killed and gone, still there after KILL, nothing to kill.
_GONE: Final = 0
_ABSENT: Final = 3


def _kill_script(pgid: int, grace: float, *, others: bool = False) -> str:
    """A POSIX sh script: TERM the group, wait up to ``grace``, KILL, wait until it is gone.
    Exits 0 once it is gone, 1 if it survived, 3 if there was no such group to kill (the
    command had ended on its own).

    "Gone" means no member but zombies: a killed grandchild may wait a while for its new
    parent (init) to reap it, and ``kill -0`` still finds zombies. Where ``ps`` can't tell
    states, ``kill -0`` alone decides.

    ``others``: the group may hold processes of another user (a sudo'ed command, killed by the
    login user because sudo would not kill it): ``kill -0`` fails on those, ``ps`` decides.
    """
    ticks = max(1, round(grace * 20))
    members = (
        f"ps -A -o pgid= -o stat= 2>/dev/null"
        f" | awk '$1 == {pgid} && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'"
    )
    no_ps = "! ps -A -o pgid= -o stat= >/dev/null 2>&1"
    if others:
        alive = f"{{ {members} || {{ {no_ps} && kill -s 0 -- -{pgid} 2>/dev/null; }}; }}"
    else:
        alive = f"{{ kill -s 0 -- -{pgid} 2>/dev/null && {{ {members} || {no_ps}; }}; }}"
    return (
        f"kill -s TERM -- -{pgid} 2>/dev/null || exit {_ABSENT}; i=0; "
        f"while {alive} && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done; "
        f"kill -s KILL -- -{pgid} 2>/dev/null; i=0; "
        f"while {alive} && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
        f"! {alive}"
    )


async def _open_channel(
    session: SSHSession,
    command: str,
    log: RecordLog,
    progress: CommandProgress,
    lines: bool,
    input: bytes | None = None,
    sudo: SudoState | None = None,
    json: bool = False,
) -> CommandChannel:
    """Open a channel running ``command`` into ``log``, ``input`` (then EOF) on its stdin; a
    refused channel is retried with backoff. A host that stops answering fails it after the
    session's ``channel_timeout`` (its ``connect_timeout``, 30 s by default), never hangs it.
    With ``sudo``, a ``SudoChannel`` answers sudo first (see ``become``)."""
    delay = 0.05
    timeout = session.channel_timeout

    def made() -> CommandChannel | SudoChannel:
        parse = JsonLines(session.where) if json else None  # output="json"
        channel = CommandChannel(log, progress, lines, input, parse)
        return channel if sudo is None else sudo.channel(channel)

    for attempt in range(_OPEN_RETRIES + 1):
        try:
            with map_ssh_errors(session.where, timeout=timeout), anyio.fail_after(timeout):
                _, channel = await session.connection.create_session(made, command, encoding=None)
                if isinstance(channel, SudoChannel):
                    return channel.inner
                assert isinstance(channel, CommandChannel)
                return channel
        except ConnectionFailed as exc:
            if not isinstance(exc.__cause__, asyncssh.ChannelOpenError) or attempt == _OPEN_RETRIES:
                raise
        await anyio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


async def kill_group(
    session: SSHSession, pgid: int, grace: float, become: Become | None = None
) -> bool | None:
    """TERM the remote group, wait ``grace``, KILL, wait until it is gone: True if gone,
    False if it survived, None if there was no such group (it had ended on its own).
    ``become``: through sudo as that user (a sudo'ed command is not the login user's to
    kill), as the login user if sudo refuses."""
    async with session.control_channel():
        with map_ssh_errors(session.where):
            status = None
            if become is not None:
                script = _kill_script(pgid, grace)
                status = await run_as(session.connection, script, become, grace + 10)
            if status is None:
                script = _kill_script(pgid, grace, others=become is not None)
                status = (await session.connection.run(script, check=False)).exit_status
    if status == _ABSENT:
        return None
    return status == _GONE


async def run_remote(
    run: Run,
    session: SSHSession,
    command: str,
    *,
    timeout: float | None,
    stop_grace: float,
    connect: ConnectTimings | None = None,
    attempts: int = 1,
    lines: bool = True,
    input: bytes | None = None,
    idle_timeout: float | None = None,
    become: Become | None = None,
    json: bool = False,
) -> None:
    """The body of a remote command job on an open session (see ``run_in_slot``): ``input``
    (checked by ``remote_input``) goes to its stdin, then EOF. ``timeout`` bounds the whole
    command, ``idle_timeout`` the silence: a command that sent nothing for that long fails
    ("no output for S s"), its process group killed. ``become``: through sudo (``become``).
    ``json``: stdout lines parsed as JSON into data records (``_core.jsonlines``).
    The job's ``timings`` are a ``RemoteTimings`` afterwards, however it ended."""
    progress = CommandProgress()
    job = run.job
    limits = _Limits(timeout, idle_timeout)
    sudo = None if become is None else SudoState(become, timeout=session.channel_timeout)
    try:
        await _run(run, session, command, progress, limits, stop_grace, lines, input, sudo, json)
    finally:
        job.timings = RemoteTimings(
            location=job.location,
            connect=connect.connect if connect else None,
            auth=connect.auth if connect else None,
            channel_open=progress.channel_open,
            first_byte=progress.first_byte,
            exit=progress.exit,
            bytes_in=progress.bytes_in,
            bytes_out=progress.bytes_out,
            attempts=attempts,
        )


@attrs.frozen
class _Limits:
    """A command's time limits: in all (``timeout``), and of its silence (``idle``)."""

    timeout: float | None
    idle: float | None


async def _run(
    run: Run,
    session: SSHSession,
    command: str,
    progress: CommandProgress,
    limits: _Limits,
    stop_grace: float,
    lines: bool,
    input: bytes | None,
    sudo: SudoState | None = None,
    json: bool = False,
) -> None:
    where = session.where
    t0 = time.perf_counter()

    def on_stop() -> None:
        progress.killing = True
        channel.interrupt()

    async with session.job_channel():
        wrapped = _wrapped(command if sudo is None else sudo.become.command(command))
        channel = await _open_channel(session, wrapped, run.log, progress, lines, input, sudo, json)
        progress.channel_open = time.perf_counter() - t0
        progress.bytes_out += len(wrapped.encode())
        try:
            run.started()  # a stop() that came while connecting is acted on just below
            # stop() interrupts the drain (on entry too, for a stop that came while the channel
            # opened); the kill then runs in this task, while asyncssh's callbacks go on
            # appending: no task or task group per command.
            with run.on_stop(on_stop), anyio.move_on_after(limits.timeout) as scope:
                await channel.drain(limits.idle)
            timed_out = scope.cancelled_caught
            refused = sudo is not None and sudo.failure is not None  # it asked again, ...
            if progress.killing or timed_out or progress.went_idle or refused:
                with anyio.CancelScope(shield=True):
                    await _kill(session, progress, channel, stop_grace, sudo)
        except BaseException:
            with anyio.CancelScope(shield=True):  # cancelled with its manager: kill, then go
                await _kill(session, progress, channel, stop_grace, sudo)
            raise
        progress.exit = time.perf_counter() - channel.t_open
    _finish(run, where, channel, progress, timed_out, limits, sudo)


def _finish(
    run: Run,
    where: str,
    channel: CommandChannel,
    progress: CommandProgress,
    timed_out: bool,
    limits: _Limits,
    sudo: SudoState | None = None,
) -> None:
    job = run.job
    status, sig = channel.exit_status, channel.exit_signal
    job.exit_status = status
    what = f"{where}: {job.command!r}"
    # A command that ended on its own before the stop's kill reached it (a fan-out's
    # fail-fast stop racing a host that failed by itself) keeps its own result.
    stopped = job.stop_requested and not (progress.ended_first and (status, sig) != (None, None))
    killed = progress.killing or timed_out or progress.went_idle
    because = None if sudo is None else sudo.reason(where, job.location, status, killed=killed)
    if because is not None and not stopped:
        run.failed(CommandFailed(because, exit_status=status))
    elif stopped and progress.group_gone is False:
        run.failed(
            CommandFailed(
                f"{what} was asked to stop, but its process group {progress.pgid} survived "
                "TERM and KILL; check the host"
            )
        )
    elif stopped:
        run.stopped()
    elif timed_out and not progress.ended_first:
        run.failed(CommandFailed(f"{what} timed out after {limits.timeout:g} s; it was killed"))
    elif progress.went_idle and not progress.ended_first:
        run.failed(
            CommandFailed(
                f"{what}: no output for {limits.idle:g} s (idle timeout); its process group "
                "was killed"
            )
        )
    elif sig is not None:
        run.failed(CommandFailed(f"{what} was killed by signal SIG{sig}"))
    elif status is None:
        run.failed(
            ConnectionFailed(
                f"{where}: the connection was lost while {job.command!r} ran", host=where
            )
        )
    elif status != 0:
        run.failed(CommandFailed(f"{what} exited with status {status}", exit_status=status))
    else:
        run.completed()


async def _kill(
    session: SSHSession,
    progress: CommandProgress,
    channel: CommandChannel,
    grace: float,
    sudo: SudoState | None = None,
) -> None:
    """Kill the remote group and make sure the channel is closed; errors are not raised here
    (the connection may be the very thing that died)."""
    ended = channel.exit_status is not None or channel.exit_signal is not None
    with anyio.move_on_after(2.0):
        await progress.pgid_known.wait()
    try:
        if progress.pgid is not None and not session.closed:
            progress.group_gone = False
            with anyio.move_on_after(grace + 15):
                # through sudo once it runs the command (before, the group is the login user's)
                become = sudo.become if sudo is not None and sudo.started else None
                gone = await kill_group(session, progress.pgid, grace, become)
                progress.group_gone = gone is not False
                if gone is None:  # nothing left to kill: it ended by itself; its status is
                    ended = True  # on the way, and worth the wait
                    with anyio.move_on_after(2.0):
                        # asyncssh sets no event for it: look until it is there
                        while channel.exit_status is None and channel.exit_signal is None:  # noqa: ASYNC110
                            await anyio.sleep(0.005)
    except ConnectionFailed:
        progress.group_gone = None  # the link is gone: we cannot know
    finally:
        progress.ended_first = ended
        channel.close()


async def invoke_on_session(
    session: SSHSession,
    command: str | Sequence[str],
    *,
    timeout: float | None,
    lines: bool,
    input: object = None,
) -> list[Any]:
    """``Session.invoke``: one remote command, waited for; its output, or ``JobFailed``."""
    require_asyncio("Session.invoke")
    lines = check_lines(lines)
    text = shell_command(command)
    data = remote_input(input)

    async def body(run: Run) -> None:
        await run_remote(
            run, session, text, timeout=timeout, stop_grace=5.0, lines=lines, input=data
        )

    return await run_alone("invoke", "RemoteJob", text, session.location, body)
