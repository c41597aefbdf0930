"""Values and errors as the command line shows them: JSON-safe values, one-line messages in
command-line words (the library's fixes, ``force=True``, spelled as flags, ``--force``)."""

from __future__ import annotations

import json
from typing import Any, Final


def plain(value: Any) -> Any:
    """A record's value as JSON can hold it (exceptions and other objects as text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return cli_message(value)
    return str(value)


def dumps(value: Any) -> str:
    # dumps, not dump: dump streams through the pure-Python encoder, 10x slower.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: The fixes library messages name (keyword arguments) as the command line spells them.
_CLI_HINTS: Final = (
    ("jobs.get() lists them", "'asyncjobs get' lists them"),
    ("or pass known_hosts=", "or pass --known-hosts FILE"),
    ("check username= and client_keys=", "check --user and -i/--identity"),
    ("(connect_timeout= sets the limit)", "(--connect-timeout sets the limit)"),
    ("stop it first or pass force=True", "stop it first or pass --force"),
    ("lower throttle_limit=", "lower --throttle"),
    ("; connect_local() starts one", ""),
)


def cli_message(exc: BaseException) -> str:
    """An exception as one line for the command line, its fix in command-line words."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for api, cli in _CLI_HINTS:
        text = text.replace(api, cli)
    return text


def error_json(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": cli_message(exc)}
