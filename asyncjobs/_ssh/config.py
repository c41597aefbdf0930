"""What the SSH client config says for one host, read as OpenSSH reads it, and what asyncjobs
does with it beyond asyncssh: errors that name the host, user and port actually used, host
keys checked by ``StrictHostKeyChecking``, and the files a caller named checked up front.

- **The real destination.** ``HostConfig`` is a host's ``HostName``, ``Port`` and ``User`` as
  the config resolves them (asyncssh's own config reader does the reading), so that a message
  about ``down01`` says ``host down01 (ops@10.0.0.7:2222)``, not a port 22 it never used.
- **StrictHostKeyChecking**, which asyncssh ignores: ``yes`` (and ``ask``, since nobody can be
  asked) refuse an unknown host; ``accept-new`` adds an unknown host's key to the user's
  known_hosts file in effect and refuses a changed key; ``no`` (``off``) adds unknown keys too
  and lets a changed key through, warning once per host. Without the option it stays strict:
  an unknown host is refused, never trusted on first use. ``HashKnownHosts yes`` hashes the
  names it adds, as ssh does.
- **Files.** A known_hosts file that the config names but that does not exist holds no keys
  (asyncssh would fail every connection with ``No such file or directory``), and an
  ``IdentityFile`` that does not exist is skipped, as OpenSSH skips it. A file the caller named
  (``client_keys=``, ``known_hosts=``, ``config=``) must exist: ``check_files`` says which
  one is missing before anything connects.
"""

from __future__ import annotations

import base64
import functools
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import shlex
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import asyncssh
import asyncssh.config as _asyncssh_config
import attrs
from asyncssh.config import SSHClientConfig, SSHConfig

from .._core.errors import JobArgumentError
from .files import file_problem as file_problem

log = logging.getLogger("asyncjobs")

Strictness = Literal["yes", "accept-new", "no"]
#: The known_hosts file OpenSSH adds keys to when the config names none.
DEFAULT_KNOWN_HOSTS: Final = Path("~", ".ssh", "known_hosts")
#: A known_hosts that trusts nothing (asyncssh reads an empty list as "the default file").
_NOTHING: Final = asyncssh.import_known_hosts("")


@functools.lru_cache(maxsize=4096)
def _tokens(line: str) -> tuple[str, ...]:
    return tuple(shlex.split(line))


def _split(s: str, comments: bool = False, posix: bool = True) -> list[str]:
    """``shlex.split``, remembered per line: asyncssh reads the whole SSH config again for
    every connection, and tokenizing its lines was most of that (about 1 ms for 30 lines, a
    sixth of a connection's CPU here); a line's tokens never change."""
    if comments or not posix:
        return shlex.split(s, comments, posix)
    return list(_tokens(s))


# asyncssh's config reader (ours too) uses nothing of shlex but split: it gets the remembering
# one; everything else of shlex stays as it is.
_asyncssh_config.shlex = types.SimpleNamespace(**{**vars(shlex), "split": _split})  # type: ignore[attr-defined,assignment]


class _ClientConfig(SSHClientConfig):
    """asyncssh's client config reader, also keeping the two options it does not read."""

    _handlers = {  # noqa: RUF012 - the base class declares it so
        **SSHClientConfig._handlers,
        "stricthostkeychecking": ("StrictHostKeyChecking", SSHConfig._set_string),
        "hashknownhosts": ("HashKnownHosts", SSHConfig._set_bool),
    }


