"""PLACEHOLDER: process jobs (being written)."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ._job import Job


class ProcessCall:
    pass


def prepare_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 cwd: str | os.PathLike[str] | None, env: Mapping[str, str] | None) -> ProcessCall:
    raise NotImplementedError


class WorkerPool:
    def __init__(self, *, size: int, stop_grace: float) -> None:
        self.idle = 0

    async def __aenter__(self) -> WorkerPool:
        return self

    async def __aexit__(self, a: type[BaseException] | None, b: BaseException | None,
                        c: TracebackType | None) -> None:
        return None


async def run_process(job: Job, call: ProcessCall, pool: WorkerPool, started: Callable[[], None],
                      *, isolated: bool) -> None:
    raise NotImplementedError
