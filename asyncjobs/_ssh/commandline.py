"""What a remote command is before and after it runs, without asyncssh: its command line for
the remote shell, its stdin, and its timings. The controller of a warm invoke (whose fan-out
runs on the job host) needs these and nothing else of SSH, so ``asyncjobs invoke`` starts
without importing asyncssh."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

import attrs

from .._core.errors import JobArgumentError


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
