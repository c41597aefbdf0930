"""PLACEHOLDER: command jobs (being written)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import os
from typing import Any

import attrs

from ._job import Job


@attrs.frozen
class CommandSpec:
    argv: tuple[str, ...]
    display: str

    @classmethod
    def build(cls, command: str | Iterable[str], *, cwd: str | os.PathLike[str] | None,
              env: Mapping[str, str] | None, input: Any, stop_grace: float) -> CommandSpec:
        raise NotImplementedError


async def run_command(job: Job, spec: CommandSpec, started: Callable[[], None]) -> None:
    raise NotImplementedError
