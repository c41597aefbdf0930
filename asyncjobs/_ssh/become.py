"""Remote commands through ``sudo`` (``become=`` / ``--sudo``): the command line, the password
dance on the channel, and what a failed ``sudo`` means.

A command run with ``become`` is, on the host (``N`` a nonce of the job, the prompt and the
markers unguessable by what the host prints before)::

    command -v sudo >/dev/null 2>&1 || { printf '\\036asyncjobs-sudo:N:missing\\n' >&2; exit 127; }
    exec sudo -S -p '[asyncjobs-sudo:N:password]' [-u USER] -- /bin/sh -c \\
      'printf "\\036asyncjobs-sudo:N:ok\\n" >&2
    COMMAND'

(``-n`` instead of ``-S -p ...`` without a password: sudo fails at once if it wants one). The
password goes over the channel's stdin, and only when sudo's stderr shows the prompt: never on a
command line, never to a command that did not ask (a NOPASSWD rule, cached credentials). The
"ok" marker says sudo has started the command; only then does the command get its own stdin
(``input=``), so sudo can't read it as a password, nor the command the password. A second
prompt is a wrong password: the host fails with "sudo: wrong password", its stdin is closed and
its process group killed, at once. The prompts and markers are taken off stderr here and never
reach a record; sudo's own messages before the command starts (the lecture, "Sorry, try again")
are kept back, and shown only when sudo refused to run the command.

The password lives in ``Become.password`` (``repr=False``) for as long as the fan-out runs: it
is not in a record, a job's command, an error message, the job host's store, a log or an argv.

A sudo'ed command runs as another user, so the login user's kill of its process group (see
``runner``) may not reach it: sudo relays TERM, but a KILL kills sudo alone and leaves a command
that ignored TERM running as root. Once sudo has started the command, the kill therefore runs
through sudo too (``run_as``), as the same user with the same password, and falls back to the
login user's kill if sudo refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Literal

import anyio
import asyncssh
import attrs

from .._core.errors import JobArgumentError

if TYPE_CHECKING:
    from .channel import CommandChannel

#: sudo's own messages before the command starts are kept back up to this much.
_HELD_MAX: Final = 16 << 10
_MISSING_EXIT: Final = 127

Event = Literal["prompt", "ok", "missing"]


def _nonce() -> str:
    return secrets.token_hex(6)


@attrs.frozen
class Become:
    """Run remote commands through sudo: as ``user`` (None: sudo's default, root), with
    ``password`` for sudo's prompt (None: ``sudo -n``, for NOPASSWD rules)."""

    user: str | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    nonce: str = attrs.field(factory=_nonce, repr=False)

    @property
    def prompt(self) -> bytes:
        return f"[asyncjobs-sudo:{self.nonce}:password]".encode()

    @property
    def ok_mark(self) -> bytes:
        return f"\x1easyncjobs-sudo:{self.nonce}:ok\n".encode()

    @property
    def missing_mark(self) -> bytes:
        return f"\x1easyncjobs-sudo:{self.nonce}:missing\n".encode()

    def command(self, command: str) -> str:
        """``command`` (a POSIX shell command line) as run through sudo on the host."""
        n = self.nonce
        options = ["-S", "-p", self.prompt.decode()] if self.password is not None else ["-n"]
        if self.user is not None:
            options += ["-u", self.user]
        # The marker on a line of its own: a syntax error in COMMAND can't stop it.
        inner = f"printf '\\036asyncjobs-sudo:{n}:ok\\n' >&2\n{command}"
        return (
            f"command -v sudo >/dev/null 2>&1 || {{ printf '\\036asyncjobs-sudo:{n}:missing\\n'"
            f" >&2; exit {_MISSING_EXIT}; }}; exec sudo {shlex.join(options)} -- /bin/sh -c "
            f"{shlex.quote(inner)}"
        )

    def what(self) -> str:
        """How messages name it: ``sudo`` or ``sudo -u USER``."""
        return "sudo" if self.user is None else f"sudo -u {self.user}"


def make_become(become: object, password: object) -> Become | None:
    """``invoke``'s ``become=`` and ``become_password=``, checked: ``become=True`` (root),
    a user name (``"postgres"``, ``"#1001"``), or None/False (no sudo)."""
    if become is None or become is False:
        if password is not None:
            raise JobArgumentError(
                "become_password= is sudo's password: give become=True (root) or become='USER' too"
            )
        return None
    if become is True:
        user = None
    elif isinstance(become, str):
        user = become
        if not user or user != user.strip() or any(c.isspace() for c in user):
            raise JobArgumentError(
                f"become must be True (root) or a user name without spaces, got {user!r}"
            )
        if user.startswith("-"):
            raise JobArgumentError(f"become must be a user name, not an option: {user!r}")
        if any(not c.isprintable() for c in user):
            raise JobArgumentError(f"become has a control character: {user!r}")
    else:
        raise JobArgumentError(
            f"become must be True (sudo to root), a user name or None, got {type(become).__name__}"
        )
    return Become(user, _password(password))


def _password(value: object) -> bytes | None:
    # Never put the value in a message: it is a password.
    if value is None:
        return None
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise JobArgumentError("become_password is not encodable as UTF-8") from None
    elif isinstance(value, bytes):
        data = value
    else:
        raise JobArgumentError(
            f"become_password must be a str (or bytes) or None, got {type(value).__name__}"
        )
    if b"\n" in data or b"\r" in data or b"\0" in data:
        raise JobArgumentError(
            "become_password has a line break or a NUL in it: sudo reads one line; "
            "(its value is not shown here)"
        )
    return data


class _Scan:
    """Finds the prompt and the markers in sudo's stderr, across chunks; passes the rest."""

    def __init__(self, become: Become) -> None:
        self._marks: dict[bytes, Event] = {
            become.prompt: "prompt",
            become.ok_mark: "ok",
            become.missing_mark: "missing",
        }
        self._buf = b""
        self.done = False  # the command runs: what follows is its own stderr, passed as it is

    def feed(self, data: bytes) -> Iterator[bytes | Event]:
        """The bytes to pass on and the events found, in order; after "ok", the rest."""
        if self.done:
            if data:
                yield data
            return
        buf = self._buf + data
        while True:
            found = [(at, mark) for mark in self._marks if (at := buf.find(mark)) >= 0]
            if not found:
                break
            at, mark = min(found)
            if at:
                yield buf[:at]
            buf = buf[at + len(mark) :]
            yield self._marks[mark]
            if self._marks[mark] == "ok":
                self.done = True
                self._buf = b""
                if buf:
                    yield buf
                return
        keep = self._partial(buf)
        if len(buf) > keep:
            yield buf[: len(buf) - keep]
        self._buf = buf[len(buf) - keep :] if keep else b""

    def _partial(self, buf: bytes) -> int:
        """How many bytes at the end of ``buf`` may begin a marker."""
        longest = 0
        for mark in self._marks:
            for n in range(min(len(mark) - 1, len(buf)), longest, -1):
                if buf.endswith(mark[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


@attrs.define(eq=False)
class SudoState:
    """What is learnt of sudo on one channel; the runner asks it for the failure, if any."""

    become: Become
    #: sudo has started the command (its "ok" marker came)
    started: bool = False
    prompts: int = 0
    failure: Literal["wrong password", "missing", "no start"] | None = None
    timeout: float = 30.0
    held: bytearray = attrs.field(factory=bytearray, repr=False)

    def channel(self, inner: CommandChannel) -> SudoChannel:
        return SudoChannel(inner, self)

    def reason(
        self,
        where: str,
        location: str,
        status: int | None,
        *,
        killed: bool,
    ) -> str | None:
        """Why the job failed because of sudo, or None: what was found on the channel (a wrong
        password, no sudo, no start), or a sudo that exited before it started the command
        (not ``killed`` by us: a stop, a timeout)."""
        what = self.become.what()
        if self.failure == "wrong password":
            return f"{where}: sudo: wrong password ({what} asked again; nothing ran)"
        if self.failure == "missing":
            return f"{where}: sudo: not found on {location}; install it there, or run without sudo"
        if self.failure == "no start":
            return (
                f"{where}: {what} did not start the command within {self.timeout:g} s (no "
                "prompt of ours, and no start; a PAM prompt of its own?); it was killed"
            )
        if self.started or killed or status is None:
            return None
        said = self.message()
        if status == 0:  # sudo ended well without running the command: not ours to judge
            return None
        tail = f": {said}" if said else ""
        if self.become.password is None and "password" in said:
            tail += " (give it one: --ask-pass, become_password=; or a NOPASSWD sudoers rule)"
        return f"{where}: {what} refused to run the command (exit status {status}){tail}"

    def message(self) -> str:
        """sudo's first line before the command would have started (its reason; what follows
        is often a consequence: "error initializing audit plugin")."""
        lines = [
            line.strip()
            for line in bytes(self.held).decode("utf-8", "replace").splitlines()
            if line.strip()
        ]
        return lines[0] if lines else ""


class SudoChannel(asyncssh.SSHClientSession[bytes]):
    """The asyncssh session of a sudo'ed command: it answers sudo's prompt, takes the markers
    off stderr, holds the command's stdin back until sudo has started it, and hands everything
    else to the ``CommandChannel`` it wraps."""

    def __init__(self, inner: CommandChannel, state: SudoState) -> None:
        self.inner = inner
        self._state = state
        self._scan = _Scan(state.become)
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._session_started = False  # asyncssh said so (the command line is running)
        self._released = False  # the inner channel was told: its input flows now
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        self.inner.connection_made(chan)

    def session_started(self) -> None:
        self._session_started = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._state.timeout, self._no_start)
        if self._state.started:  # the marker came first
            self._release()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._released:
            self.inner.resume_writing()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype != asyncssh.EXTENDED_DATA_STDERR:
            self.inner.data_received(data, datatype)
            return
        for item in self._scan.feed(data):
            if isinstance(item, bytes):
                if self._state.started:
                    self.inner.data_received(item, datatype)
                elif len(self._state.held) < _HELD_MAX:
                    self._state.held += item[: _HELD_MAX - len(self._state.held)]
            else:
                self._event(item)

    def _event(self, event: Event) -> None:
        state = self._state
        if event == "ok":
            state.started = True
            state.held.clear()  # the lecture and the like: sudo went on
            self._cancel_timer()
            if self._session_started:
                self._release()
        elif event == "missing":
            self._fail("missing")
        elif state.prompts == 0 and state.become.password is not None:
            state.prompts += 1
            self._write(state.become.password + b"\n")
        else:
            state.prompts += 1
            self._fail("wrong password")

    def _write(self, data: bytes) -> None:
        # closed for sending: sudo is gone, and its exit says why
        with contextlib.suppress(Exception):
            if self._chan is not None:
                self._chan.write(data)

    def _fail(self, why: Literal["wrong password", "missing", "no start"]) -> None:
        """Stop feeding sudo and make the runner kill the group (``drain()`` returns)."""
        if self._state.failure is None and not self._state.started:
            self._state.failure = why
        self._cancel_timer()
        if self._chan is not None:
            with contextlib.suppress(Exception):  # already closed for sending
                self._chan.write_eof()
        self.inner.interrupt()

    def _no_start(self) -> None:
        self._timer = None
        if not self._state.started and self._state.failure is None:
            self._fail("no start")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.inner.session_started()  # its input, then EOF

    def eof_received(self) -> bool:
        self._end()
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.inner.connection_lost(exc)

    def _end(self) -> None:
        self._cancel_timer()
        if self._ended:
            return
        self._ended = True
        rest = self._scan.flush()
        if rest and self._state.started:
            self.inner.data_received(rest, asyncssh.EXTENDED_DATA_STDERR)
        elif rest:
            self._state.held += rest[: max(0, _HELD_MAX - len(self._state.held))]
        state = self._state
        if not state.started and state.failure is None and state.held:
            # sudo refused (not in sudoers, a password wanted, an unknown user): its words, as
            # the command's stderr would have been
            self.inner.data_received(bytes(state.held), asyncssh.EXTENDED_DATA_STDERR)


async def run_as(
    conn: asyncssh.SSHClientConnection, script: str, become: Become, timeout: float
) -> int | None:
    """Run ``script`` (no input, output ignored) through sudo as ``become`` says: its exit
    status, or None if sudo did not run it (refused, a wrong password, no sudo, too slow)."""
    scan = _Scan(become)
    started = False
    proc = await conn.create_process(become.command(script), encoding=None)
    try:
        with anyio.move_on_after(timeout):
            prompts = 0
            while not started:
                data = await proc.stderr.read(4096)
                if not data:
                    break
                for item in scan.feed(data):
                    if item == "ok":
                        started = True
                    elif item == "prompt" and prompts == 0 and become.password is not None:
                        prompts += 1
                        proc.stdin.write(become.password + b"\n")
                    elif item in ("prompt", "missing"):
                        proc.stdin.write_eof()
                        return None
            proc.stdin.write_eof()
            if not started:
                return None
            await proc.wait()
            status = proc.exit_status
            return status if status is not None and status >= 0 else None
        return None
    finally:
        proc.close()
