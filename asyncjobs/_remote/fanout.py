"""The fan-out of ``JobManager.invoke``: a parent job with one child per target.

Each child connects (a host string: a temporary connection, retried with backoff on
connection-level failures) or uses a ``Session`` (a named one mirrors a job on the host's job
host, ``mirror.run_hosted``), then runs the command on a channel (``_ssh.runner.run_remote``),
all under one throttle. The failure policy stops the rest once it says so. The manager reaches
this module through one lazy import and hands it a ``JobTable``, so it never imports the
manager back (nor does the manager import SSH for local programs).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import asyncssh
import attrs

from .._core import checks
from .._core.errors import ConnectionFailed, JobArgumentError, JobStopped
from .._core.job import Job
from .._core.jsonlines import check_output
from .._core.lines import check_lines
from .._core.models import Buffer
from .._core.runner import Body, Run, run_in_slot
from .._core.state import JobState
from .._core.table import (
    FailurePolicy,
    JobTable,
    SessionTarget,
    explain_stop,
    fail_as,
    watch_first,
)
from .._ssh.become import Become, make_become
from .._ssh.config import check_files
from .._ssh.runner import RemoteTimings, remote_input, run_remote, shell_command
from .._ssh.session import ConnectTimings, SSHSession, open_connection, require_asyncio
from .._ssh.targets import Target
from .clock import check_before
from .mirror import run_hosted
from .pool import DEFAULT_PERSIST, ConnectionPool
from .session import Session


def to_jsonl(job: Job) -> str:
    """The timings of a fan-out's children (or of one remote job) as JSON lines, with
    ``clock`` and ``host_info`` when ``invoke(clock=True, probe=True)`` measured them."""
    rows = []
    for child in job.children or (job,):
        timings = child.timings
        if isinstance(timings, RemoteTimings):
            row = {"job_id": child.id, "state": child.state.value, "exit_status": child.exit_status}
            found = {"clock": child.clock, "host_info": child.host_info}
            harness = {k: v.to_dict() for k, v in found.items() if v is not None}
            rows.append(json.dumps(row | timings.to_dict() | harness))
    return "\n".join(rows) + ("\n" if rows else "")


def _policy(value: object) -> FailurePolicy:
    if value in ("continue", "fail_fast"):
        return value
    if isinstance(value, float | int) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise JobArgumentError(
        f"on_failure must be 'continue', 'fail_fast' or a failure fraction in [0, 1), got {value!r}"
    )


def _targets(targets: object) -> list[Target | Session]:
    """``invoke``'s targets: one or a list of host strings and ``Session``s."""
    if isinstance(targets, str | Session):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets:
        raise JobArgumentError("invoke needs at least one target (a host string or a Session)")
    return [_target(t) for t in targets]


def _target(value: object) -> Target | Session:
    if isinstance(value, Session):
        return value
    if isinstance(value, str):
        return Target.parse(value)
    raise JobArgumentError(f"a target must be a host string or a Session, got {value!r}")