@attrs.frozen
class HostConfig:
    """One host as the SSH config resolves it, and how its host key is to be checked."""

    alias: str  # the name as written (a Host alias, or the address itself)
    host: str  # HostName
    port: int
    username: str
    strict: Strictness = "yes"
    strict_text: str = "yes"  # as the config says it, for messages
    hash_known_hosts: bool = False
    host_key_alias: str | None = None
    #: ``UserKnownHostsFile`` (None: not set), ``GlobalKnownHostsFile``
    user_known_hosts: tuple[str, ...] | None = None
    global_known_hosts: tuple[str, ...] = ()
    #: ``IdentityFile`` (None: not set)
    identity_files: tuple[str, ...] | None = None
    #: ``ProxyJump`` (``none`` or not set: None), the hops as written
    proxy_jump: str | None = None

    @property
    def destination(self) -> str:
        """``user@host:port``, as actually connected to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.username}@{host}:{self.port}"

    @property
    def where(self) -> str:
        """How messages name the host: ``host ops@10.0.0.7:22``, or for an alias
        ``host web1 (ops@10.0.0.7:22)``."""
        if self.alias == self.host:
            return f"host {self.destination}"
        return f"host {self.alias} ({self.destination})"


def _config_paths(config: object) -> list[str]:
    """The files asyncssh reads for ``config=`` (``()``: ``~/.ssh/config`` if readable)."""
    if config is None:
        return []
    if config == ():
        default = Path("~", ".ssh", "config").expanduser()
        return [str(default)] if os.access(default, os.R_OK) else []
    if isinstance(config, str | os.PathLike):
        return [os.fspath(config)]
    if isinstance(config, Sequence):
        return [os.fspath(p) for p in config if isinstance(p, str | os.PathLike)]
    return []


def resolve(host: str, port: int | tuple[()], options: Mapping[str, Any]) -> HostConfig:
    """``host`` (and ``port``, ``username=`` when given) as the SSH config of ``options``
    resolves them. A config that can't be read or parsed is a ``JobArgumentError`` naming it."""
    try:
        local_user = getpass.getuser()
    except (KeyError, OSError):
        local_user = "?"
    username = options.get("username", ())
    paths = _config_paths(options.get("config", ()))
    try:
        config = _ClientConfig.load(
            None, paths, False, False, False, local_user, username, host, port
        )
    except (OSError, asyncssh.ConfigParseError, ValueError) as exc:
        where = ", ".join(paths) or "the SSH config"
        raise JobArgumentError(f"can't read SSH config {where}: {exc}") from None
    strict_text = str(config.get("StrictHostKeyChecking") or "yes")
    strict: Strictness = "yes"
    if strict_text.lower() == "accept-new":
        strict = "accept-new"
    elif strict_text.lower() in ("no", "off"):
        strict = "no"
    user_files = config.get("UserKnownHostsFile")
    identities = config.get("IdentityFile")
    return HostConfig(
        alias=host,
        host=str(config.get("Hostname", host)),
        port=int(port if port != () else config.get("Port", 22)),  # type: ignore[call-overload]
        username=str(username if username != () else config.get("User", local_user)),
        strict=strict,
        strict_text=strict_text,
        hash_known_hosts=bool(config.get("HashKnownHosts", False)),
        host_key_alias=_opt_str(config.get("HostKeyAlias")),
        user_known_hosts=None if user_files is None else tuple(map(str, user_files)),  # type: ignore[call-overload]
        global_known_hosts=tuple(map(str, config.get("GlobalKnownHostsFile", ()))),  # type: ignore[call-overload]
        identity_files=None if identities is None else tuple(map(str, identities)),  # type: ignore[call-overload]
        proxy_jump=_jump(config.get("ProxyJump")),
    )


def _jump(value: object) -> str | None:
    return None if value is None or str(value).lower() == "none" else str(value)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _expand(path: str) -> str:
    return os.path.expanduser(path)


# -- host keys ------------------------------------------------------------------------------


