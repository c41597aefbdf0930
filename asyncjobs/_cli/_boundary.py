"""The command line's one error boundary: a command's async body runs on asyncio here; any
failure becomes one line on stderr (its traceback only with ``--debug``) and a non-zero exit
status; ``--json`` gets its document either way."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ._hosts import HostSyntaxError
from ._options import DEBUG, JSON, JSON_LINES, where_of


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def run(name: str, body: Callable[..., Awaitable[None]], /, *args: Any, **kwargs: Any) -> None:
    """Run a command's body on asyncio; errors become one line; ``--json`` gets its document."""
    from ._output import Result
    from ._terminal import Screen
    from ._text import cli_message, error_json

    ctx = click.get_current_context()
    screen = Screen(json=bool(ctx.meta.get(JSON)), json_lines=bool(ctx.meta.get(JSON_LINES)))
    result = Result(name)
    try:
        try:
            import anyio

            anyio.run(functools.partial(body, screen, result, *args, **kwargs), backend="asyncio")
        except BaseException as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, KeyboardInterrupt | BrokenPipeError):
                raise leaf from None
            if not isinstance(leaf, Exception):
                raise
            result.error = error_json(leaf)
            result.exit_status = 2 if isinstance(leaf, HostSyntaxError) else 1
            if ctx.meta.get(DEBUG):
                import traceback

                traceback.print_exception(exc)
            say(describe(leaf, cli_message(leaf)))
        if screen.json:
            result.dump(sys.stdout)
        sys.stdout.flush()
    except KeyboardInterrupt:
        say("interrupted")
        ctx.exit(130)
    except BrokenPipeError:  # `asyncjobs get | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        ctx.exit(141)
    ctx.exit(result.exit_status)


def describe(exc: BaseException, message: str) -> str:
    """Our errors as they are; anything else (a bug) names its type and the way to see more."""
    from .._core.errors import AsyncJobsError

    if isinstance(exc, AsyncJobsError | OSError | click.ClickException):
        return message
    return f"{type(exc).__name__}: {message} (--debug shows the traceback)"


def say(line: str) -> None:
    sys.stderr.write(f"asyncjobs: {line}\n")
    sys.stderr.flush()


async def _raise(screen: Any, result: Any, exc: BaseException) -> None:
    raise exc


def fail(name: str, exc: BaseException) -> None:
    """Report an error found before the command ran (a bad host list) like any other."""
    run(name, _raise, exc)


def run_on(
    name: str,
    body: Callable[..., Awaitable[None]],
    host: str | None,
    ssh: dict[str, Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Run ``body`` on the job host ``-H`` names (a bad host is reported like any error)."""
    try:
        where = where_of(host, ssh)
    except HostSyntaxError as exc:
        fail(name, exc)
        return
    run(name, body, where, *args, **kwargs)
