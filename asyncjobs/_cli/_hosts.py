"""Host lists as pdsh and clush take them: ``web[01-12],db1``, ``user@db[1-3]:2222``, a host
file with ``#`` comments, ``-`` for standard input; and the reverse, folding host names back
into ranges for display (``web[01-03]``).

Pure: no I/O but the host file the caller names, no asyncjobs imports beyond ``Target``. Every
malformed input raises ``HostSyntaxError`` with one line that names the token and the fix.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

from .._errors import JobArgumentError
from .._targets import Target

#: More hosts than this from one expression is surely a typo (``web[1-1000000]``).
MAX_HOSTS: Final = 100_000
_RANGE_HINT: Final = "write ranges as web[01-12] or web[1,3,5-7]"
_TRAILING_NUMBER: Final = re.compile(r"^(.*?)(\d+)(\D*)$")


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
        first, last = int(lo), int(hi)
        if first > last:
            raise HostSyntaxError(
                f"bad host range {token!r}: {lo}-{hi} counts down; write [{hi}-{lo}]"
            )
        if last - first >= MAX_HOSTS:
            raise HostSyntaxError(
                f"bad host range {token!r}: {lo}-{hi} is more than {MAX_HOSTS:,} hosts"
            )
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(first, last + 1))
    return out


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


def parse_hosts(text: str) -> list[str]:
    """A comma list of host expressions, expanded, in order, duplicates dropped."""
    hosts: list[str] = []
    for token in split_list(text):
        hosts.extend(expand(token))
    return list(dict.fromkeys(hosts))


def read_hostfile(lines: Iterable[str], where: str) -> list[str]:
    """Hosts from a file's lines: one expression (or comma list) per line, ``#`` comments."""
    hosts: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        try:
            hosts.extend(parse_hosts(text))
        except HostSyntaxError as exc:
            raise HostSyntaxError(f"{where}, line {number}: {exc}") from None
    return list(dict.fromkeys(hosts))


def gather(
    host_options: Iterable[str], hostfiles: Iterable[str], stdin: TextIO | None
) -> list[str]:
    """Every host of ``-H`` options and ``--hostfile`` files (``-`` is standard input)."""
    hosts: list[str] = []
    for option in host_options:
        if option.strip() == "-":
            hosts.extend(_read_stdin(stdin))
        else:
            hosts.extend(parse_hosts(option))
    for path in hostfiles:
        if path == "-":
            hosts.extend(_read_stdin(stdin))
            continue
        try:
            with open(path, encoding="utf-8") as f:
                hosts.extend(read_hostfile(f, path))
        except OSError as exc:
            raise HostSyntaxError(
                f"can't read host file {path}: {exc.strerror or exc}; give a readable file "
                "with one host per line"
            ) from None
    return list(dict.fromkeys(hosts))


def _read_stdin(stdin: TextIO | None) -> list[str]:
    if stdin is None:
        raise HostSyntaxError("'-' reads hosts from standard input, which is not available")
    return read_hostfile(stdin, "standard input")


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


def fold(hosts: Iterable[str]) -> str:
    """Host names folded back into ranges, in order of first appearance:
    ``web01,web02,web03,db1`` → ``web[01-03],db1``."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    plain: dict[str, None] = {}
    order: list[tuple[str, str, int] | str] = []
    for host in dict.fromkeys(hosts):
        match = _TRAILING_NUMBER.match(host)
        if match is None:
            plain[host] = None
            order.append(host)
            continue
        prefix, digits, suffix = match.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        key = (prefix, suffix, width)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(digits))
    return ",".join(
        item if isinstance(item, str) else _fold_group(*item, groups[item]) for item in order
    )


def _fold_group(prefix: str, suffix: str, width: int, numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"{prefix}{str(numbers[0]).zfill(width)}{suffix}"
    spans = ",".join(_spans(sorted(set(numbers)), width))
    return f"{prefix}[{spans}]{suffix}"


def _spans(numbers: list[int], width: int) -> Iterator[str]:
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        a, b = str(start).zfill(width), str(prev).zfill(width)
        yield a if start == prev else f"{a}-{b}"
        if n is not None:
            start = prev = n
