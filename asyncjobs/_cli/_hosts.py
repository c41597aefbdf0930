"""Host lists as pdsh and clush take them: ``web[01-12],db1``, ``user@db[1-3]:2222``,
``@web`` (a group, expanded by the ``GroupLookup`` the caller gives: ``_groups``), a host file
with ``#`` comments, ``-`` for standard input; and the reverse, folding host names back into
ranges for display (``web[01-12]``), by clush's nodeset rules.

Pure: no I/O but the host file the caller names, no asyncjobs imports beyond ``Target``. Every
malformed input raises ``HostSyntaxError`` with one line that names the token and the fix.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from typing import Final, TextIO

from .._core.errors import JobArgumentError
from .._ssh.targets import Target

#: More hosts than this from one expression is surely a typo (``web[1-1000000]``).
MAX_HOSTS: Final = 100_000
_RANGE_HINT: Final = "write ranges as web[01-12] or web[1,3,5-7]"

#: The hosts of a group, by its name without the ``@`` (``"web"`` → ``["web01", ...]``).
GroupLookup = Callable[[str], list[str]]


class HostSyntaxError(JobArgumentError):
    """A host list, range or host file line that can't be read; the message is one line."""


def split_list(text: str) -> list[str]:
    """Split a comma list, keeping commas inside brackets: ``a[1,2],b`` → ``a[1,2]``, ``b``."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _numbers(body: str, token: str) -> list[str]:
    """``01-03,7`` → ``['01', '02', '03', '7']`` (zero padding kept, as pdsh does)."""
    if not body:
        raise HostSyntaxError(f"bad host range {token!r}: empty brackets; {_RANGE_HINT}")
    out: list[str] = []
    for part in body.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise HostSyntaxError(
                f"bad host range {token!r}: {part.strip()!r} is not a number or N-M; {_RANGE_HINT}"
            )
        if not dash:
            out.append(lo)
            continue
        if (_padded(lo) or _padded(hi)) and len(lo) != len(
            hi
        ):  # clush: a padded range has one width
            width = max(len(lo), len(hi))
            raise HostSyntaxError(
                f"bad host range {token!r}: {lo}-{hi} mixes widths; write "
                f"[{lo.zfill(width)}-{hi.zfill(width)}] (padded) or [{int(lo)}-{int(hi)}]"
            )
        first, last = int(lo), int(hi)
        if first > last:
            raise HostSyntaxError(
                f"bad host range {token!r}: {lo}-{hi} counts down; write [{hi}-{lo}]"
            )
        if last - first >= MAX_HOSTS:
            raise HostSyntaxError(
                f"bad host range {token!r}: {lo}-{hi} is more than {MAX_HOSTS:,} hosts"
            )
        width = len(lo) if _padded(lo) else 0
        out.extend(str(n).zfill(width) for n in range(first, last + 1))
    return out


def _padded(number: str) -> bool:
    """``08`` is written with padding (2 digits, always); ``8``, ``10`` and ``0`` are not."""
    return len(number) > 1 and number.startswith("0")


def _is_ipv6_literal(token: str) -> bool:
    host = token.rpartition("@")[2]
    return host.startswith("[") and ":" in host.partition("]")[0]


def expand(token: str) -> list[str]:
    """Expand one host expression: every bracket group is a range, several multiply out
    (``rack[1-2]-n[1-2]`` → 4 hosts). An IPv6 literal in brackets (``[::1]:22``) is kept."""
    if _is_ipv6_literal(token):
        return [token]
    parts: list[list[str]] = []
    rest = token
    while rest:
        before, bracket, after = rest.partition("[")
        if "]" in before:
            raise HostSyntaxError(f"bad host range {token!r}: ']' without '['; {_RANGE_HINT}")
        parts.append([before])
        if not bracket:
            break
        body, closing, rest = after.partition("]")
        if not closing or "[" in body:
            raise HostSyntaxError(f"bad host range {token!r}: '[' is never closed; {_RANGE_HINT}")
        parts.append(_numbers(body, token))
    count = 1
    for choices in parts:
        count *= len(choices)
    if count > MAX_HOSTS:
        raise HostSyntaxError(
            f"bad host range {token!r}: {count:,} hosts is more than {MAX_HOSTS:,}"
        )
    return ["".join(combo) for combo in itertools.product(*parts)]


def _no_groups(name: str) -> list[str]:
    raise HostSyntaxError(f"@{name}: a group can't be used here; name the hosts")


def parse_hosts(text: str, groups: GroupLookup = _no_groups) -> list[str]:
    """A comma list of host expressions and ``@groups``, expanded, in order, duplicates
    dropped."""
    hosts: list[str] = []
    for token in split_list(text):
        if token.startswith("@"):
            if len(token) == 1:
                raise HostSyntaxError(f"bad host list {text!r}: '@' without a group name")
            hosts.extend(groups(token[1:]))
        else:
            hosts.extend(expand(token))
    return list(dict.fromkeys(hosts))


def read_hostfile(lines: Iterable[str], where: str, groups: GroupLookup = _no_groups) -> list[str]:
    """Hosts from a file's lines: one expression (or comma list) per line, ``#`` comments."""
    hosts: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        try:
            hosts.extend(parse_hosts(text, groups))
        except HostSyntaxError as exc:
            raise type(exc)(f"{where}, line {number}: {exc}") from None
    return list(dict.fromkeys(hosts))


