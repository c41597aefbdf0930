"""The one shape every runner has: wait for a slot, report running, do the work, always finish.

A runner turns the outside world into appends and events, nothing else. Whatever happens to it
(an exception, a cancellation with its manager) the job ends in a finished state: failure is a
state, never a job left RUNNING because its runner died.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskStatus

from .job import Job

#: The work of a runner; it calls ``started()`` once the job really runs.
Body = Callable[[Callable[[], None]], Awaitable[None]]


async def run_in_slot(
    job: Job,
    limiter: anyio.CapacityLimiter,
    body: Body,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``body`` for ``job`` once ``limiter`` has a slot for it.

    While no slot is free the job waits in ``NOT_STARTED`` and ``start_*`` has already returned;
    ``stop()`` in that time finishes it as ``STOPPED`` without ever running it.
    """
    signalled = False
    try:
        limiter.acquire_on_behalf_of_nowait(job)
    except anyio.WouldBlock:
        signalled = True
        task_status.started()
        if not await _wait_for_slot(job, limiter):
            return

    def started() -> None:
        nonlocal signalled
        job._mark_running()
        if not signalled:
            signalled = True
            task_status.started()

    try:
        if job.stop_requested:  # stopped in the instant between slot and start
            job._mark_stopped()
            return
        job._runner_active = True
        await body(started)
    except BaseException as exc:
        job._finish_after_error(exc)
        if isinstance(exc, Exception):
            return  # recorded as the job's failure: it is the job's error, not the manager's
        raise
    finally:
        limiter.release_on_behalf_of(job)
        if not job.state.is_finished:  # a body that returned without reporting how it ended
            job._fail(RuntimeError(f"the runner of {job._label()} ended without a result"))
        if not signalled:  # start_* returns the job, finished as it is (e.g. FAILED at spawn)
            task_status.started()


async def _wait_for_slot(job: Job, limiter: anyio.CapacityLimiter) -> bool:
    """Wait for a slot or for ``stop()``; True with the slot held, False if stopped first."""
    acquired = False
    with anyio.CancelScope() as scope:
        # stop() cancels the wait through a state listener: no watcher task per queued job.
        def on_change(changed: Job) -> None:
            if changed.stop_requested or changed.state.is_finished:
                scope.cancel()

        job._listeners.append(on_change)
        try:
            if not job.stop_requested:
                await limiter.acquire_on_behalf_of(job)
                acquired = True
        finally:
            job._listeners.remove(on_change)
    if acquired and job.stop_requested:
        limiter.release_on_behalf_of(job)
        acquired = False
    if not acquired and not job.state.is_finished:
        job._mark_stopped()
    return acquired