@attrs.define
class HostKeys:
    """How one connection checks its host key: the ``known_hosts`` argument for asyncssh,
    the file that new keys go to, and the policy for a key that known_hosts does not list."""

    config: HostConfig
    #: what asyncssh gets as ``known_hosts`` (``()``: leave its default)
    known_hosts: Any
    #: the files that were consulted, for messages
    files: tuple[str, ...]
    #: where a new key is added (None: nowhere, e.g. known_hosts given as keys)
    record_to: str | None
    #: whether the policy may accept keys known_hosts does not list
    policy: bool
    #: what validation found wrong, for the error message: ("unknown" | "changed", key)
    problem: tuple[str, asyncssh.SSHKey] | None = None

    @classmethod
    def of(cls, config: HostConfig, options: Mapping[str, Any]) -> HostKeys:
        """The host key checking that ``options`` (an explicit ``known_hosts=`` wins) and the
        SSH config say for this host."""
        if "known_hosts" in options:
            given = options["known_hosts"]
            if given is None:  # the caller turned checking off
                return cls(config, (), (), None, policy=False)
            if isinstance(given, str | os.PathLike):
                paths = [os.fspath(given)]
            elif isinstance(given, list | tuple) and all(
                isinstance(p, str | os.PathLike) for p in given
            ):
                paths = [os.fspath(p) for p in given]
            else:  # keys, an SSHKnownHosts, a callable: the caller decides alone
                return cls(config, (), (), None, policy=False)
            if not paths:  # no files: trust nothing (asyncssh would read its default file)
                return cls(config, _NOTHING, (), None, policy=False)
            return cls(config, [_expand(p) for p in paths], tuple(paths), paths[0], policy=True)
        if config.user_known_hosts is not None:  # UserKnownHostsFile, maybe "none"
            named = [*config.user_known_hosts, *config.global_known_hosts]
            there = [_expand(p) for p in named if _readable(_expand(p))]
            record = config.user_known_hosts[0] if config.user_known_hosts else None
            return cls(config, there or _NOTHING, tuple(named), record, policy=True)
        default = str(DEFAULT_KNOWN_HOSTS)
        return cls(config, (), (default,), default, policy=True)

    def apply(self, options: dict[str, Any]) -> None:
        if self.known_hosts != ():
            options["known_hosts"] = self.known_hosts

    # -- called by the connection's client (asyncssh's validate_host_public_key) ---------

    def accept(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Whether to trust ``key``, which known_hosts does not list for the host: by the
        policy, adding it to known_hosts when it is new."""
        listed = self._listed(host, addr, port)
        self.problem = ("changed" if listed else "unknown", key)
        name = host if port == 22 else f"[{host}]:{port}"
        if not self.policy or self.config.strict == "yes":
            return False
        if listed and self.config.strict == "accept-new":
            return False
        if listed:  # StrictHostKeyChecking no: through, with a warning
            _warn_once(
                (name, key.public_data),
                f"Warning: {self.config.where}: its host key has CHANGED ({_files(self.files)} "
                f"holds another key for {name}; offered {_describe(key)}); connecting anyway "
                f"because StrictHostKeyChecking is {self.config.strict_text}: if the host was "
                "not reinstalled, someone may be intercepting the connection",
            )
        else:
            self._record(name, key)
        self.problem = None
        return True

    def _listed(self, host: str, addr: str, port: int) -> bool:
        """Whether known_hosts holds any key (or CA) for the host: then a key it does not
        list is a changed key, not a new host."""
        known = self.known_hosts
        if known == ():
            default = _expand(str(DEFAULT_KNOWN_HOSTS))
            known = default if _readable(default) else _NOTHING
        try:
            trusted, cas, *_ = asyncssh.match_known_hosts(
                known, host, addr, None if port == 22 else port
            )
        except (OSError, ValueError):
            return False
        return bool(trusted or cas)

    def _record(self, name: str, key: asyncssh.SSHKey) -> None:
        """Add the new key to the known_hosts file in effect, as ssh does, and say so once."""
        if (name, key.public_data) in _warned:
            return
        how = f"StrictHostKeyChecking {self.config.strict_text}"
        if self.record_to is None:
            _warn_once(
                (name, key.public_data),
                f"Warning: {self.config.where}: accepted its new {_describe(key)} ({how}); "
                "not recorded: known_hosts= is not a file",
            )
            return
        path = Path(_expand(self.record_to))
        entry = _hashed(name) if self.config.hash_known_hosts else name
        kind, data = key.export_public_key("openssh").decode().split()[:2]
        try:
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{entry} {kind} {data}\n")
        except OSError as exc:
            _warn_once(
                (name, key.public_data),
                f"Warning: {self.config.where}: accepted its new {_describe(key)} ({how}), but "
                f"could not add it to {self.record_to}: {exc.strerror or exc}",
            )
            return
        _warn_once(
            (name, key.public_data),
            f"Warning: {self.config.where}: permanently added its {_describe(key)} to "
            f"{self.record_to} ({how})",
        )

    # -- the refusal -------------------------------------------------------------------------

    def refusal(self, reason: str) -> str:
        """The message of a refused host key: what was wrong and the commands that fix it."""
        config = self.config
        where = config.where
        host = config.host_key_alias or config.host
        name = host if config.port == 22 else f"[{host}]:{config.port}"
        target = self.record_to or str(DEFAULT_KNOWN_HOSTS)
        port = "" if config.port == 22 else f"-p {config.port} "
        if self.problem is not None and self.problem[0] == "changed":
            key = self.problem[1]
            return (
                f"{where}: host key not verified: it has CHANGED ({_files(self.files)} holds "
                f"another key for {name}; offered {_describe(key)}); if the host was "
                f"reinstalled, remove the old key (ssh-keygen -R '{name}' -f {target}) and add "
                "the new one, else someone may be intercepting the connection; or pass "
                "known_hosts="
            )
        why = reason
        if self.problem is not None:
            why = f"its {_describe(self.problem[1])} is not in {_files(self.files)}"
        return (
            f"{where}: host key not verified ({why}); add it to known_hosts "
            f"(ssh-keyscan {port}{config.host} >> {target}), "
            "let your SSH config accept new hosts (StrictHostKeyChecking accept-new), or pass "
            "known_hosts="
        )


def _describe(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} key {key.get_fingerprint()}"


def _files(files: Sequence[str]) -> str:
    return " ".join(files) if files else "known_hosts"


def _hashed(name: str) -> str:
    """A known_hosts name as ``HashKnownHosts yes`` writes it: ``|1|salt|HMAC-SHA1``."""
    salt = secrets.token_bytes(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


#: (known_hosts name, key) already warned about by this process: once per host is enough.
_warned: set[tuple[str, bytes]] = set()


def _warn_once(key: tuple[str, bytes], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


# -- options given one by one (``-o Key=Value``) ------------------------------------------------


def option_names() -> dict[str, str]:
    """The client config options asyncjobs honours, by lower-case name (``"port"`` →
    ``"Port"``): those asyncssh's config reader applies, and ``StrictHostKeyChecking`` and
    ``HashKnownHosts``, which ``HostKeys`` applies. ``Host``, ``Match`` and ``Include`` are
    among them: they are config structure, not options."""
    return {key: name for key, (name, _) in _ClientConfig._handlers.items()}


def config_problem(path: str) -> tuple[int, str] | None:
    """Read ``path`` alone as an SSH client config: None if it reads, else the line of the
    first error and what is wrong there (``Invalid Port integer value: abc``)."""
    try:
        _ClientConfig.load(None, [path], False, False, False, "user", (), "host", ())
    except asyncssh.ConfigParseError as exc:
        where, _, reason = str(exc).partition(": ")
        number = where.rpartition(" line ")[2]
        return (int(number) if number.isdigit() else 0), reason or str(exc)
    except (OSError, ValueError) as exc:
        return 0, str(exc)
    return None


# -- the files a caller named ---------------------------------------------------------------


def _paths(value: object) -> list[str | os.PathLike[str]]:
    """The file paths in an asyncssh option value (a path, or a list that may hold paths and
    key/certificate pairs); keys given as objects or bytes are not files."""
    if isinstance(value, str | os.PathLike):
        return [value]
    if isinstance(value, list | tuple):
        return [p for item in value for p in _paths(item)]
    return []


#: The options whose values name files, and what such a file is.
_FILE_OPTIONS: Final = {
    "client_keys": "a private key",
    "known_hosts": "a known_hosts file (an empty one trusts nothing)",
    "config": "an OpenSSH client config",
}


def check_files(options: Mapping[str, Any]) -> None:
    """Raise ``JobArgumentError`` naming the option and the path if a file that ``options``
    name (``client_keys``, ``known_hosts``, ``config``) can't be read: before connecting, so
    that a typo is one clear error instead of one failure per host."""
    for option, what in _FILE_OPTIONS.items():
        for path in _paths(options.get(option)):
            problem = file_problem(path)
            if problem is not None:
                raise JobArgumentError(
                    f"{option}={os.fspath(path)!r}: {problem}; give the path of {what}"
                )


def usable_identities(config: HostConfig, options: dict[str, Any]) -> None:
    """Skip ``IdentityFile`` entries that do not exist, as OpenSSH does (asyncssh would fail
    the connection): set ``client_keys`` to those that do, unless the caller chose keys."""
    if "client_keys" in options or config.identity_files is None:
        return
    there = [_expand(p) for p in config.identity_files if _readable(_expand(p))]
    if len(there) != len(config.identity_files):
        options["client_keys"] = there
        options.setdefault("ignore_encrypted", True)  # as for keys from the config
