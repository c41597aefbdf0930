"""The ``asyncjobs`` command line (``python -m asyncjobs``).

Start-up must stay fast (``asyncjobs --help`` < 150 ms): this module and ``_app`` import only
click at their top; anyio's backends, asyncssh, rich and sqlite are imported by the commands
that use them.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    from ._app import run_cli

    return run_cli(argv)


__all__ = ["main"]