def gather(
    host_options: Iterable[str],
    hostfiles: Iterable[str],
    stdin: TextIO | None,
    groups: GroupLookup = _no_groups,
) -> list[str]:
    """Every host of ``-H`` options and ``--hostfile`` files (``-`` is standard input)."""
    hosts: list[str] = []
    for option in host_options:
        if option.strip() == "-":
            hosts.extend(_read_stdin(stdin, groups))
        else:
            hosts.extend(parse_hosts(option, groups))
    for path in hostfiles:
        if path == "-":
            hosts.extend(_read_stdin(stdin, groups))
            continue
        try:
            with open(path, encoding="utf-8") as f:
                hosts.extend(read_hostfile(f, path, groups))
        except OSError as exc:
            raise HostSyntaxError(
                f"can't read host file {path}: {exc.strerror or exc}; give a readable file "
                "with one host per line"
            ) from None
    return list(dict.fromkeys(hosts))


def _read_stdin(stdin: TextIO | None, groups: GroupLookup) -> list[str]:
    if stdin is None:
        raise HostSyntaxError("'-' reads hosts from standard input, which is not available")
    return read_hostfile(stdin, "standard input", groups)


def targets(hosts: Iterable[str], *, user: str | None, port: int | None) -> list[Target]:
    """Check every host as a target (``[user@]host[:port]``); ``user`` and ``port`` fill in
    what a host does not say."""
    out: list[Target] = []
    for host in hosts:
        try:
            target = Target.parse(host)
        except JobArgumentError as exc:
            raise HostSyntaxError(f"{exc}; write hosts as [user@]host[:port]") from None
        if target.username is None and user is not None:
            target = Target(target.host, target.port, user)
        if target.port is None and port is not None:
            target = Target(target.host, port, target.username)
        out.append(target)
    return out