async def start_invoke(
    table: JobTable,
    targets: Sequence[str | SessionTarget] | str | SessionTarget,
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
    max_startups: int | None = None,
    idle_timeout: float | None = None,
    become: object = None,
    become_password: object = None,
    pool: ConnectionPool | None = None,
    persist: float = DEFAULT_PERSIST,
    output: object = "text",
    clock: object = False,
    probe: object = False,
) -> Job:
    """Make the parent and one child per target, and schedule every child under the throttle.

    ``max_startups`` caps the handshakes in flight over all targets (beside the per-destination
    limit of ``_ssh.handshakes``); ``idle_timeout`` fails a host whose command sent nothing for
    that long (checked by ``checks.timeout``, as ``timeout`` is); ``become`` runs the command
    through sudo (``_ssh.become``), with ``become_password`` for its prompt."""
    require_asyncio("invoke")
    tg = table.task_group()
    parsed = _targets(targets)
    if (
        not isinstance(throttle_limit, int)
        or isinstance(throttle_limit, bool)
        or throttle_limit < 1
    ):
        raise JobArgumentError(f"throttle_limit must be an int >= 1, got {throttle_limit!r}")
    if not isinstance(retries, int) or retries < 0:
        raise JobArgumentError(f"retries must be an int >= 0, got {retries!r}")
    policy = _policy(on_failure)
    startups = _startups(max_startups)
    idle_timeout = checks.timeout(idle_timeout, "idle_timeout")
    if idle_timeout == 0:
        raise JobArgumentError("idle_timeout must be a number of seconds > 0 or None, got 0")
    if idle_timeout is not None and any(isinstance(t, Session) and t.name for t in parsed):
        raise JobArgumentError(
            "idle_timeout= is not available on a named session (its job host runs the "
            "command); use timeout=, or an unnamed session (connect(host)) or a host string"
        )
    sudo = make_become(become, become_password)
    if sudo is not None and any(isinstance(t, Session) and t.name for t in parsed):
        raise JobArgumentError(
            "become= is not available on a named session (its job host runs the command, and "
            "would have to hold the password); use an unnamed session (connect(host)) or a "
            "host string"
        )
    check_files(ssh_options)  # a missing key or known_hosts file: one error, nothing connects
    lines = check_lines(lines)
    if not lines and any(isinstance(t, Session) and t.name is not None for t in parsed):
        raise JobArgumentError(
            "lines=False is not available on a named session: its job host keeps output as "
            "lines; use an unnamed session (connect(host)) or a host string for raw bytes"
        )
    harness = _harness(output, clock, probe, lines, parsed)
    text = shell_command(command)
    data = remote_input(input)
    children = [table.new_job(None, "RemoteJob", text, buffer, location=t.location) for t in parsed]
    parent = table.add_parent(name, "RemoteJob", text, children)
    throttle = anyio.CapacityLimiter(throttle_limit)
    watch = _PolicyWatch(parent, policy, tg.start_soon)
    child = _Child(
        text, timeout, stop_grace, retries, max_channels, lines, ssh_options, data,
        startups, idle_timeout, sudo, pool, persist, *harness,
    )  # fmt: skip
    for job, target in zip(children, parsed, strict=True):
        watch_first(job, watch.child_changed)  # a stopped child's reason, before it is seen
        tg.start_soon(run_in_slot, job, throttle, child.body(target))
    return parent


def _harness(
    output: object, clock: object, probe: object, lines: bool, parsed: list[Target | Session]
) -> tuple[bool, bool, bool]:
    """``output="json"``, ``clock=`` and ``probe=`` checked: (json, clock, probe)."""
    json_output = check_output(output, lines=lines) == "json"
    for flag, value in (("clock", clock), ("probe", probe)):
        if not isinstance(value, bool):
            raise JobArgumentError(f"{flag} must be True or False, got {value!r}")
    if json_output and any(isinstance(t, Session) and t.name for t in parsed):
        raise JobArgumentError(
            "output='json' is not available on a named session (its job host keeps the "
            "output as lines); use an unnamed session (connect(host)) or a host string"
        )
    return json_output, clock is True, probe is True


def _startups(value: object) -> anyio.CapacityLimiter | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobArgumentError(
            f"max_startups must be an int >= 1 (handshakes in flight over all hosts) or None, "
            f"got {value!r}"
        )
    return anyio.CapacityLimiter(value)


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
            explain_stop(child, JobStopped(self.why))
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
        fail_as(self.parent, self.first)  # the parent fails as its first failure did
        self.why = f"stopped because {child.location} failed ({how})"
        for other in self.parent.children:
            if not other.state.is_finished:
                self.stopping.add(id(other))
                self.start_soon(other.stop)


