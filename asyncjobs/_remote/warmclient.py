"""The controller's side of a warm invoke: the fan-out runs on the local job host, on the SSH
connections it holds (``warm``), and its parent and children here mirror it.

``WarmEngine`` is an invoke engine: ``JobManager.invoke(..., engine=WarmEngine(host_jobs))``
makes the same parent and children as a fan-out run here, with the same states, records,
exit statuses, reasons and timings; only the connections are the job host's. One task reads
the run's events in batches (``warm_events``, long-polled) and hands them to the children's
runners; a record waits for room in a full ``block`` buffer, and meanwhile nothing more is
read, so the job host's run waits, then its hosts (the same backpressure as here). Stopping
any child stops the run (a warm invoke is stopped as a whole, as Ctrl-C stops it); the
failure policy is the job host's (``fail_fast``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from .._core.errors import (
    AsyncJobsError,
    CommandFailed,
    ConnectionFailed,
    HostKeyError,
    JobArgumentError,
    JobStopped,
    RemoteError,
)
from .._core.job import Job
from .._core.models import Buffer
from .._core.runner import Run, run_in_slot
from .._core.table import JobTable, explain_stop, fail_as
from .._host.client import HostJobs
from .._host.protocol import ErrorInfo, error_from_wire
from .._ssh.commandline import RemoteTimings, remote_input, shell_command

#: ``start_invoke`` arguments a warm run may be given and does without (the host's defaults).
_CARRIED: Final = frozenset({"stop_grace", "max_channels", "persist"})

#: How long one ``warm_events`` request waits for something to happen.
_LONG_POLL: Final = 5.0


#: The errors of a child that a warm run reports by name, made ours again here: the local job
#: host is this user's own (a remote peer's names are not trusted so far: ``protocol.ERRORS``).
_CHILD_ERRORS: Final[dict[str, type[AsyncJobsError]]] = {
    cls.__name__: cls for cls in (ConnectionFailed, HostKeyError, CommandFailed, RemoteError)
}


def _error(data: dict[str, Any]) -> AsyncJobsError:
    name, message = str(data.get("error")), str(data.get("message"))
    cls = _CHILD_ERRORS.get(name)
    return cls(message) if cls is not None else error_from_wire(ErrorInfo(name, message))


def _value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"error", "message"}:
        return _error(value)
    return value


@attrs.define(eq=False)
class _Mirror:
    """One child here: the events the driver read for it, which its own runner applies
    (``_body``), so that a child whose buffer is full holds back only itself; and how it
    ended there."""

    job: Job
    pending: deque[list[Any]] = attrs.Factory(deque)
    wake: anyio.Event = attrs.Factory(anyio.Event)
    end: list[Any] | None = None
    error: AsyncJobsError | None = None  # the link to the job host failed mid-run

    def put(self, event: list[Any]) -> None:
        self.pending.append(event)
        self.wake.set()


@attrs.define
class WarmEngine:
    """Run ``invoke``'s fan-out on the local job host's held connections (see the module
    docstring). ``persist``: seconds the host keeps each connection after its last use."""

    host: HostJobs
    persist: float = 60.0

    async def start_invoke(
        self,
        table: JobTable,
        targets: Sequence[Any] | str,
        command: str | Sequence[str],
        *,
        name: str | None,
        throttle_limit: int,
        on_failure: object,
        retries: int,
        timeout: float | None,
        buffer: Buffer | None,
        lines: bool,
        ssh_options: dict[str, Any],
        input: object = None,
        max_startups: int | None = None,
        idle_timeout: float | None = None,
        **rest: Any,
    ) -> Job:
        """``fanout.start_invoke``'s contract, run on the job host."""
        if isinstance(targets, str):
            targets = [targets]
        if not all(isinstance(t, str) for t in targets) or not targets:
            raise JobArgumentError("a warm invoke takes host strings (no Session objects)")
        if lines or on_failure not in ("continue", "fail_fast"):
            raise JobArgumentError("a warm invoke passes raw output (lines=False) and takes "
                                   "on_failure 'continue' or 'fail_fast'")  # fmt: skip
        # What the job host's run does not carry (sudo's password stays here; the harness
        # options measure from the controller): refused, never silently dropped.
        for key, value in rest.items():
            if key not in _CARRIED and value not in (None, False, "text"):
                raise JobArgumentError(
                    f"{key}= is not available on a warm invoke (the local job host's held "
                    "connections); leave engine= out for it"
                )
        text = shell_command(command)
        host_buffer = buffer.max_bytes if buffer is not None and buffer.max_bytes else 2 << 20
        started = await self.host.warm_invoke(
            targets=list(targets), command=text, options=ssh_options, throttle=throttle_limit,
            timeout=timeout, idle_timeout=idle_timeout, retries=retries,
            max_startups=max_startups, input=remote_input(input),
            fail_fast=on_failure == "fail_fast", persist=self.persist, host_buffer=host_buffer,
        )  # fmt: skip
        run_id, locations = int(started["run"]), [str(x) for x in started["locations"]]
        children = [
            table.new_job(None, "RemoteJob", text, buffer, location=loc) for loc in locations
        ]
        parent = table.add_parent(name, "RemoteJob", text, children)
        mirrors = [_Mirror(c) for c in children]
        tg = table.task_group()
        slots = anyio.CapacityLimiter(max(1, len(children)))  # the host's throttle applies
        stopping = anyio.Event()
        for mirror in mirrors:
            tg.start_soon(run_in_slot, mirror.job, slots, _body(mirror, stopping))
        tg.start_soon(self._drive, run_id, parent, mirrors, stopping)
        return parent

    async def _drive(
        self, run_id: int, parent: Job, mirrors: list[_Mirror], stopping: anyio.Event
    ) -> None:
        """Read the run's events until it is done; a stop asked for here is sent there."""

        async def stop_when_asked() -> None:  # beside the long poll (requests are pipelined)
            await stopping.wait()
            with contextlib.suppress(AsyncJobsError):  # done meanwhile: nothing to stop
                await self.host.warm_stop(run_id)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_asked)
                await self._events(run_id, parent, mirrors)
                tg.cancel_scope.cancel()
        except AsyncJobsError as exc:  # the job host went away mid-run: every child fails
            _abandon(mirrors, exc)
        finally:  # cancelled (the manager is leaving): the children end here too
            _abandon(mirrors, AsyncJobsError("the local job host's warm invoke was abandoned"))

    async def _events(self, run_id: int, parent: Job, mirrors: list[_Mirror]) -> None:
        while True:
            # A child still applying what came before (its buffer is full) gets nothing more
            # sent: its host is held there, the others go on.
            await anyio.lowlevel.checkpoint()  # the runners take what fits first
            for m in mirrors:
                if m.pending and m.job.state.is_finished:  # ended here (stopped before it
                    m.pending.clear()  # ran): what comes for it has nowhere to go
            paused = [i for i, m in enumerate(mirrors) if m.pending]
            found = await self.host.warm_events(run_id, wait=_LONG_POLL, paused=paused)
            for event in found["events"]:
                if event[1] == "notice":  # logged here, where this user sees it
                    logging.getLogger("asyncjobs").log(int(event[2]), str(event[3]))
                elif not mirrors[event[0]].job.state.is_finished:
                    mirrors[event[0]].put(event)
            if found["done"]:
                for mirror in mirrors:
                    await mirror.job.wait()
                _finish_parent(parent, mirrors, found.get("parent"))
                return


