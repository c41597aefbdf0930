"""Remote command jobs over SSH: one runner per channel, and the fan-out of ``invoke``.

The runner is the command runner's loop over an SSH channel: stdout lines become output items,
stderr lines error records, each awaited append is the backpressure (not reading the channel lets
the SSH window fill and the remote writer block). The remote command runs as the leader of its
own process group (sshd starts every session in a new session); its first output line tells us
the group id, and ``stop()`` kills the group over a second channel, so that it works without a pty
and on servers that ignore SSH signal requests, and reports STOPPED only once the group is gone.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import anyio
import asyncssh
import attrs

from .._core.errors import CommandFailed, ConnectionFailed, JobArgumentError, JobStopped
from .._core.job import Job
from .._core.lines import check_lines
from .._core.log import RecordLog
from .._core.models import Buffer
from .._core.runner import Run, run_in_slot
from .._core.state import Event, JobState
from .._core.table import JobTable
from .._ssh.channel import CommandChannel, CommandProgress
from .._ssh.config import check_files
from .._ssh.session import (
    DEFAULT_MAX_CHANNELS,
    ConnectTimings,
    Session,
    map_ssh_errors,
    open_connection,
    require_asyncio,
)
from .._ssh.targets import Target

_OPEN_RETRIES: Final = 6  # a refused channel is retried with backoff this many times

FailurePolicy = Literal["continue", "fail_fast"] | float


@attrs.frozen
class RemoteTimings:
    """Where a remote child's time went, by phase (seconds), and the bytes it moved.

    ``connect`` and ``auth`` are None on a persistent ``Session``; ``first_byte`` and ``exit``
    count from the moment the channel was open. ``bytes_in`` is the stdout and stderr data
    received, ``bytes_out`` what was sent on the channel (the command line as executed, with
    the wrapper that reports its process group).
    """

    location: str
    connect: float | None
    auth: float | None
    channel_open: float | None
    first_byte: float | None
    exit: float | None
    bytes_in: int
    bytes_out: int
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def to_jsonl(job: Job) -> str:
    """The timings of a fan-out's children (or of one remote job) as JSON lines."""
    rows = []
    for child in job.children or (job,):
        timings = child.timings
        if isinstance(timings, RemoteTimings):
            row = {"job_id": child.id, "state": child.state.value, "exit_status": child.exit_status}
            rows.append(json.dumps(row | timings.to_dict()))
    return "\n".join(rows) + ("\n" if rows else "")


def shell_command(command: str | Sequence[str]) -> str:
    """A command as one string for the remote POSIX shell (an argv list is quoted safely)."""
    if isinstance(command, str):
        if not command.strip():
            raise JobArgumentError("the remote command is empty")
        return command
    if not isinstance(command, Sequence) or not command:
        raise JobArgumentError(
            f"command must be a string or a non-empty argv list, got {command!r}"
        )
    if not all(isinstance(a, str) for a in command):
        raise JobArgumentError(f"every argv element must be a str, got {command!r}")
    return shlex.join(command)