@attrs.frozen
class _Child:
    """What every child of one fan-out runs, and how (its body per target: ``body``)."""

    command: str
    timeout: float | None
    stop_grace: float
    retries: int
    max_channels: int
    lines: bool
    options: dict[str, Any]
    input: bytes | None
    startups: anyio.CapacityLimiter | None = None
    idle_timeout: float | None = None
    become: Become | None = None  # its password is not in the repr
    #: Held connections (``pool``): host strings lease one, kept ``persist`` s after use.
    pool: ConnectionPool | None = None
    persist: float = DEFAULT_PERSIST
    json: bool = False  # output="json": stdout lines parsed as JSON (_core.jsonlines)
    clock: bool = False  # measure the host's clock first (clock.py)
    probe: bool = False  # probe the host's metadata first (probe.py)

    def body(self, target: Target | Session) -> Body:
        async def body(run: Run) -> None:
            if isinstance(target, Session) and not await self._check(run, target):
                return
            if isinstance(target, Session) and target.name is not None:
                # A named session: the command runs on the host's job host, and this child
                # mirrors its records, so a dropped link means DISCONNECTED, not lost.
                await run_hosted(run, target, self.command, timeout=self.timeout, input=self.input)
            elif isinstance(target, Session):
                await self._run(run, target)
            else:
                await self._connect_and_run(run, target)

        return body

    async def _check(self, run: Run, session: SSHSession) -> bool:
        """``clock=`` / ``probe=``: one channel on the open connection before the command
        (``clock.check_before``); False if the host failed meanwhile."""
        if not (self.clock or self.probe):
            return True
        return await check_before(run, session, probe=self.probe, clock=self.clock)

    async def _run(
        self,
        run: Run,
        session: SSHSession,
        timings: ConnectTimings | None = None,
        attempts: int = 1,
    ) -> None:
        await run_remote(
            run, session, self.command, timeout=self.timeout, stop_grace=self.stop_grace,
            connect=timings, attempts=attempts, lines=self.lines, input=self.input,
            idle_timeout=self.idle_timeout, become=self.become, json=self.json,
        )  # fmt: skip

    async def _connect_and_run(self, run: Run, target: Target) -> None:
        """A host string: a temporary connection, closed when the child is finished; or,
        with a ``pool``, a held one (made if none is), left open for the next invoke."""
        attempts = [0]

        async def connect(
            target: Target, options: dict[str, Any]
        ) -> tuple[asyncssh.SSHClientConnection, ConnectTimings]:
            return await _connect(target, options, self.retries, run, attempts, self.startups)

        async with contextlib.AsyncExitStack() as stack:
            try:
                if self.pool is not None:
                    lease = self.pool.lease(
                        target, self.options, persist=self.persist, connect=connect
                    )
                    session, timings, _ = await stack.enter_async_context(lease)
                else:
                    conn, timings = await connect(target, self.options)
                    session = await stack.enter_async_context(
                        SSHSession(
                            conn,
                            target,
                            max_channels=self.max_channels,
                            timings=timings,
                            options=self.options,
                        )
                    )
            except ConnectionFailed as exc:
                run.job.timings = RemoteTimings(
                    run.job.location, None, None, None, None, None, 0, 0, attempts[0]
                )
                await run.append("error", exc)
                # The host's own failure, even if a stop (a fan-out's fail-fast) came
                # meanwhile: connecting is never interrupted, so the stop did not cause it.
                run.failed(exc)
                return
            if await self._check(run, session):
                await self._run(run, session, timings, attempts[0])


async def _connect(
    target: Target,
    options: dict[str, Any],
    retries: int,
    run: Run,
    attempts: list[int],
    startups: anyio.CapacityLimiter | None,
) -> tuple[asyncssh.SSHClientConnection, ConnectTimings]:
    """Connect, retrying connection-level failures (never auth or host key) with backoff."""
    delay = 0.2
    while True:
        attempts[0] += 1
        try:
            return await open_connection(target, options, startups=startups)
        except ConnectionFailed as exc:
            if not exc.retryable or attempts[0] > retries or run.stop_requested:
                raise
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)