def target_text(target: Target) -> str:
    """A target as ``asyncjobs.connect`` and ``JobManager.invoke`` take it."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    user = f"{target.username}@" if target.username else ""
    port = f":{target.port}" if target.port is not None else ""
    return f"{user}{host}{port}"


# -- folding, for display -------------------------------------------------------------------
#
# ClusterShell's nodeset rules (1.9, mixed padding): a host name is text and numbers, and hosts
# whose text is the same fold together, their numbers into ranges. A number keeps its padding
# as written: ``08`` is padded to 2 digits, ``8`` is not, and a padded range only takes numbers
# of its width (``web[08-11]``: 10 and 11 are 2 digits too), an unpadded one only unpadded
# numbers (``web[8-11]``); ``web8`` and ``web08`` are two hosts (``web[8,08]``). Numbers sort
# by length, then value, as clush sorts them. A name with brackets, a comma or an IPv6 address
# is kept as it is.

_NUMBER: Final = re.compile(r"(\d+)")


def _parts(host: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A host as its text around the numbers and the numbers: ``ops@db1:2222`` →
    ``("ops@db", ":", "")``, ``("1", "2222")``. Hosts that can't be written as a range are all
    text."""
    if any(c in host for c in "[],") or host.count(":") > 1 or not host:
        return (host,), ()
    pieces = _NUMBER.split(host)
    return tuple(pieces[0::2]), tuple(pieces[1::2])


def _number_key(number: str) -> tuple[int, str]:
    return len(number), number  # clush: shorter first (8 before 08), then by value


def host_order(host: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """The order ``fold`` lists hosts in (and that expanding its result gives): by their text,
    then number by number, shorter numbers first (``web9`` before ``web10`` and ``web09``)."""
    texts, numbers = _parts(host)
    return texts, tuple(_number_key(n) for n in numbers)


def fold(hosts: Iterable[str]) -> str:
    """Host names folded into ranges, as clush's ``nodeset -f`` folds them, sorted (see
    ``host_order``): ``web10,web08,web09,web11,db1`` → ``db1,web[08-11]``. Expanding the result
    gives every host once, in that order."""
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for host in set(hosts):
        texts, numbers = _parts(host)
        groups.setdefault(texts, []).append(numbers)
    out: list[str] = []
    for texts in sorted(groups):
        vectors = sorted(groups[texts], key=lambda v: tuple(_number_key(n) for n in v))
        out.extend(_render(texts, box) for box in _boxes(vectors))
    return ",".join(out)


def _boxes(vectors: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Sorted number vectors (one per host, all of one length) as boxes: per position, the
    range text (``01-03,05``) whose product gives those vectors, in the same order.

    The last position is folded first, per run of vectors that agree on the others; runs next
    to each other with the same last ranges merge (``rack[1-2]-n[1-2]``), and their leading
    numbers are folded the same way. Only neighbours merge, so expanding the boxes one after
    the other gives the vectors in their order."""
    if not vectors or not vectors[0]:
        return [()]
    if len(vectors[0]) == 1:
        return [(_ranges([v[0] for v in vectors]),)]
    rows: list[tuple[tuple[str, ...], list[str]]] = []  # (leading numbers, last numbers)
    for vector in vectors:
        if rows and rows[-1][0] == vector[:-1]:
            rows[-1][1].append(vector[-1])
        else:
            rows.append((vector[:-1], [vector[-1]]))
    runs: list[tuple[list[tuple[str, ...]], str]] = []
    for lead, lasts in rows:
        last = _ranges(lasts)
        if runs and runs[-1][1] == last:
            runs[-1][0].append(lead)
        else:
            runs.append(([lead], last))
    return [(*box, last) for leads, last in runs for box in _boxes(leads)]


def _ranges(numbers: list[str]) -> str:
    """Sorted, distinct numbers as clush writes them: ``9,01-03,05,10-11``."""
    spans: list[list[str]] = []  # [first, last]
    for number in numbers:
        if spans:
            first, last = spans[-1]
            fits = len(number) == len(first) if _padded(first) else not _padded(number)
            if fits and int(number) == int(last) + 1:
                spans[-1][1] = number
                continue
        spans.append([number, number])
    return ",".join(first if first == last else f"{first}-{last}" for first, last in spans)


def _render(texts: tuple[str, ...], box: tuple[str, ...]) -> str:
    out = [texts[0]]
    for text, numbers in zip(texts[1:], box, strict=True):
        out.append(numbers if numbers.isdigit() else f"[{numbers}]")
        out.append(text)
    return "".join(out)