def remote_input(value: object) -> bytes | None:
    """``input=`` of a remote command, checked: ``None`` (stdin gets EOF at once, as from
    ``/dev/null``), ``bytes`` or a ``str`` (sent as UTF-8), then EOF."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JobArgumentError(f"input is not encodable as UTF-8 ({exc}); pass bytes") from None
    raise JobArgumentError(
        f"input must be str or bytes (the remote command's stdin, then EOF), got "
        f"{type(value).__name__}: {value!r:.80}; join lines first ('\\n'.join(lines))"
    )


def _wrapped(command: str) -> str:
    # The shell sshd starts leads its own process group; its pid ($$) is that group's id.
    return f"printf '\\036asyncjobs-pgid %s\\n' \"$$\"; {command}"


#: ``_kill_script``'s exit statuses: killed and gone, still there after KILL, nothing to kill.
_GONE: Final = 0
_ABSENT: Final = 3


def _kill_script(pgid: int, grace: float) -> str:
    """A POSIX sh script: TERM the group, wait up to ``grace``, KILL, wait until it is gone.
    Exits 0 once it is gone, 1 if it survived, 3 if there was no such group to kill (the
    command had ended on its own).

    "Gone" means no member but zombies: a killed grandchild may wait a while for its new
    parent (init) to reap it, and ``kill -0`` still finds zombies. Where ``ps`` can't tell
    states, ``kill -0`` alone decides.
    """
    ticks = max(1, round(grace * 20))
    alive = (
        f"{{ kill -s 0 -- -{pgid} 2>/dev/null && {{ ps -A -o pgid= -o stat= 2>/dev/null"
        f" | awk '$1 == {pgid} && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'"
        f" || ! ps -A -o pgid= -o stat= >/dev/null 2>&1; }}; }}"
    )
    return (
        f"kill -s TERM -- -{pgid} 2>/dev/null || exit {_ABSENT}; i=0; "
        f"while {alive} && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done; "
        f"kill -s KILL -- -{pgid} 2>/dev/null; i=0; "
        f"while {alive} && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
        f"! {alive}"
    )


async def _open_channel(
    session: Session,
    command: str,
    log: RecordLog,
    progress: CommandProgress,
    lines: bool,
    input: bytes | None = None,
) -> CommandChannel:
    """Open a channel running ``command`` into ``log``, ``input`` (then EOF) on its stdin; a
    refused channel is retried with backoff. A host that stops answering fails it after the
    session's ``channel_timeout`` (its ``connect_timeout``, 30 s by default), never hangs it."""
    delay = 0.05
    timeout = session.channel_timeout
    for attempt in range(_OPEN_RETRIES + 1):
        try:
            with map_ssh_errors(session.where, timeout=timeout), anyio.fail_after(timeout):
                _, channel = await session.connection.create_session(
                    lambda: CommandChannel(log, progress, lines, input), command, encoding=None
                )
                assert isinstance(channel, CommandChannel)
                return channel
        except ConnectionFailed as exc:
            if not isinstance(exc.__cause__, asyncssh.ChannelOpenError) or attempt == _OPEN_RETRIES:
                raise
        await anyio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


async def kill_group(session: Session, pgid: int, grace: float) -> bool | None:
    """TERM the remote group, wait ``grace``, KILL, wait until it is gone: True if gone,
    False if it survived, None if there was no such group (it had ended on its own)."""
    async with session._control_channels:
        with map_ssh_errors(session.where):
            result = await session.connection.run(_kill_script(pgid, grace), check=False)
    if result.exit_status == _ABSENT:
        return None
    return result.exit_status == _GONE


async def run_remote(
    job: Job,
    session: Session,
    command: str,
    started: Callable[[], None],
    *,
    timeout: float | None,
    stop_grace: float,
    connect: ConnectTimings | None = None,
    attempts: int = 1,
    lines: bool = True,
    input: bytes | None = None,
) -> None:
    """The body of a remote command job on an open session (see ``_runner.run_in_slot``):
    ``input`` (checked by ``remote_input``) goes to its stdin, then EOF."""
    progress = CommandProgress()
    try:
        await _run(job, session, command, started, progress, timeout, stop_grace, lines, input)
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


async def _run(
    job: Job,
    session: Session,
    command: str,
    started: Callable[[], None],
    progress: CommandProgress,
    timeout: float | None,
    stop_grace: float,
    lines: bool,
    input: bytes | None,
) -> None:
    log = job._log
    assert log is not None
    where = session.where
    t0 = time.perf_counter()
    slots = session._job_channels
    try:
        slots.acquire_nowait()  # no checkpoint when a channel is free: commands are short
    except anyio.WouldBlock:
        await slots.acquire()
    try:
        wrapped = _wrapped(command)
        channel = await _open_channel(session, wrapped, log, progress, lines, input)
        progress.channel_open = time.perf_counter() - t0
        progress.bytes_out += len(wrapped.encode())
        try:
            started()  # a stop() that came while connecting is acted on just below

            # stop() interrupts the drain through a state listener; the kill then runs in this
            # task, while asyncssh's callbacks go on appending: no task or task group per command.
            def on_change(changed: Job) -> None:
                if changed.stop_requested and not progress.killing:
                    progress.killing = True
                    channel.interrupt()

            job._listeners.append(on_change)
            try:
                on_change(job)  # a stop() that came while the channel opened
                with anyio.move_on_after(timeout) as scope:
                    await channel.drain()
            finally:
                job._listeners.remove(on_change)
            timed_out = scope.cancelled_caught
            if progress.killing or timed_out:
                with anyio.CancelScope(shield=True):
                    await _kill(session, progress, channel, stop_grace)
        except BaseException:
            with anyio.CancelScope(shield=True):  # cancelled with its manager: kill, then go
                await _kill(session, progress, channel, stop_grace)
            raise
        progress.exit = time.perf_counter() - channel.t_open
    finally:
        slots.release()
    _finish(job, where, channel, progress, timed_out, timeout)