def _abandon(mirrors: list[_Mirror], error: AsyncJobsError) -> None:
    """The children that have not ended yet end now: failed with ``error``, or stopped if a
    stop was asked for (the job host stops the run when this connection ends)."""
    for mirror in mirrors:
        if mirror.end is None and not any(e[1] == "end" for e in mirror.pending):
            state = "Stopped" if mirror.job.stop_requested else "Failed"
            mirror.error = error
            mirror.put([0, "end", state, None, None, None])


def _body(mirror: _Mirror, stopping: anyio.Event) -> Any:
    """A child's runner: apply its events in order (a record waits for room in a full
    ``block`` buffer, as a channel's would) until its end, then end as it ended there."""

    async def body(run: Run) -> None:
        with run.on_stop(stopping.set):
            while mirror.end is None:
                if not mirror.pending:
                    mirror.wake = anyio.Event()
                    await mirror.wake.wait()
                    continue
                event = mirror.pending[0]
                if event[1] == "started":
                    run.started()
                elif event[1] == "record":
                    await run.append(event[2], _value(event[3]))
                elif event[1] == "end":
                    mirror.end = event
                mirror.pending.popleft()
        _end(run, mirror)

    return body


def _end(run: Run, mirror: _Mirror) -> None:
    """The child ends here as it ended on the job host."""
    assert mirror.end is not None
    _, _, state, exit_status, reason, timings = mirror.end
    job = run.job
    if job.state.is_finished:
        return
    job.exit_status = exit_status
    if timings:
        job.timings = RemoteTimings(**timings)
    error = mirror.error
    if state == "Completed":
        run.completed()
    elif state == "Stopped":
        run.stopped()
        if reason is not None:  # why (a fail-fast): after the stop, as the policy sets it there
            explain_stop(job, JobStopped(str(reason.get("message"))))
    else:
        run.failed(error if error is not None else _error(reason or {}))


def _finish_parent(parent: Job, mirrors: list[_Mirror], info: list[Any] | None) -> None:
    """A fail-fast run failed there as its first failure: so does the parent here."""
    if info is None:
        return
    state, _, first = info
    if state == "Failed" and first is not None:
        fail_as(parent, mirrors[int(first)].job)
