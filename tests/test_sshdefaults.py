"""asyncjobs's SSH client defaults (``asyncjobs._ssh.defaults``): the rules, then what real sshd
negotiates. Silent network cuts, which the keepalives are for, are in test_netcut.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import asyncjobs
from asyncjobs._ssh.defaults import (
    AES_FIRST,
    KEEPALIVE_COUNT_MAX,
    KEEPALIVE_INTERVAL,
    cpu_has_aes,
    with_client_defaults,
)
from tests.testhosts import TestHosts

DEFAULTS = {
    "encryption_algs": list(AES_FIRST),
    "keepalive_interval": KEEPALIVE_INTERVAL,
    "keepalive_count_max": KEEPALIVE_COUNT_MAX,
}


def config(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "config"
    path.write_text(text)
    return {"config": [str(path)], "username": "u"}


def test_defaults_added_where_nothing_chooses(tmp_path: Path) -> None:
    options = config(tmp_path, "Host *\n  User someone\n")
    assert with_client_defaults(options, aes=True) == {**options, **DEFAULTS}
    assert "encryption_algs" not in options  # the caller's dict is not changed
    without_aes = with_client_defaults(options, aes=False)
    assert "encryption_algs" not in without_aes  # no AES instructions: asyncssh's order
    assert without_aes["keepalive_interval"] == KEEPALIVE_INTERVAL


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Ciphers aes256-ctr\n", {"encryption_algs"}),
        ("Host db\n    ciphers chacha20-poly1305@openssh.com\n", {"encryption_algs"}),
        ("ServerAliveInterval 60\n", {"keepalive_interval", "keepalive_count_max"}),
        ("Host *\n  serveralivecountmax 10\n", {"keepalive_interval", "keepalive_count_max"}),
        ("Include ~/x\n", set(DEFAULTS)),
    ],
)
def test_the_users_ssh_config_wins(tmp_path: Path, text: str, kept: set[str]) -> None:
    options = config(tmp_path, text)
    got = with_client_defaults(options, aes=True)
    assert {k for k in DEFAULTS if k not in got} == kept


def test_an_explicit_choice_wins() -> None:
    for algs in (["chacha20-poly1305@openssh.com"], "default"):
        options = {"encryption_algs": algs, "keepalive_interval": 0, "config": None}
        assert with_client_defaults(options, aes=True) is options
    count_only = with_client_defaults({"config": None, "keepalive_count_max": 9}, aes=False)
    assert count_only == {"config": None, "keepalive_count_max": 9}


def test_no_config_at_all_and_a_missing_file(tmp_path: Path) -> None:
    assert with_client_defaults({"config": None}, aes=True) == {"config": None, **DEFAULTS}
    missing = {"config": [tmp_path / "nope"]}
    assert with_client_defaults(missing, aes=True) == {**missing, **DEFAULTS}


def test_cpu_has_aes_reads_this_cpu() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():  # not Linux: the answer comes from platform facts, not this file
        assert isinstance(cpu_has_aes(), bool)
        return
    words = {
        word
        for line in cpuinfo.read_text().splitlines()
        if line.split(":")[0].strip() in ("flags", "Features")
        for word in line.split(":", 1)[1].split()
    }
    assert cpu_has_aes() is ("aes" in words)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_what_real_sshd_negotiates(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    options = ssh_hosts.ssh_options()
    expected = "aes128-gcm@openssh.com" if cpu_has_aes() else "chacha20-poly1305@openssh.com"
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        assert s.connection.get_extra_info("recv_cipher") == expected
        assert await s.invoke("echo ok") == ["ok"]  # keepalives on: commands run as before
    chosen: dict[str, Any] = {**options, "encryption_algs": ["chacha20-poly1305@openssh.com"]}
    async with asyncjobs.connect(host.address, host.port, **chosen) as s:
        assert s.connection.get_extra_info("recv_cipher") == "chacha20-poly1305@openssh.com"


# -- the SSH config beyond asyncssh (asyncjobs._ssh.config) ------------------------------------


def test_the_config_resolves_the_real_host_user_and_port(tmp_path: Path) -> None:
    from asyncjobs._ssh.config import resolve

    path = tmp_path / "config"
    path.write_text(
        "Host web1\n  HostName 10.0.0.7\n  Port 2222\n  User ops\n"
        "  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n"
        "Host *\n  StrictHostKeyChecking no\n"
    )
    options = {"config": [str(path)]}
    web1 = resolve("web1", (), options)
    assert (web1.host, web1.port, web1.username) == ("10.0.0.7", 2222, "ops")
    assert web1.where == "host web1 (ops@10.0.0.7:2222)"
    assert (web1.strict, web1.hash_known_hosts) == ("accept-new", True)
    chosen = resolve("web1", 22, {**options, "username": "me"})  # the caller's word wins
    assert chosen.where == "host web1 (me@10.0.0.7:22)"
    other = resolve("10.0.0.8", (), {**options, "username": "me"})
    assert (other.where, other.strict) == ("host me@10.0.0.8:22", "no")
    assert resolve("::1", 2200, {"config": [], "username": "u"}).where == "host u@[::1]:2200"
    path.write_text("Host x\n  Port notanumber\n")
    with pytest.raises(asyncjobs.JobArgumentError, match="can't read SSH config"):
        resolve("x", (), options)


def test_check_files_names_the_option_and_the_path(tmp_path: Path) -> None:
    from asyncjobs._ssh.config import check_files

    key = tmp_path / "key"
    key.write_text("")
    check_files({"client_keys": [str(key), (str(key), str(key))], "known_hosts": None})
    check_files({"client_keys": [b"key data"], "known_hosts": ([], [], [])})  # not files
    cases: list[tuple[dict[str, Any], str]] = [
        ({"client_keys": [str(key), "/nope"]}, "client_keys='/nope': no such file"),
        ({"known_hosts": tmp_path}, f"known_hosts={str(tmp_path)!r}: is a directory"),
        ({"config": "/nope"}, "config='/nope': no such file"),
    ]
    for options, named in cases:
        with pytest.raises(asyncjobs.JobArgumentError, match=named):
            check_files(options)
