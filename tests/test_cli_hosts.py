"""The command line's pure parts, without processes: pdsh/clush host lists (ranges, host files,
standard input, malformed input), folding hosts back into ranges, tables, exit statuses."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs._cli._hosts import (
    HostSyntaxError,
    expand,
    fold,
    gather,
    host_order,
    parse_hosts,
    read_hostfile,
    targets,
)
from asyncjobs._cli._output import exit_code
from asyncjobs._cli._terminal import plain_table
from asyncjobs._cli._text import cli_message
from asyncjobs._core.errors import NoSuchJob
from asyncjobs._ssh.targets import Target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web1", ["web1"]),
        ("web1,web2 , db1", ["web1", "web2", "db1"]),
        ("web[01-03]", ["web01", "web02", "web03"]),
        ("web[8-10]", ["web8", "web9", "web10"]),
        ("web[1,3,5-6].example", ["web1.example", "web3.example", "web5.example", "web6.example"]),
        ("user@db[1-3]:2222", ["user@db1:2222", "user@db2:2222", "user@db3:2222"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("[::1]:2222,h[1-2]", ["[::1]:2222", "h1", "h2"]),
        ("a,b,a,a[1-1]", ["a", "b", "a1"]),
    ],
)
def test_host_lists_expand_like_pdsh(text: str, expected: list[str]) -> None:
    assert parse_hosts(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web[01-", "'[' is never closed"),
        ("web[]", "empty brackets"),
        ("web[3-1]", "counts down; write [1-3]"),
        ("web[a-c]", "'a-c' is not a number or N-M"),
        ("web[1-]", "'1-' is not a number or N-M"),
        ("web1]", "']' without '['"),
        ("web[1-[2]]", "never closed"),
        ("web[0-100000]", "more than 100,000 hosts"),
    ],
)
def test_malformed_ranges_name_the_token_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(HostSyntaxError) as info:
        parse_hosts(text)
    text_of = str(info.value)
    assert message in text_of and repr(text) in text_of and "\n" not in text_of


def test_hostfiles_comments_stdin_and_targets(tmp_path: Path) -> None:
    lines = ["# the web tier\n", "web[01-02]   # two\n", "\n", "ops@db1:2222, db2\n", "web01\n"]
    assert read_hostfile(lines, "f") == ["web01", "web02", "ops@db1:2222", "db2"]
    with pytest.raises(HostSyntaxError, match=r"^f, line 2: bad host range 'x\[1-'"):
        read_hostfile(["ok\n", "x[1-\n"], "f")
    path = tmp_path / "hosts"
    path.write_text("a[1-2]\n")
    assert gather(["b", "-"], [str(path)], io.StringIO("c\n# no\n")) == ["b", "c", "a1", "a2"]
    with pytest.raises(HostSyntaxError, match="can't read host file"):
        gather([], [str(tmp_path / "missing")], None)
    assert targets(["h1", "u@h2:2", "[::1]"], user="ops", port=2200) == [
        Target("h1", 2200, "ops"),
        Target("h2", 2, "u"),
        Target("::1", 2200, "ops"),
    ]
    with pytest.raises(HostSyntaxError, match=r"port '99999' is not in 1..65535"):
        targets(["h:99999"], user=None, port=None)


def test_fold_is_the_inverse_of_expand() -> None:
    hosts = [*expand("web[01-03,05]"), "db1", *expand("web[9-11]"), "plain"]
    assert fold(hosts) == "db1,plain,web[9,01-03,05,10-11]"  # sorted, as clush folds
    assert parse_hosts(fold(hosts)) == sorted(hosts, key=host_order)
    assert fold(["h7"]) == "h7"


@pytest.mark.parametrize(
    ("hosts", "folded"),
    [
        (expand("web[08-11]"), "web[08-11]"),  # issue 11, item 7: 09 -> 10 keeps one range
        (["web10", "web08", "web11", "web09"], "web[08-11]"),
        (expand("web[8-11]"), "web[8-11]"),
        (expand("web[098-101]"), "web[098-101]"),
        (["web8", "web08"], "web[8,08]"),  # two hosts: padding is part of the name
        ([*expand("web[8-11]"), *expand("web[08-09]")], "web[8-9,08-11]"),
        (["web1", "web001", "web01"], "web[1,01,001]"),
        (expand("ops@db[1-3]:2222"), "ops@db[1-3]:2222"),
        (expand("rack[1-2]-n[1-2]"), "rack[1-2]-n[1-2]"),
        (["r1-n5", "r2-n1", "r3-n5"], "r1-n5,r2-n1,r3-n5"),  # only neighbours merge
        (["127.0.0.1:40111", "127.0.0.1:40112"], "127.0.0.1:[40111-40112]"),
        (["[::1]:2222", "[::2]:2222", "fe80::1"], "[::1]:2222,[::2]:2222,fe80::1"),
        (["b", "a", "b"], "a,b"),
    ],
)
def test_fold_follows_clush(hosts: list[str], folded: str) -> None:
    assert fold(hosts) == folded
    assert parse_hosts(folded) == sorted(set(hosts), key=host_order)


@pytest.mark.parametrize("text", ["web[08-9]", "web[8-011]", "web[010-10]"])
def test_a_padded_range_has_one_width(text: str) -> None:
    with pytest.raises(HostSyntaxError, match="mixes widths; write"):
        parse_hosts(text)


# -- the round trip, with hypothesis ----------------------------------------------------------

_PREFIXES = ("web", "db", "node-", "r.x-", "a")
_SUFFIXES = ("", ".example", "-mgmt", ":2222", ".dc2")


@st.composite
def _canonical_ranges(draw: st.DrawFn) -> str:
    """The numbers of one bracket as fold writes them: sorted, neighbours merged, one width
    (padded to 2-4 digits, or none)."""
    width = draw(st.sampled_from([0, 2, 3, 4]))
    top = 10 ** (width or 3) - 1
    numbers = sorted(draw(st.sets(st.integers(0, top), min_size=1, max_size=30)))
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ",".join(
        str(a).zfill(width) if a == b else f"{str(a).zfill(width)}-{str(b).zfill(width)}"
        for a, b in spans
    )
    return text if text.isdigit() else f"[{text}]"


@st.composite
def _canonical_lists(draw: st.DrawFn) -> str:
    """Several expressions of distinct prefixes, suffixes and users, in fold's order."""
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["", "ops@", "u1@"]),
                st.sampled_from(_PREFIXES),
                st.sampled_from(_SUFFIXES),
            ),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    expressions = [f"{user}{prefix}{draw(_canonical_ranges())}{suffix}"
                   for user, prefix, suffix in shapes]  # fmt: skip
    expressions.sort(key=lambda e: host_order(expand(e)[0])[0])
    return ",".join(expressions)


