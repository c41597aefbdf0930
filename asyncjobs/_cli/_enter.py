"""``asyncjobs enter HOST``: an interactive shell on a host (Enter-PSSession), over asyncssh.

With a terminal on standard input the remote shell gets a pty of the same type and size, the
local terminal is put in raw mode (every key goes to the remote side: Ctrl-C interrupts the
remote command, not this program) and restored at the end, and window size changes follow.
Without a terminal the remote shell reads standard input as it is. ``exit`` ends the shell
and this command, with the shell's exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio

from ._output import Result
from ._terminal import Screen

if TYPE_CHECKING:
    import asyncssh

    from .._ssh.targets import Target


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode for the block, restored whatever happens."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # TCSANOW: keep keys typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns, size.lines


async def enter(
    screen: Screen, result: Result, target: Target, ssh_options: dict[str, Any]
) -> None:
    from .._ssh.session import map_ssh_errors, open_connection, where_of

    conn, _ = await open_connection(target, ssh_options)
    where = where_of(conn, target)  # the user, address and port actually used
    try:
        stdin = sys.stdin.fileno()
        interactive = os.isatty(stdin)
        with map_ssh_errors(where):
            if interactive:
                term = os.environ.get("TERM") or "xterm-256color"
                process = await conn.create_process(
                    term_type=term, term_size=_size(stdin), encoding=None
                )
            else:
                process = await conn.create_process(encoding=None)
        with raw_terminal(stdin) if interactive else contextlib.nullcontext():
            await _pump(process, stdin, interactive)
        status = process.exit_status
        result.exit_status = 255 if status is None or status < 0 else status
    finally:
        conn.close()
        with anyio.CancelScope(shield=True):
            await conn.wait_closed()


async def _pump(process: asyncssh.SSHClientProcess[bytes], stdin: int, interactive: bool) -> None:
    """Keys to the remote shell, its output to ours, until the shell exits."""
    import asyncio

    loop = asyncio.get_running_loop()

    def typed() -> None:
        try:
            data = os.read(stdin, 65536)
        except OSError:
            data = b""
        if data:
            process.stdin.write(data)
        else:  # end of our input: the remote shell gets end of file
            loop.remove_reader(stdin)
            process.stdin.write_eof()

    def resized() -> None:
        columns, lines = _size(stdin)
        process.change_terminal_size(columns, lines)

    async def copy(source: asyncssh.SSHReader[bytes], fd: int) -> None:
        while data := await source.read(65536):
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]

    loop.add_reader(stdin, typed)
    if interactive:
        loop.add_signal_handler(signal.SIGWINCH, resized)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(copy, process.stdout, sys.stdout.fileno())
            tg.start_soon(copy, process.stderr, sys.stderr.fileno())
        await process.wait_closed()
    finally:
        loop.remove_reader(stdin)
        if interactive:
            loop.remove_signal_handler(signal.SIGWINCH)
