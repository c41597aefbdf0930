"""A job here that mirrors a job on a host's job host: a fan-out's child on a named session.

The command runs on the job host (and goes on there while the link is down); this job copies
its records here, page by page, from the last seq it holds. A lost link makes the job
DISCONNECTED; the session is reconnected with backoff and the job resumes RUNNING from that same
seq: nothing lost, nothing twice. It reports through ``Run``, as every runner does.
"""

from __future__ import annotations

import time
from typing import Final

import anyio

from .._core.errors import CommandFailed, ConnectionFailed
from .._core.runner import Run
from .._core.state import JobState
from .session import Session

#: How often a DISCONNECTED child tries to reach its host again (seconds, doubling).
_RECONNECT_FIRST: Final = 0.2
_RECONNECT_MAX: Final = 5.0
#: A page of the mirror: at most this many records, long-polling this long for a first one.
_PAGE: Final = 10_000
_POLL: Final = 0.5


async def run_hosted(
    run: Run,
    session: Session,
    command: str,
    *,
    timeout: float | None,
    input: bytes | None = None,
) -> None:
    """The body of a child on a named session: start the command on the host's job host,
    then copy its records here from the last seq held (see the module docstring)."""
    job = run.job
    host_id = (await session.jobs.start_command(command, input=input)).id
    run.started()
    seq = 0
    stop_sent = False
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        generation = session.generation
        try:
            if (job.stop_requested or _past(deadline)) and not stop_sent:
                await session.jobs.stop(host_id)
                stop_sent = True
            page = await session.jobs.read_page(host_id, seq, limit=_PAGE, wait=_POLL)
        except ConnectionFailed:
            if job.state is not JobState.DISCONNECTED:
                run.disconnected()
            await _reconnect(run, session, generation)
            run.reconnected()
            continue
        for record in page.records:  # waits only for room in a full block buffer
            await run.append(record.stream, record.value)
        seq = page.next_seq
        info = page.job
        if info.state.is_finished and seq >= info.next_seq:
            job.exit_status = info.exit_status
            if info.state is JobState.COMPLETED:
                run.completed()
            elif info.state is JobState.STOPPED and _past(deadline) and not job.stop_requested:
                run.failed(
                    CommandFailed(f"{session.where}: {command!r} timed out after {timeout} s")
                )
            elif info.state is JobState.STOPPED:
                run.stopped()
            else:
                reason = info.reason or f"{command!r} failed on the job host"
                run.failed(
                    CommandFailed(f"{session.where}: {reason}", exit_status=info.exit_status)
                )
            return


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


async def _reconnect(run: Run, session: Session, generation: int) -> None:
    """Try to reach the host again until it works (or the job is stopped)."""
    delay = _RECONNECT_FIRST
    while True:
        try:
            await session.reconnect(seen=generation)
        except ConnectionFailed:
            if run.stop_requested:
                raise
        else:
            return
        await anyio.sleep(delay)
        delay = min(delay * 2, _RECONNECT_MAX)