@settings(max_examples=200, deadline=None)
@given(_canonical_lists())
def test_fold_of_expand_gives_back_a_canonical_list(text: str) -> None:
    assert fold(parse_hosts(text)) == text


_hostname = st.builds(
    lambda head, rest: head + "".join(rest),
    st.sampled_from(["", "a", "web", "r-"]),
    st.lists(
        st.builds(
            str.__add__,
            st.text("0123456789", min_size=1, max_size=3),
            st.sampled_from(["", "-n", ".", "x"]),
        ),
        max_size=3,
    ),
).filter(bool)
_host = st.builds(
    lambda user, name, port: f"{user}{name}{port}",
    st.sampled_from(["", "ops@", "u1@"]),
    _hostname,
    st.sampled_from(["", ":22", ":2222", ":2223"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_host, max_size=40))
def test_expand_of_fold_is_every_host_once_in_order(hosts: list[str]) -> None:
    folded = fold(hosts)
    assert parse_hosts(folded) == sorted(set(hosts), key=host_order)
    assert fold(parse_hosts(folded)) == folded


def test_tables_exit_codes_and_the_store_schema() -> None:
    table = plain_table(("Id", "Name", "Command"), [["1", "a", "x y"], ["10", "long-name", "z"]])
    assert table == (
        "Id  Name       Command\n--  ----       -------\n1   a          x y\n10  long-name  z\n"
    )
    assert [exit_code(s, e) for s, e in [("Completed", 0), ("Failed", 3), ("Failed", -9)]] == [
        0,
        3,
        137,
    ]
    assert [exit_code(s, None) for s in ("Failed", "Stopped", "Disconnected")] == [255, 143, 255]


def test_library_hints_become_command_line_flags() -> None:
    message = cli_message(NoSuchJob("no job with id 9 on this job host; jobs.get() lists them"))
    assert message == "no job with id 9 on this job host; 'asyncjobs get' lists them"
    assert cli_message(ValueError("two\n  lines")) == "two lines"
