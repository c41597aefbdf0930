"""The cipher preference (``asyncjobs._ciphers``): pure rules, then what real sshd negotiates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import asyncjobs
from asyncjobs._ciphers import AES_FIRST, cpu_has_aes, with_cipher_preference
from tests.testhosts import TestHosts


def test_aes_gcm_first_only_where_the_cpu_has_aes(tmp_path: Path) -> None:
    empty = tmp_path / "config"
    empty.write_text("Host *\n  ServerAliveInterval 30\n")
    options = {"config": [empty], "username": "u"}
    assert with_cipher_preference(options, aes=True) == {
        **options,
        "encryption_algs": list(AES_FIRST),
    }
    assert "encryption_algs" not in options  # the caller's dict is not changed
    assert with_cipher_preference(options, aes=False) is options


@pytest.mark.parametrize(
    "config_text",
    [
        "Ciphers aes256-ctr\n",
        "Host db\n    ciphers chacha20-poly1305@openssh.com\n",
        "Include ~/x\n",
    ],
)
def test_the_users_ssh_config_wins(tmp_path: Path, config_text: str) -> None:
    config = tmp_path / "config"
    config.write_text(config_text)
    options = {"config": [str(config)]}
    assert with_cipher_preference(options, aes=True) is options


def test_an_explicit_choice_wins() -> None:
    for algs in (["chacha20-poly1305@openssh.com"], "default"):
        options = {"encryption_algs": algs, "config": None}
        assert with_cipher_preference(options, aes=True) is options


def test_no_config_at_all_and_a_missing_file(tmp_path: Path) -> None:
    assert with_cipher_preference({"config": None}, aes=True)["encryption_algs"] == list(AES_FIRST)
    missing = {"config": [tmp_path / "nope"]}
    assert with_cipher_preference(missing, aes=True)["encryption_algs"] == list(AES_FIRST)


def test_cpu_has_aes_reads_this_cpu() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    words = {
        w
        for line in flags.splitlines()
        if line.split(":")[0].strip() in ("flags", "Features")
        for w in line.split(":", 1)[1].split()
    }
    if flags:
        assert cpu_has_aes() is ("aes" in words)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_what_real_sshd_negotiates(ssh_hosts: TestHosts) -> None:
    host = ssh_hosts.hosts[0]
    options = ssh_hosts.ssh_options()
    expected = "aes128-gcm@openssh.com" if cpu_has_aes() else "chacha20-poly1305@openssh.com"
    async with asyncjobs.connect(host.address, host.port, **options) as s:
        assert s.connection.get_extra_info("recv_cipher") == expected
    chosen: dict[str, Any] = {**options, "encryption_algs": ["chacha20-poly1305@openssh.com"]}
    async with asyncjobs.connect(host.address, host.port, **chosen) as s:
        assert s.connection.get_extra_info("recv_cipher") == "chacha20-poly1305@openssh.com"
