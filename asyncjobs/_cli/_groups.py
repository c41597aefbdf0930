"""Host groups as clush names them: ``-H @web`` from a groups file, and ``-x HOSTS`` taking
hosts out again.

The groups file is ``$XDG_CONFIG_HOME/asyncjobs/groups`` (default
``~/.config/asyncjobs/groups``), one group a line, as clush's ``groups.conf`` writes them::

    # name: hosts (ranges, user@host:port and other groups, comma separated)
    web: web[01-12]
    db: db[1-2],ops@db3:2222
    all: @web,@db

``#`` starts a comment, blank lines are skipped. A group may name other groups; a cycle
(``a: @b`` / ``b: @a``) is refused naming the cycle, an unknown group naming the file. The
file is read only when a host list names a group, and once per invocation.

Pure but for reading that one file; errors are ``HostSyntaxError`` (exit status 2).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs

from .._core.errors import JobArgumentError
from .._ssh.targets import Target
from ._hosts import GroupLookup, HostSyntaxError, parse_hosts

#: What a group's name may be made of (clush's names, without its ``source:`` prefix).
_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
#: Names the last invoke's hosts will go by (``@failed``, ``@last``): not for the file.
RESERVED: Final = frozenset({"failed", "last"})
_EXAMPLE: Final = "web: web[01-12],db1"


class GroupError(HostSyntaxError):
    """A group that can't be used: unknown, in a cycle, or a bad line of the groups file."""


def groups_path() -> Path:
    """``$XDG_CONFIG_HOME/asyncjobs/groups``, by default ``~/.config/asyncjobs/groups``."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "asyncjobs" / "groups"


@attrs.frozen
class _Line:
    members: str
    number: int


@attrs.define
class Groups:
    """The groups of one file: ``expand("web")`` gives a group's hosts, nested groups
    expanded, in the order written, duplicates dropped."""

    path: str
    exists: bool
    _lines: dict[str, _Line]
    _done: dict[str, list[str]] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, lines: Iterable[str], path: str, *, exists: bool = True) -> Groups:
        """Groups from the file's lines; a line that is not ``name: hosts`` is an error
        naming the file and the line."""
        found: dict[str, _Line] = {}
        for number, raw in enumerate(lines, 1):
            text = raw.partition("#")[0].strip()
            if not text:
                continue
            name, colon, members = (part.strip() for part in text.partition(":"))
            where = f"groups file {path}, line {number}"
            if not colon:
                raise GroupError(f"{where}: {text!r} is not 'name: hosts'; write {_EXAMPLE!r}")
            if not _NAME.match(name):
                raise GroupError(
                    f"{where}: {name!r} is not a group name (letters, digits and _.+-)"
                )
            if name in RESERVED:
                raise GroupError(
                    f"{where}: @{name} is reserved for the hosts of the last invoke; "
                    "give the group another name"
                )
            if name in found:
                raise GroupError(
                    f"{where}: group {name!r} is already defined on line {found[name].number}; "
                    "define each group once"
                )
            found[name] = _Line(members, number)
        return cls(path, exists, found)

    @classmethod
    def read(cls, path: Path | None = None) -> Groups:
        """The groups file (``groups_path()`` unless given); a missing file has no groups."""
        path = groups_path() if path is None else path
        try:
            with open(path, encoding="utf-8") as f:
                return cls.parse(f, str(path))
        except FileNotFoundError:
            return cls(str(path), False, {})
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise GroupError(f"can't read groups file {path}: {reason}") from None

    @property
    def names(self) -> list[str]:
        return sorted(self._lines)

    def expand(self, name: str) -> list[str]:
        """The hosts of group ``name``."""
        return self._expand(name, ())

    def _expand(self, name: str, chain: tuple[str, ...]) -> list[str]:
        if name in chain:
            cycle = " -> ".join(f"@{n}" for n in (*chain[chain.index(name) :], name))
            raise GroupError(f"group cycle in {self.path}: {cycle}; a group can't contain itself")
        if name in self._done:
            return self._done[name]
        line = self._lines.get(name)
        if line is None:
            raise GroupError(self._unknown(name))
        inner: GroupLookup = lambda nested: self._expand(nested, (*chain, name))  # noqa: E731 - a closure over chain
        try:
            hosts = parse_hosts(line.members, inner)
        except GroupError:
            raise
        except HostSyntaxError as exc:
            raise GroupError(f"groups file {self.path}, line {line.number}: {exc}") from None
        self._done[name] = hosts
        return hosts

    def _unknown(self, name: str) -> str:
        if not self.exists:
            return (
                f"unknown group @{name}: there is no groups file {self.path}; write its "
                f"groups there, one a line, like {_EXAMPLE!r} (see 'asyncjobs invoke --help')"
            )
        close = difflib.get_close_matches(name, self.names, n=1)
        hint = f"did you mean @{close[0]}? " if close else ""
        known = ", ".join(f"@{n}" for n in self.names) or "none"
        return (
            f"unknown group @{name}: groups file {self.path} does not define it "
            f"(it has {known}); {hint}add a line '{name}: HOSTS'"
        )


@attrs.define
class LazyGroups:
    """The groups file, read on the first ``@name`` and then kept (a ``GroupLookup``)."""

    path: Path | None = None
    _groups: Groups | None = None

    def __call__(self, name: str) -> list[str]:
        if self._groups is None:
            self._groups = Groups.read(self.path)
        return self._groups.expand(name)


def excluded(target: Target, removed: Sequence[Target]) -> bool:
    """Whether ``-x`` removes ``target``: a host it names with what it says of user and port
    (``-x web3`` removes ``web3`` and ``ops@web3:2222``; ``-x ops@web3`` only that user's)."""
    return any(
        x.host == target.host
        and (x.username is None or x.username == target.username)
        and (x.port is None or x.port == target.port)
        for x in removed
    )


def exclude(
    chosen: Sequence[Target], exclusions: Sequence[str], lookup: GroupLookup
) -> list[Target]:
    """``chosen`` without the hosts of the ``-x`` options (ranges and groups too)."""
    if not exclusions:
        return list(chosen)
    removed: list[Target] = []
    for option in exclusions:
        for host in parse_hosts(option, lookup):
            try:
                removed.append(Target.parse(host))
            except JobArgumentError as exc:
                raise HostSyntaxError(
                    f"-x {option!r}: {exc}; write hosts as [user@]host[:port]"
                ) from None
    return [t for t in chosen if not excluded(t, removed)]
