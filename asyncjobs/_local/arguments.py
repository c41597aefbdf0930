"""``JobManager``'s argument checks: limits, state filters, callables (clear errors first)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from .._core.errors import JobArgumentError
from .._core.state import JobState, state_named


def default_threads() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def positive(what: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobArgumentError(f"{what} must be a positive int, got {value!r}")
    return value


def states(state: JobState | str | Iterable[JobState | str]) -> set[JobState]:
    items = [state] if isinstance(state, JobState | str) else list(state)
    return {s if isinstance(s, JobState) else state_named(str(s)) for s in items}


def check_callable(fn: object, where: str) -> None:
    if not callable(fn):
        raise JobArgumentError(
            f"{where}() needs a callable first, got {type(fn).__name__}: {fn!r}; "
            f"for a program use start_command()"
        )


def describe(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
