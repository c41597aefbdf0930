"""The job host of a remote machine, over an SSH connection: the runtime, the bridge channel.

On first use the controller makes sure the host has this version's runtime (``_host.runtime``:
hash-checked, installed into the user's cache through the connection if it is missing), then
runs the bridge on a channel (``python3 -m asyncjobs._host.bridge``), which joins the channel to the
user's job host there, starting it if needed. The rest is the same protocol, client and host
as on this machine. ``Session.jobs`` opens its bridge through ``open_bridge``;
``get_sessions(host)`` lists a host's sessions through ``remote_sessions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc
import asyncssh

from .._core.errors import AsyncJobsError
from .._host.client import HostSession, open_host_session
from .._host.protocol import SessionInfo
from .._host.runtime import bridge_command, build_runtime, check_script, install_script
from .._ssh.session import map_ssh_errors, open_connection, where_of

if TYPE_CHECKING:
    from .._ssh.targets import Target


@final
class ChannelStream(anyio.abc.ByteStream):
    """An SSH channel (the bridge's stdin and stdout) as an anyio byte stream."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._process.stdout.read(max_bytes)
        except (asyncssh.Error, OSError) as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            self._process.stdin.write(item)
            await self._process.stdin.drain()
        except (asyncssh.Error, OSError) as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        self._process.stdin.write_eof()

    async def aclose(self) -> None:
        self._process.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._process.wait_closed()


async def ensure_runtime(conn: asyncssh.SSHClientConnection, where: str) -> str:
    """The path of this version's runtime on the host, installing it if it is not there."""
    runtime = build_runtime()
    with map_ssh_errors(where):
        found = await conn.run(check_script(runtime), check=False)
    answer = str(found.stdout or "").strip()
    if answer.startswith("ok "):
        return answer[3:]
    if answer.startswith("old-python"):
        raise AsyncJobsError(
            f"{where}: a job host needs python3 >= 3.11 on the host; it has "
            f"{answer.removeprefix('old-python').strip() or 'none'}"
        )
    if not answer.startswith("missing "):
        raise AsyncJobsError(
            f"{where}: could not check for the asyncjobs runtime (python3 missing?): "
            f"{answer or str(found.stderr or '').strip()}"
        )
    with map_ssh_errors(where):
        installed = await conn.run(
            install_script(runtime), input=runtime.data, check=False, encoding=None
        )
    out = installed.stdout or b""
    text = (out if isinstance(out, str) else out.decode(errors="replace")).strip()
    if installed.exit_status != 0 or not text.startswith("ok "):
        raise AsyncJobsError(f"{where}: installing the asyncjobs runtime failed: {text}")
    return text[3:]


async def open_bridge(
    conn: asyncssh.SSHClientConnection,
    where: str,
    location: str,
    *,
    name: str | None,
    create: bool,
    **options: Any,
) -> HostSession:
    """A session on the host's job host, through a bridge channel on ``conn``."""
    path = await ensure_runtime(conn, where)
    with map_ssh_errors(where):
        process = await conn.create_process(bridge_command(path), encoding=None)
    stream = ChannelStream(process)
    try:
        return await open_host_session(
            stream, name=name, create=create, location=location, **options
        )
    except BaseException:
        await stream.aclose()
        raise


async def remote_sessions(target: Target, options: dict[str, Any]) -> list[SessionInfo]:
    """``get_sessions(host)``: the sessions of that host's job host."""
    conn, _ = await open_connection(target, options)
    where = where_of(conn, target)  # the user, address and port actually used
    try:
        host = await open_bridge(conn, where, target.location, name=None, create=False)
        try:
            return await host.sessions()
        finally:
            await host.disconnect()
    finally:
        conn.close()
        await conn.wait_closed()