def _finish(
    job: Job,
    where: str,
    channel: CommandChannel,
    progress: CommandProgress,
    timed_out: bool,
    timeout: float | None,
) -> None:
    status, sig = channel.exit_status, channel.exit_signal
    job.exit_status = status
    # A command that ended on its own before the stop's kill reached it (a fan-out's
    # fail-fast stop racing a host that failed by itself) keeps its own result.
    stopped = job.stop_requested and not (progress.ended_first and (status, sig) != (None, None))
    if stopped and progress.group_gone is False:
        job._fail(
            CommandFailed(
                f"{where}: {job.command!r} was asked to stop, but its process group "
                f"{progress.pgid} survived TERM and KILL; check the host"
            )
        )
    elif stopped:
        job._mark_stopped()
    elif timed_out and not progress.ended_first:
        job._fail(
            CommandFailed(f"{where}: {job.command!r} timed out after {timeout:g} s; it was killed")
        )
    elif sig is not None:
        job._fail(CommandFailed(f"{where}: {job.command!r} was killed by signal SIG{sig}"))
    elif status is None:
        job._fail(
            ConnectionFailed(
                f"{where}: the connection was lost while {job.command!r} ran", host=where
            )
        )
    elif status != 0:
        job._fail(
            CommandFailed(
                f"{where}: {job.command!r} exited with status {status}", exit_status=status
            )
        )
    else:
        job._complete()


