"""The rules for the arguments of the public API, each in one place.

``JobManager``, ``CommandSpec.build`` (which the job host calls too), ``Job`` and
``session.jobs`` check their arguments with these functions, so a bad call is refused before
anything runs, with the same ``JobArgumentError`` naming the argument and the value, wherever
it is made: locally, or on the controller before a request is sent to a job host.

Only what can be judged anywhere is here; what depends on the machine a job runs on (does
``cwd`` exist?) is checked there (``_local.command``).
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

from .errors import JobArgumentError
from .lines import input_chunks
from .models import STREAMS, StreamName

#: What is fed to a command's stdin: all of it at once, or lines as an iterable yields them.
Input: TypeAlias = bytes | Iterable[str | bytes] | None

SHELL: Final = ("/bin/sh", "-c")
_ALL_STREAMS: Final = frozenset(STREAMS)
_NUL_FIX: Final = (
    "the operating system can't pass one (it would end the string there): remove it, "
    "or send binary data through input="
)


def _kind(value: object) -> str:
    return f"{type(value).__name__}: {value!r}"


# -- a command ---------------------------------------------------------------------------------


def command(value: object) -> tuple[tuple[str, ...], str]:
    """A ``start_command`` command: an argv list of str (run directly) or a shell string (run
    by ``/bin/sh -c``). Returns the argv to execute and the text users read as the command."""
    if isinstance(value, str):
        if not value.strip():
            raise JobArgumentError("start_command() got an empty command string; give a program")
        if "\0" in value:
            raise JobArgumentError(
                f"command holds a NUL byte at index {value.index(chr(0))}: {value!r}; {_NUL_FIX}"
            )
        return (*SHELL, value), value
    if isinstance(value, bytes | bytearray) or not isinstance(value, Iterable):
        raise JobArgumentError(
            f"command must be an argv list of str (['ls', '-l']) or a shell string ('ls -l'), "
            f"got {_kind(value)}"
        )
    items = tuple(value)
    if not items:
        raise JobArgumentError("start_command() got an empty argv; the first item is the program")
    argv = tuple(os.fspath(a) if isinstance(a, os.PathLike) else a for a in items)
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise JobArgumentError(
                f"command[{i}] must be a str, got {_kind(items[i])}; "
                f"convert it with str() (argv is {items!r})"
            )
        if "\0" in arg:
            raise JobArgumentError(f"command[{i}] holds a NUL byte: {arg!r}; {_NUL_FIX}")
    return argv, shlex.join(argv)


def cwd(value: object) -> str | None:
    """A working directory as a path string (``None``: the caller's); whether it exists is
    for the machine that runs the job to say."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise JobArgumentError(f"cwd must be a path (str or os.PathLike), got {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise JobArgumentError(f"cwd must be a path (str or os.PathLike), got {value!r}")
    if "\0" in path:
        raise JobArgumentError(f"cwd holds a NUL byte: {path!r}; a path can't: remove it")
    return path


def env(value: object) -> dict[str, str] | None:
    """Environment variables to add (or override): a mapping of names to str values."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise JobArgumentError(f"env must be a mapping of str to str, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise JobArgumentError(
                f"env must map str to str: {key!r} is not a valid variable name "
                "(a non-empty str, no '=' or NUL)"
            )
        if not isinstance(item, str) or "\0" in item:
            raise JobArgumentError(
                f"env must map str to str: env[{key!r}] must be a str without NUL, "
                f"got {_kind(item)}"
            )
    return dict(value)


def input(value: object) -> Input:
    """A command's ``input=``: ``None``, ``bytes``, a ``str`` (sent as UTF-8), or an iterable
    of lines (``str`` or ``bytes``). A list or tuple is checked and joined now; a lazy
    iterable (a generator, a file) is returned as it is, checked line by line as it is fed."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise JobArgumentError(
            f"input must be bytes, str or an iterable of lines (str or bytes), got {_kind(value)}"
        )
    if isinstance(value, list | tuple):  # checked now, so that the caller hears of a bad line
        return b"".join(input_chunks(value))
    return value


# -- seconds -----------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def timeout(value: object, what: str = "timeout") -> float | None:
    """A time limit in seconds: a number >= 0, or ``None`` for no limit. ``math.inf`` is no
    limit too (given back as ``None``); NaN and negative numbers are refused (in PowerShell
    ``-1`` means "forever": here it would mean "at once", so it is refused, not guessed)."""
    if value is None:
        return None
    if not _is_number(value) or not value >= 0:  # type: ignore[operator]
        raise JobArgumentError(
            f"{what} must be a number of seconds >= 0 or None (no limit), got {value!r}"
        )
    seconds = float(value)  # type: ignore[arg-type]
    return None if seconds == math.inf else seconds


def grace(value: object, what: str = "stop_grace") -> float:
    """How long a stop waits before it kills: a finite number of seconds >= 0 (a stop must
    end)."""
    if not _is_number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise JobArgumentError(
            f"{what} must be a finite number of seconds >= 0, got {value!r}; 0 kills at once"
        )
    return float(value)  # type: ignore[arg-type]


# -- jobs and records --------------------------------------------------------------------------


def name(value: object, what: str = "name") -> str | None:
    """A job's name (or a ``get(name=)`` pattern): a str, or ``None``."""
    if value is not None and not isinstance(value, str):
        raise JobArgumentError(f"{what} must be a str, got {_kind(value)}")
    return value


def job_id(value: object, what: str = "job") -> int:
    """A job's id: an int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobArgumentError(
            f"{what} must be a job id (an int >= 1) or a job from session.jobs, got {_kind(value)}"
        )
    return value


def from_seq(value: object) -> int:
    """A record position: an int >= 0 (the ``seq`` of the first record wanted)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JobArgumentError(f"from_seq must be an int >= 0, got {value!r}")
    return value


def limit(value: object) -> int | None:
    """At most this many records: an int >= 1, or ``None`` for no limit."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise JobArgumentError(f"limit must be an int >= 1 or None (no limit), got {value!r}")
    return value


def streams(value: Iterable[str] | None, what: str = "streams") -> frozenset[StreamName]:
    """A choice of streams: a name or an iterable of names; ``None`` means all seven."""
    if value is None:
        return _ALL_STREAMS
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise JobArgumentError(
            f"{what} must be a stream name or an iterable of them, got {_kind(value)}"
        )
    chosen = frozenset(value)
    unknown = chosen - _ALL_STREAMS
    if unknown:
        names = ", ".join(sorted(map(repr, unknown)))
        raise JobArgumentError(
            f"{what}: unknown stream(s) {names}; the streams are {', '.join(STREAMS)}"
        )
    return chosen  # type: ignore[return-value]


def stream_names(value: Iterable[str] | None, what: str = "streams") -> list[str] | None:
    """``streams`` as a message carries them: names in the order of ``STREAMS``, at least one
    (a request can't ask for none); ``None`` stays ``None`` (all of them)."""
    if value is None:
        return None
    chosen = streams(value, what)
    if not chosen:
        raise JobArgumentError(f"{what} must name at least one stream, or be None for all seven")
    return [s for s in STREAMS if s in chosen]


def session_options(
    name: str | None,
    idle_timeout: object,
    output_buffering: object,
    create: object,
    *,
    observer: bool = False,
) -> dict[str, Any]:
    """The job host session arguments of ``connect`` and ``connect_local``, checked before
    anything connects (the host would refuse them, naming nothing the user wrote). With
    ``observer``, no name and ``create=False`` is a connection that only looks (no session)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise JobArgumentError(f"name must be a non-empty str or None, got {name!r}")
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, int | float)
        or not 0 < idle_timeout < math.inf
    ):
        raise JobArgumentError(f"idle_timeout must be seconds > 0 or None, got {idle_timeout!r}")
    if output_buffering not in (None, "block", "drop"):
        raise JobArgumentError(
            f"output_buffering must be 'block', 'drop' or None, got {output_buffering!r}"
        )
    if not isinstance(create, bool):
        raise JobArgumentError(f"create must be True or False, got {create!r}")
    if not create and name is None and not observer:
        raise JobArgumentError("create=False needs the name= of an existing session")
    return {"create": create, "idle_timeout": idle_timeout, "output_buffering": output_buffering}
