"""Warm connections for ``asyncjobs invoke`` (``--persist S``, ``--no-persist``,
``$ASYNCJOBS_PERSIST``): the fan-out runs on the SSH connections the user's local job host
holds (``_remote.warm``), so that the next invoke to the same hosts skips connecting; and
``session list --connections``, which shows them."""

from __future__ import annotations

from typing import Any

from ._access import CLI_SESSION, Link, Where
from ._terminal import Screen
from ._text import cli_message

#: ``--persist``'s default: seconds the local job host keeps a connection after its last use.
DEFAULT_PERSIST = 60.0


def persist_of(persist: float | None, no_persist: bool) -> float | None:
    """``--persist S`` / ``--no-persist`` / ``$ASYNCJOBS_PERSIST`` (``0``: off, a number: the
    default seconds): how long the local job host keeps the connections, or None (off)."""
    import os

    import click

    if no_persist:
        if persist is not None:
            raise click.BadParameter(
                "--persist and --no-persist: choose one", param_hint="'--persist'"
            )
        return None
    if persist is not None:
        return persist
    value = os.environ.get("ASYNCJOBS_PERSIST", "").strip().lower()
    if value in ("0", "no", "off", "false"):
        return None
    if not value:
        return DEFAULT_PERSIST
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(
            f"ASYNCJOBS_PERSIST={value!r}: give seconds (60) or 0 to switch it off",
            param_hint="'--persist'",
        ) from None
    return seconds if seconds > 0 else None


async def warm_engine(screen: Screen, stack: Any, persist: float) -> Any:
    """The local job host's warm engine, on a connection held for the whole invoke; None
    (and a note on stderr) if the job host can't be reached: then it connects from here."""
    from .._core.errors import AsyncJobsError
    from .._remote.warmclient import WarmEngine

    try:
        session = await stack.enter_async_context(Link(Where()).session(CLI_SESSION, patient=True))
    except (AsyncJobsError, OSError) as exc:
        screen.write(
            f"asyncjobs: the local job host can't hold connections now ({cli_message(exc)}); "
            "connecting from here",
            err=True,
        )
        return None
    return WarmEngine(session.jobs, persist)


def for_the_job_host(options: dict[str, Any]) -> dict[str, Any]:
    """SSH options as the job host (another process, maybe started elsewhere) must read them:
    paths absolute, and this shell's ssh-agent."""
    import os

    out = dict(options)
    for key in ("client_keys", "config"):
        if isinstance(out.get(key), list):
            out[key] = [os.path.abspath(p) for p in out[key]]
    if isinstance(out.get("known_hosts"), str):
        out["known_hosts"] = os.path.abspath(out["known_hosts"])
    agent = os.environ.get("SSH_AUTH_SOCK")
    if agent and "agent_path" not in out:
        out["agent_path"] = agent
    return out


CONNECTION_COLUMNS = ("Target", "User", "Port", "Channels", "Uses", "Idle", "ClosesIn")


async def list_connections(screen: Screen, result: Any) -> None:
    """``session list --connections``: the SSH connections the local job host holds for warm
    invokes (``--json``: in ``sessions``, one object per connection)."""
    async with Link(Where()).session(CLI_SESSION, patient=True) as session:
        held = await session.jobs.connections()
    result.sessions.extend(held)
    if screen.json:
        return
    if not held:
        screen.write("no connections held (asyncjobs invoke --persist S keeps them)", err=True)
        return
    rows = [
        [
            str(c.get("target")),
            str(c.get("user") or "-"),
            str(c.get("port")),
            str(c.get("channels")),
            str(c.get("uses")),
            f"{c.get('idle', 0):.0f} s",
            "in use" if c.get("expires_in") is None else f"{c['expires_in']:.0f} s",
        ]
        for c in held
    ]
    screen.table(CONNECTION_COLUMNS, rows)