async def _kill(
    session: Session, progress: CommandProgress, channel: CommandChannel, grace: float
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
                gone = await kill_group(session, progress.pgid, grace)
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


# -- fan-out --------------------------------------------------------------------------------


def _policy(value: object) -> FailurePolicy:
    if value in ("continue", "fail_fast"):
        return value
    if isinstance(value, float | int) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise JobArgumentError(
        f"on_failure must be 'continue', 'fail_fast' or a failure fraction in [0, 1), got {value!r}"
    )


async def start_invoke(
    table: JobTable,
    targets: Sequence[str | Session] | str | Session,
    command: str | Sequence[str],
    *,
    name: str | None,
    throttle_limit: int,
    on_failure: object,
    retries: int,
    timeout: float | None,
    buffer: Buffer | None,
    stop_grace: float,
    max_channels: int,
    lines: bool,
    ssh_options: dict[str, Any],
    input: object = None,
) -> Job:
    """Make the parent and one child per target, and schedule every child under the throttle."""
    require_asyncio("invoke")
    tg = table.task_group()
    if isinstance(targets, str | Session):
        targets = [targets]
    if not targets:
        raise JobArgumentError("invoke needs at least one target (a host string or a Session)")
    parsed = [t if isinstance(t, Session) else Target.parse(t) for t in targets]
    if (
        not isinstance(throttle_limit, int)
        or isinstance(throttle_limit, bool)
        or throttle_limit < 1
    ):
        raise JobArgumentError(f"throttle_limit must be an int >= 1, got {throttle_limit!r}")
    if not isinstance(retries, int) or retries < 0:
        raise JobArgumentError(f"retries must be an int >= 0, got {retries!r}")
    policy = _policy(on_failure)
    check_files(ssh_options)  # a missing key or known_hosts file: one error, nothing connects
    lines = check_lines(lines)
    if not lines and any(isinstance(t, Session) and t.name is not None for t in parsed):
        raise JobArgumentError(
            "lines=False is not available on a named session: its job host keeps output as "
            "lines; use an unnamed session (connect(host)) or a host string for raw bytes"
        )
    text = shell_command(command)
    data = remote_input(input)
    children = [table.new_job(None, "RemoteJob", text, buffer, location=t.location) for t in parsed]
    parent = table.add_parent(name, "RemoteJob", text, children)
    throttle = anyio.CapacityLimiter(throttle_limit)
    watch = _PolicyWatch(parent, policy, tg.start_soon)
    for child, target in zip(children, parsed, strict=True):
        child._listeners.insert(0, watch.child_changed)  # a stopped child's reason, first
        body = _child_body(
            child, target, text, timeout, stop_grace, retries, max_channels, lines, ssh_options,
            data,
        )  # fmt: skip
        tg.start_soon(run_in_slot, child, throttle, body)
    return parent


@attrs.define
class _PolicyWatch:
    """Stops the rest of a fan-out once the failure policy says so.

    A child that failed on its own stays ``Failed`` with its exit status; only the children
    the policy stopped are ``Stopped``, their reason naming the host whose failure stopped
    them. The parent's ``reason`` and ``exit_status`` are then the first failure's."""

    parent: Job
    policy: FailurePolicy
    start_soon: Callable[..., Any]
    failed: int = 0
    first: Job | None = None  # the first child that failed
    tripped: bool = False
    #: The children the policy asked to stop (by id()), and why.
    stopping: set[int] = attrs.Factory(set)
    why: str = ""

    def child_changed(self, child: Job) -> None:
        if child.state is JobState.STOPPED and id(child) in self.stopping:
            self._explain(child)
            return
        if child.state is not JobState.FAILED:
            return
        self.failed += 1
        if self.first is None:
            self.first = child
        if self.tripped:
            return
        total = len(self.parent.children)
        if self.policy == "fail_fast":
            how = "fail-fast"
        elif isinstance(self.policy, float) and self.failed / total > self.policy:
            how = f"{self.failed} of {total} hosts failed, more than {self.policy:.0%}"
        else:
            return
        self.tripped = True
        first = self.first
        self.parent._reason = first.reason  # the parent fails as its first failure did
        self.parent.exit_status = first.exit_status
        self.why = f"stopped because {child.location} failed ({how})"
        for other in self.parent.children:
            if not other.state.is_finished:
                self.stopping.add(id(other))
                self.start_soon(other.stop)

    def _explain(self, child: Job) -> None:
        """A child the policy stopped: its reason says why (also in its last state change)."""
        reason = JobStopped(self.why)
        child._reason = reason
        last = child._history[-1] if child._history else None
        if last is not None and last.state is JobState.STOPPED and last.reason is None:
            child._history[-1] = attrs.evolve(last, reason=reason)


def _child_body(
    child: Job,
    target: Target | Session,
    command: str,
    timeout: float | None,
    stop_grace: float,
    retries: int,
    max_channels: int,
    lines: bool,
    options: dict[str, Any],
    input: bytes | None = None,
) -> Callable[[Run], Any]:
    async def body(run: Run) -> None:
        log = child._log
        assert log is not None
        if isinstance(target, Session) and target.name is not None:
            # A named session: the command runs on the host's job host, and this child
            # mirrors its records, so a dropped link means DISCONNECTED, not lost.
            await run_hosted(child, target, command, run.started, timeout=timeout, input=input)
            return
        if isinstance(target, Session):
            await run_remote(
                child,
                target,
                command,
                run.started,
                timeout=timeout,
                stop_grace=stop_grace,
                lines=lines,
                input=input,
            )
            return
        attempts = [0]
        try:
            conn, timings = await _connect(target, options, retries, child, attempts)
        except ConnectionFailed as exc:
            child.timings = RemoteTimings(
                child.location, None, None, None, None, None, 0, 0, attempts[0]
            )
            await log.append("error", exc)
            # The host's own failure, even if a stop (a fan-out's fail-fast) came meanwhile:
            # connecting is never interrupted, so the stop did not cause it.
            child._fail(exc)
            return
        session = Session(
            conn, target, name=None, max_channels=max_channels, timings=timings, options=options
        )
        async with session:
            await run_remote(
                child,
                session,
                command,
                run.started,
                timeout=timeout,
                stop_grace=stop_grace,
                connect=timings,
                attempts=attempts[0],
                lines=lines,
                input=input,
            )

    return body


async def _connect(
    target: Target, options: dict[str, Any], retries: int, child: Job, attempts: list[int]
) -> tuple[asyncssh.SSHClientConnection, ConnectTimings]:
    """Connect, retrying connection-level failures (never auth or host key) with backoff."""
    delay = 0.2
    while True:
        attempts[0] += 1
        try:
            return await open_connection(target, options)
        except ConnectionFailed as exc:
            if not exc.retryable or attempts[0] > retries or child.stop_requested:
                raise
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)


