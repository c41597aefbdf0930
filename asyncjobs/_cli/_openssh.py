"""``-o Key=Value``: an OpenSSH client option for every host of a command, as ``ssh -o`` takes
it, applied the way ssh applies it.

ssh reads its ``-o`` options before any config file, and the first value it obtains for an
option is the one it keeps; so ``-o Port=2222`` wins over the ``Port`` of ``~/.ssh/config``.
asyncjobs does the same thing the same way: the ``-o`` options become a small config file that
is read before the user's own (``~/.ssh/config``, or ``-F FILE``), by asyncssh's config reader
and by ``_ssh.config`` (``StrictHostKeyChecking``, ``UserKnownHostsFile``, ``IdentityFile``).
Every option that config support understands works in ``-o``, no more: an option asyncjobs
can't honour is refused, named, before anything connects, never silently ignored.

What a dedicated flag says wins over ``-o`` (``-p``, ``-l``, ``-i``, ``--known-hosts``,
``--connect-timeout``), as a host's own ``user@`` and ``:PORT`` win over ``-l`` and ``-p``.

The file lives in the user's private job host directory, named by a hash of its content, so
that the same ``-o`` options give the same options on every invocation (a warm connection
held for them is found again).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from ._hosts import HostSyntaxError

#: Config structure, not options: ssh refuses them in ``-o`` too.
_STRUCTURE: Final = frozenset({"host", "match", "include"})
#: Options the config reader knows but asyncjobs decides itself, and why.
_OURS: Final = {
    "remotecommand": "asyncjobs runs the command it is given",
    "requesttty": "asyncjobs gives a command no terminal (its stderr stays apart); "
    "'asyncjobs enter' opens one",
}
_TIMEOUT: Final = "connecttimeout"
_BATCH: Final = "batchmode"
_STRICT: Final = "stricthostkeychecking"
_STRICT_VALUES: Final = ("yes", "accept-new", "no", "off", "ask")
#: The options an unknown one's message names (the rest are in docs/cli.md).
_COMMON: Final = (
    "User",
    "Port",
    "Hostname",
    "IdentityFile",
    "StrictHostKeyChecking",
    "UserKnownHostsFile",
    "ConnectTimeout",
    "ServerAliveInterval",
    "ProxyJump",
)


def _refuse(text: str, why: str) -> HostSyntaxError:
    return HostSyntaxError(f"-o {text!r}: {why}")


@attrs.frozen
class OpenSSHOptions:
    """The ``-o`` options of one command, checked: ``(name, value)`` in the order given."""

    items: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, given: Sequence[str]) -> OpenSSHOptions:
        """Check every ``-o`` (a known option, ``Key=Value``, a value its reader takes);
        a ``HostSyntaxError`` names the first that is wrong and what to write instead."""
        from .._ssh.config import option_names

        names = option_names()
        items = [_one(text, names) for text in given]
        options = cls(tuple(items))
        options._check_values(given)
        return options

    def _check_values(self, given: Sequence[str]) -> None:
        """The values, read by the config reader itself (``Port=abc`` is refused here); the
        file is kept only when they all read."""
        from .._ssh.config import config_problem

        path = self._path()
        if path.exists():
            return
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.text())
        problem = config_problem(str(scratch))
        if problem is None:
            os.replace(scratch, path)
            return
        scratch.unlink()
        line, reason = problem
        index = line - _HEADER_LINES - 1
        text = given[index] if 0 <= index < len(given) else " ".join(given)
        raise _refuse(text, f"{reason}; give a value as ssh_config(5) describes it")

    @property
    def connect_timeout(self) -> float | None:
        """``-o ConnectTimeout=S`` (the first one), which bounds the whole connect."""
        for name, value in self.items:
            if name.lower() == _TIMEOUT:
                return float(value)
        return None

    def text(self) -> str:
        lines = [
            f"# {name} {value}: asyncjobs never prompts\n"  # one line per -o, still
            if name.lower() == _BATCH
            else f"{name} {value}\n"
            for name, value in self.items
        ]
        return _HEADER + "".join(lines)

    def _path(self) -> Path:
        from .._host.directory import ensure_private_dir, host_dir

        digest = hashlib.sha256(self.text().encode()).hexdigest()[:20]
        return ensure_private_dir(host_dir() / "ssh-options") / f"o-{digest}.conf"

    def file(self) -> Path:
        """The config file of these options, written when they were checked (``parse``) and
        found again by its name on the next invocation."""
        path = self._path()
        if not path.exists():  # deleted since: write it again
            self._check_values([f"{k}={v}" for k, v in self.items])
        return path


_HEADER: Final = (
    "# The -o options of an asyncjobs command, read before ~/.ssh/config: the first value\n"
    "# obtained wins, as with ssh -o. Written by asyncjobs; safe to delete.\n"
)
_HEADER_LINES: Final = _HEADER.count("\n")


def _one(text: str, names: dict[str, str]) -> tuple[str, str]:
    """One ``-o``: its option's name as ssh_config(5) spells it, and its value."""
    key, equals, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        raise _refuse(text, "write -o Key=Value, as with ssh (-o Port=2222)")
    if "\n" in value or "\r" in value:
        raise _refuse(text, "a value can't span lines")
    if not value:
        raise _refuse(text, f"no value for {key}; write -o {key}=VALUE")
    lower = key.lower()
    if lower in _STRUCTURE:
        raise _refuse(text, f"{key} is config structure, not an option (as with ssh -o)")
    if lower in _OURS:
        raise _refuse(text, f"asyncjobs can't honour {key}: {_OURS[lower]}")
    if lower == _BATCH:
        if value.lower() in ("yes", "true"):
            return "BatchMode", value  # what asyncjobs always does: it never prompts
        raise _refuse(text, "asyncjobs never prompts for a password or passphrase (BatchMode yes)")
    if lower == _STRICT and value.lower() not in _STRICT_VALUES:
        raise _refuse(text, f"StrictHostKeyChecking is one of {', '.join(_STRICT_VALUES)}")
    if lower == _TIMEOUT and not _positive(value):
        raise _refuse(text, "ConnectTimeout is a number of seconds above 0")
    if lower not in names:
        raise _refuse(text, _unknown(key, names))
    return names[lower], value


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False


def honoured() -> list[str]:
    """Every option ``-o`` takes (BatchMode aside), as docs/cli.md lists them."""
    from .._ssh.config import option_names

    usable = (v for k, v in option_names().items() if k not in _STRUCTURE | _OURS.keys())
    return sorted(usable, key=str.lower)


def _unknown(key: str, names: dict[str, str]) -> str:
    usable = honoured()
    close = difflib.get_close_matches(key.lower(), [n.lower() for n in usable], n=1)
    hint = f"did you mean {names[close[0]]}? " if close else ""
    common = ", ".join(n for n in _COMMON if n.lower() in names)
    return (
        f"asyncjobs can't honour the SSH option {key} (unknown to ssh, or not supported by "
        f"asyncssh); {hint}it honours {common} and {len(usable) - len(_COMMON)} more "
        "(the list: docs/cli.md, 'SSH options')"
    )


def user_config(ssh_config: str | None) -> list[str]:
    """The user's config files after the ``-o`` file: ``-F FILE`` (``none``: none), else
    ``~/.ssh/config`` when it can be read (what asyncssh reads by default)."""
    if ssh_config is not None:
        return [] if ssh_config == "none" else [ssh_config]
    default = Path("~", ".ssh", "config").expanduser()
    return [str(default)] if os.access(default, os.R_OK) else []
