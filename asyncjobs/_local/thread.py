"""Thread jobs: a function, generator or async function run in a worker thread.

The thread runs under the manager's own ``CapacityLimiter`` (never anyio's shared default).
Items reach the job's log through ``from_thread``, so in ``block`` mode a thread's ``emit`` waits
until a consumer makes room. A thread cannot be killed: ``stop()`` sets a flag that
``stop_requested()`` reports, and a generator is closed at its next yield.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, final

import anyio
import anyio.from_thread
import anyio.to_thread

from .._core.context import current_sink
from .._core.job import Job
from .._core.models import StreamName


class _StoppedAtYield(Exception):
    """A generator job was closed at a yield because its job was stopped."""


@final
class ThreadSink:
    """The current job as a worker thread sees it: emits cross to the loop and wait there."""

    __slots__ = ("_append", "_job", "_token")

    def __init__(self, job: Job) -> None:
        self._job = job
        log = job._log
        assert log is not None
        self._append = log.append

    def emit(self, stream: StreamName, value: Any) -> None:
        anyio.from_thread.run(self._append, stream, value)

    def stop_requested(self) -> bool:
        return self._job.stop_requested


def call_in_thread(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: ThreadSink
) -> Any:
    """What runs in the worker thread: call, drive a generator, or run an async function."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return asyncio.run(_drive_async(fn(*args, **kwargs), sink))
    result = fn(*args, **kwargs)
    if inspect.isgenerator(result):
        _drive(result, sink)
        return None
    return result


def _drive(gen: Iterator[Any], sink: ThreadSink) -> None:
    try:
        for item in gen:
            sink.emit("output", item)
            if sink.stop_requested():
                raise _StoppedAtYield
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


async def _drive_async(awaitable: Any, sink: ThreadSink) -> Any:
    if not isinstance(awaitable, AsyncIterator):
        return await awaitable
    agen = awaitable
    try:
        async for item in agen:
            sink.emit("output", item)
            if sink.stop_requested():
                raise _StoppedAtYield
    finally:
        await agen.aclose()  # type: ignore[attr-defined]
    return None


async def run_thread(
    job: Job,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    pool: anyio.CapacityLimiter,
    started: Callable[[], None],
) -> None:
    """The body of a thread job (see ``_runner.run_in_slot``)."""
    log = job._log
    assert log is not None
    sink = ThreadSink(job)
    token = current_sink.set(sink)  # the worker thread gets a copy of this context
    try:
        started()
        try:
            result = await anyio.to_thread.run_sync(
                call_in_thread, fn, args, kwargs, sink, limiter=pool
            )
        except _StoppedAtYield:
            job._mark_stopped()
            return
        except Exception as exc:
            await log.append("error", exc)
            job._fail(exc)
            return
        if result is not None:
            await log.append("output", result)
        if job.stop_requested:
            job._mark_stopped()
        else:
            job._complete()
    finally:
        current_sink.reset(token)
