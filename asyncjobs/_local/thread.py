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
from .._core.models import StreamName
from .._core.runner import Run


class _StoppedAtYield(Exception):
    """A generator job was closed at a yield because its job was stopped."""


@final
class ThreadSink:
    """The current job as a worker thread sees it: emits cross to the loop and wait there."""

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    def emit(self, stream: StreamName, value: Any) -> None:
        anyio.from_thread.run(self._run.append, stream, value)

    def stop_requested(self) -> bool:
        return self._run.stop_requested


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
    run: Run,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    pool: anyio.CapacityLimiter,
) -> None:
    """The body of a thread job (see ``run_in_slot``)."""
    sink = ThreadSink(run)
    token = current_sink.set(sink)  # the worker thread gets a copy of this context
    try:
        run.started()
        try:
            result = await anyio.to_thread.run_sync(
                call_in_thread, fn, args, kwargs, sink, limiter=pool
            )
        except _StoppedAtYield:
            run.stopped()
            return
        except Exception as exc:
            await run.append("error", exc)
            run.failed(exc)
            return
        if result is not None:
            await run.append("output", result)
        if run.stop_requested:
            run.stopped()
        else:
            run.completed()
    finally:
        current_sink.reset(token)