#: How often a DISCONNECTED child tries to reach its host again (seconds, doubling).
_RECONNECT_FIRST: Final = 0.2
_RECONNECT_MAX: Final = 5.0


async def run_hosted(
    job: Job,
    session: Session,
    command: str,
    started: Callable[[], None],
    *,
    timeout: float | None,
    input: bytes | None = None,
) -> None:
    """The body of a child on a named session: start the command on the host's job host,
    then copy its records here from the last seq held. A lost link makes the job
    DISCONNECTED; the session is reconnected with backoff and the job resumes RUNNING from
    that same seq: nothing lost, nothing twice."""
    log = job._log
    assert log is not None
    host_id = (await session.jobs.start_command(command, input=input)).id
    started()
    seq = 0
    stop_sent = False
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        generation = session.generation
        try:
            if (job.stop_requested or _past(deadline)) and not stop_sent:
                await session.jobs.stop(host_id)
                stop_sent = True
            batch = await session.jobs._c.request(
                "read", job=host_id, from_seq=seq, limit=10_000, wait=0.5
            )
        except ConnectionFailed:
            if job.state is not JobState.DISCONNECTED:
                job._apply(Event.DISCONNECT)
            await _reconnect(job, session, generation)
            job._apply(Event.RECONNECT)
            continue
        for record in batch.records:
            try:  # no coroutine per record unless a block buffer is full
                log.append_nowait(record.stream, record.value)
            except anyio.WouldBlock:
                await log.append(record.stream, record.value)
        seq = batch.next_seq
        info = batch.job
        if info.state.is_finished and seq >= info.next_seq:
            job.exit_status = info.exit_status
            if info.state is JobState.COMPLETED:
                job._complete()
            elif info.state is JobState.STOPPED and _past(deadline) and not job.stop_requested:
                job._fail(
                    CommandFailed(f"{session.where}: {command!r} timed out after {timeout} s")
                )
            elif info.state is JobState.STOPPED:
                job._mark_stopped()
            else:
                reason = info.reason or f"{command!r} failed on the job host"
                job._fail(CommandFailed(f"{session.where}: {reason}", exit_status=info.exit_status))
            return


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


async def _reconnect(job: Job, session: Session, generation: int) -> None:
    """Try to reach the host again until it works (or the job is stopped)."""
    delay = _RECONNECT_FIRST
    while True:
        try:
            await session.reconnect(seen=generation)
        except ConnectionFailed:
            if job.stop_requested:
                raise
        else:
            return
        await anyio.sleep(delay)
        delay = min(delay * 2, _RECONNECT_MAX)


async def invoke_on_session(
    session: Session,
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
    log = RecordLog(job_id=0, location=session.location, buffer=Buffer())
    job = Job._leaf(
        id=0, name="invoke", kind="RemoteJob", command=text, location=session.location, log=log
    )

    async def body(run: Run) -> None:
        await run_remote(
            job,
            session,
            text,
            run.started,
            timeout=timeout,
            stop_grace=5.0,
            lines=lines,
            input=data,
        )

    await run_in_slot(job, anyio.CapacityLimiter(1), body)  # always returns it finished
    try:
        return job._outcome()
    finally:
        log.release()


__all__ = ["DEFAULT_MAX_CHANNELS", "RemoteTimings", "start_invoke", "to_jsonl"]
