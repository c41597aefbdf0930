"""The summary ``asyncjobs invoke`` prints on stderr at the end: the hosts folded by result
(state, exit status, the reason without the host's own name), then the totals."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._hosts import fold
from ._terminal import Screen
from ._text import cli_message

if TYPE_CHECKING:
    from .._core.job import Job

SUMMARY_COLUMNS = ("Hosts", "Count", "State", "ExitStatus", "Reason")

# -- the summary ------------------------------------------------------------------------------

#: The host a reason begins with, as the remote runner writes it: ``host web01:22: ...`` or
#: ``host web01 (ops@10.0.0.1:2222): ...``.
_WHERE = re.compile(r"host (\S+?)(?: \(([^()]*)\))?: ")


def _names(where: str) -> tuple[set[str], set[str]]:
    """The names (``user@host:port``, ``host:port``, ``host``) and port of a host as written."""
    names = {where}
    ports: set[str] = set()
    rest, colon, port = where.rpartition(":")
    if colon and port.isdigit() and (not rest.startswith("[") or rest.endswith("]")):
        names.add(rest)
        ports.add(port)
        where = rest
    _, at, bare = where.rpartition("@")
    if at:
        names.add(bare)
    names.add(bare.strip("[]"))
    names.discard("")
    return names, ports


def reason_key(location: str, reason: str | None, command: str = "") -> tuple[str, str]:
    """A reason for grouping hosts: without the ``host X: `` it begins with, and with every
    other mention of the host's own name, user, address or port as ``<host>`` / ``<port>``
    (the key; the ``command``, quoted as the reason quotes it, is left as it is); and as shown
    for that host alone (the reason without its beginning)."""
    if not reason:
        return "", ""
    names, ports = _names(location)
    text = reason
    where = _WHERE.match(text)
    if where is not None:
        text = text[where.end() :]
        for spelled in where.groups():
            if spelled:
                more_names, more_ports = _names(spelled)
                names |= more_names
                ports |= more_ports
    quoted = repr(command) if command else None
    pieces = text.split(quoted) if quoted else [text]
    if names:
        spelled = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        host = re.compile(rf"(?<![\w.@-])(?:[\w.-]+@)?(?:{spelled})(?![\w-]|\.\w)")
        pieces = [host.sub("<host>", p) for p in pieces]
    if ports:
        spelled = "|".join(map(re.escape, ports))
        port = re.compile(rf"(?:(?<=:)|(?<=-p )|(?<=port ))(?:{spelled})\b")
        pieces = [port.sub("<port>", p) for p in pieces]
    return (quoted or "").join(pieces), text


def summary(
    screen: Screen, children: Sequence[Job], elapsed: float, *, interrupted: bool = False
) -> None:
    rows = [
        (
            c.location,
            c.state.value,
            c.exit_status,
            None if c.reason is None else cli_message(c.reason),
        )
        for c in children
    ]
    command = children[0].command if children else ""
    summary_rows(screen, rows, elapsed, interrupted=interrupted, command=command)


def summary_rows(
    screen: Screen,
    rows: Sequence[tuple[str, str, int | None, str | None]],
    elapsed: float,
    *,
    interrupted: bool = False,
    command: str = "",
) -> None:
    """The hosts folded by result (state, exit status, reason without the host), on stderr,
    then the totals."""
    groups: dict[tuple[str, int | None, str], tuple[list[str], str]] = {}
    for location, state, status, reason in rows:
        key, shown = reason_key(location, reason, command)
        groups.setdefault((state, status, key), ([], shown))[0].append(location)
    table = [
        [
            fold(hosts),
            str(len(hosts)),
            state,
            "-" if status is None else str(status),
            shown if len(hosts) == 1 else key,
        ]
        for (state, status, key), (hosts, shown) in groups.items()
    ]
    screen.table(SUMMARY_COLUMNS, table, err=True, flexible=("Reason",))
    tally: dict[str, int] = {}
    for _, state, _, _ in rows:
        tally[state] = tally.get(state, 0) + 1
    counts = ", ".join(f"{n} {state.lower()}" for state, n in tally.items())
    plural = "s" if len(rows) != 1 else ""
    end = "; interrupted" if interrupted else ""
    screen.write(f"{len(rows)} host{plural}: {counts} in {elapsed:.2f} s{end}", err=True)
