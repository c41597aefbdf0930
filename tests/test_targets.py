"""Target strings: every accepted form, and clear errors for malformed ones."""

from __future__ import annotations

import pytest

from asyncjobs._ssh.targets import Target


@pytest.mark.parametrize(
    ("text", "expected", "location"),
    [
        ("web1", Target("web1"), "web1"),
        ("ops@web1", Target("web1", None, "ops"), "web1"),
        ("ops@db1:2222", Target("db1", 2222, "ops"), "db1:2222"),
        ("db1:22", Target("db1", 22), "db1"),
        ("127.0.0.1:2200", Target("127.0.0.1", 2200), "127.0.0.1:2200"),
        ("[::1]:2222", Target("::1", 2222), "[::1]:2222"),
        ("u@[::1]", Target("::1", None, "u"), "[::1]"),
        ("fe80::1", Target("fe80::1"), "[fe80::1]"),
        (
            "asyncjobs-test@host.example",
            Target("host.example", None, "asyncjobs-test"),
            "host.example",
        ),
    ],
)
def test_accepted_forms(text: str, expected: Target, location: str) -> None:
    target = Target.parse(text)
    assert target == expected
    assert target.location == location


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" web1", "whitespace"),
        ("web 1", "whitespace"),
        ("web1:", "port '' is not in 1..65535"),
        ("web1:0", "port '0' is not in 1..65535"),
        ("web1:70000", "port '70000' is not in 1..65535"),
        ("web1:ssh", "port 'ssh' is not in 1..65535"),
        ("@web1", "'' is not a user name"),
        ("[web1]:22", "brackets are for IPv6"),
        ("[::1]x", "expected ':port'"),
        ("a/b", "'a/b' is not a host name"),
        ("u@", "no host"),
    ],
)
def test_malformed_targets_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="bad target") as info:
        Target.parse(text)
    assert message in str(info.value)
    assert repr(text) in str(info.value)


def test_non_string_target() -> None:
    with pytest.raises(TypeError, match="host string or a Session"):
        Target.parse(42)  # type: ignore[arg-type]
