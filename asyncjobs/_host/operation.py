"""What an operation of the job host is (``Op``), and the checks its table is made of.

``protocol.OPS`` declares every operation once, as an ``Op``: its name on the wire, its request
fields, how its result is read back; the job host's handler table is keyed by the same objects.
A field check takes the field as JSON gave it and returns the typed value, or raises ``Bad``
(``read_fields`` turns that into an error naming the op, the field, the rule and the value);
here are those that are more than a type (a command, an environment, a buffer), and the
result readers (``many``, ``none``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, final

import attrs

from .._core.errors import AsyncJobsError, JobArgumentError, ProtocolError
from .._core.models import Buffer
from .wire import Bad, Spec, read_fields, show

_NUL: Final = "must hold no NUL byte (the operating system can't pass one)"


def command(v: Any) -> str | list[str]:
    """A shell string, or an argv list whose program is not empty; no NUL byte anywhere."""
    if type(v) is str and v.strip():
        if "\0" in v:
            raise Bad(_NUL, v)
        return v
    if type(v) is list and v and all(type(x) is str for x in v) and v[0]:
        for i, x in enumerate(v):
            if "\0" in x:
                raise Bad(_NUL, x, f"[{i}]")
        return v
    raise Bad("must be a non-empty str or a non-empty list of str (argv)", v)


def env(v: Any) -> dict[str, str]:
    """Environment variables: names (non-empty, no ``=`` or NUL) to values (no NUL)."""
    if type(v) is not dict or not all(type(k) is type(x) is str for k, x in v.items()):
        raise Bad("must be an object of str to str", v)
    for key, x in v.items():
        if not key or "=" in key or "\0" in key:
            raise Bad("must map variable names (non-empty, no '=' or NUL) to str", v)
        if "\0" in x:
            raise Bad(_NUL, x, f"[{key!r}]")
    return v


def buffer(v: Any) -> dict[str, Any]:
    """A ``Buffer``'s settings, checked by ``Buffer`` itself, with its defaults filled in."""
    if type(v) is not dict or not v.keys() <= {"max_items", "max_bytes", "mode"}:
        raise Bad("must be an object of max_items, max_bytes, mode", v)
    try:
        b = Buffer(**v)
    except JobArgumentError as exc:
        raise Bad(f"is not a valid Buffer ({exc})", v) from None
    return {"max_items": b.max_items, "max_bytes": b.max_bytes, "mode": b.mode}


R = TypeVar("R")


@final
@attrs.frozen(eq=False)
class Op(Generic[R]):
    """One operation of the job host, declared once: its name on the wire, its request fields
    (field → (check returning the typed value, default or ``REQUIRED``)) and how its result is
    read back (``result``, every field checked). The job host's handler table is keyed by these
    objects and checked complete (``handlers.HANDLERS``); controllers call them, not names."""

    name: str
    fields: Spec
    result: Callable[[Any], R]
    paged: bool = False  # its answer may be large: it takes its connection's one turn
    inline: bool = False  # answered in order in the connection's reading loop, never cancelled
    last: bool = False  # the connection ends once it is answered

    def validate(self, args: Any, *, error: type[AsyncJobsError] = ProtocolError) -> dict[str, Any]:
        """``args`` checked, with every default filled in; a controller may pass
        ``error=JobArgumentError`` to check a user's call before sending it."""
        return read_fields(f"Request {self.name!r}", args, self.fields, error)

    def parse_result(self, result: Any) -> R:
        """The (decoded) result of this op as objects: a ``JobInfo``, a ``Batch``, ..."""
        return self.result(result)

    def __repr__(self) -> str:
        return f"<Op {self.name}>"


def many(item: Callable[[Any], R]) -> Callable[[Any], list[R]]:
    def parse(v: Any) -> list[R]:
        if type(v) is not list:
            raise ProtocolError(f"result: expected a list, got {show(v)}")
        return [item(x) for x in v]

    return parse


def none(v: Any) -> None:
    if v is not None:
        raise ProtocolError(f"result: expected null, got {show(v)}")


def anything_at_all(v: Any) -> Any:
    """A result that may be any JSON value (``ping``'s)."""
    return v
