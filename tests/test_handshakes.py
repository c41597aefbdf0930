"""Handshake limits (issue 14 item 1): at most 8 SSH handshakes in flight per destination, so
that an sshd left at its default ``MaxStartups 10:30:100`` never drops a fan-out's connections,
and ``max_startups=`` caps them over all hosts.

The proof that the limit is what makes 100 targets pass: with the reset retries of
``open_connection`` switched off, the same fan-out fails hosts once the per-destination limit is
raised to 100 (sshd drops from the 11th unauthenticated connection on, 30 % and more at random),
and passes with the default limit.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from asyncjobs import JobArgumentError, JobManager, JobState
from asyncjobs._ssh import session as ssh_session
from asyncjobs._ssh.handshakes import (
    DEFAULT_PER_DESTINATION,
    HandshakeLimits,
    destination,
    handshake_limits,
    parse_hop,
)
from tests.testhosts import TestHosts

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

TARGETS = 100


def _opts(hosts: TestHosts, **extra: Any) -> dict[str, Any]:
    return {**hosts.ssh_options(), **extra}


async def _fan_out(hosts: TestHosts, **extra: Any) -> list[Any]:
    """``TARGETS`` children on the one host (sshd at its default MaxStartups), all at once."""
    host = hosts.hosts[0]
    assert hosts.max_startups is None  # sshd's own default: 10:30:100
    async with JobManager() as jobs:
        parent = await jobs.invoke(
            [f"{host.address}:{host.port}"] * TARGETS,
            "echo ok",
            throttle_limit=TARGETS,
            **_opts(hosts, **extra),
        )
        await parent.wait(timeout=120)
        children = list(parent.children)
        outputs = [await c.receive() for c in children]
    assert all(o == ["ok"] for o, c in zip(outputs, children, strict=True) if c.reason is None)
    return children


async def test_100_targets_on_one_default_sshd_all_succeed(
    fresh_ssh_host: TestHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_session, "RESET_RETRIES", 0)  # the limit alone, no retry behind it
    children = await _fan_out(fresh_ssh_host)
    failed = [c.reason for c in children if c.state is not JobState.COMPLETED]
    assert not failed, failed[:3]
    stats = handshake_limits().statistics()
    # The limit was reached and never passed, and nothing is held once all are connected.
    assert stats["peak"] == DEFAULT_PER_DESTINATION
    assert stats["in_flight"] == 0 and stats["destinations"] == 0


async def test_without_the_limit_sshd_drops_some(
    fresh_ssh_host: TestHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_session, "RESET_RETRIES", 0)
    handshake_limits().per_destination = TARGETS  # as good as no limit
    children = await _fan_out(fresh_ssh_host)
    failed = [c for c in children if c.state is JobState.FAILED]
    assert failed, "sshd at MaxStartups 10:30:100 took 100 concurrent handshakes"
    assert handshake_limits().statistics()["peak"] > 10
    assert all("reset during the handshake" in str(c.reason) for c in failed), failed[0].reason


async def test_max_startups_caps_all_destinations(ssh_hosts: TestHosts) -> None:
    """Three destinations, 8 each would allow 24 at once: ``max_startups=2`` allows two."""
    in_flight = [0]
    most = [0]
    real = ssh_session._connect_through_resets

    async def counted(*args: Any) -> Any:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            return await real(*args)
        finally:
            in_flight[0] -= 1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssh_session, "_connect_through_resets", counted)
        async with JobManager() as jobs:
            parent = await jobs.invoke(
                ssh_hosts.targets * 6, "true", max_startups=2, **ssh_hosts.ssh_options()
            )
            assert await parent.wait(timeout=60), [c.reason for c in parent.children]
    assert most[0] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
async def test_max_startups_refuses_a_bad_value(ssh_hosts: TestHosts, bad: object) -> None:
    async with JobManager() as jobs:
        with pytest.raises(JobArgumentError, match=r"max_startups must be an int >= 1"):
            await jobs.invoke(ssh_hosts.targets, "true", max_startups=bad)  # type: ignore[arg-type]


async def test_two_names_of_one_address_are_one_destination() -> None:
    found = socket.getaddrinfo("localhost", 22, socket.AF_INET, socket.SOCK_STREAM)
    address = str(found[0][4][0])
    assert await destination(address, 22) == (address, 22)
    resolved = await destination("localhost", 22)
    assert resolved[0] in {address, "::1"} and resolved[1] == 22
    assert await destination("[::1]", 2222) == ("::1", 2222)
    # Behind a jump host, a name is the jump host's to resolve: it stays a name here.
    assert await destination("Web1.internal", 22, resolve=False) == ("web1.internal", 22)
    assert await destination("no-such-host.invalid", 22) == ("no-such-host.invalid", 22)


async def test_jump_hops_parse() -> None:
    assert parse_hop("ops@jump:2222") == ("jump", 2222)
    assert parse_hop("jump") == ("jump", None)
    assert parse_hop(" [::1]:22 ") == ("::1", 22)
    assert parse_hop("ssh://me@bastion") == ("bastion", None)


async def test_slots_hold_every_hop_and_forget_idle_destinations() -> None:
    limits = HandshakeLimits(per_destination=1)
    order: list[str] = []

    async def connect(name: str, hops: list[tuple[str, int]]) -> None:
        async with limits.slots(hops):
            order.append(f"{name} in")
            await anyio.sleep(0.05)
            order.append(f"{name} out")

    jump, a, b = ("10.0.0.1", 22), ("web1", 22), ("web2", 22)
    async with anyio.create_task_group() as tg:
        tg.start_soon(connect, "a", [a, jump])
        await anyio.sleep(0.01)
        tg.start_soon(connect, "b", [jump, b])  # shares the jump host: waits for a
        await anyio.sleep(0.01)
        assert limits.statistics()["in_flight"] == 2 and limits.statistics()["waiting"] == 1
    assert order == ["a in", "a out", "b in", "b out"]
    assert limits.statistics() == {
        "per_destination": 1, "in_flight": 0, "waiting": 0, "destinations": 0, "peak": 1,
    }  # fmt: skip
    assert repr(limits) == (
        "<asyncjobs HandshakeLimits per_destination=1 in_flight=0 destinations=0>"
    )


async def test_a_jump_host_is_a_destination_of_its_own(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 targets behind one jump host, both sshds at the default MaxStartups: each sees at
    most 8 handshakes at once (the jump host's slot is held by every connection through it)."""
    monkeypatch.setattr(ssh_session, "RESET_RETRIES", 0)
    with TestHosts(2) as hosts:
        jump, target = hosts.hosts
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host jump\n  HostName {jump.address}\n  Port {jump.port}\n"
            f"  User {hosts.username}\n  IdentityFile {hosts.client_key}\n"
            f"  UserKnownHostsFile {hosts.known_hosts}\n"
            f"Host inner\n  HostName {target.address}\n  Port {target.port}\n"
            f"  ProxyJump jump\n"
        )
        options: dict[str, Any] = {**hosts.ssh_options(), "config": [str(config)]}
        from asyncjobs._ssh.config import resolve

        found = await ssh_session._destinations(resolve("inner", (), options), options)
        assert found == [(target.address, target.port), (jump.address, jump.port)]
        async with JobManager() as jobs:
            parent = await jobs.invoke(["inner"] * 60, "echo ok", throttle_limit=60, **options)
            await parent.wait(timeout=120)
            failed = [c.reason for c in parent.children if c.state is not JobState.COMPLETED]
            assert not failed, failed[:3]
        assert handshake_limits().statistics()["peak"] == DEFAULT_PER_DESTINATION
