"""The job host's log: one line per event worth a look, on its stderr (``host.log``).

A full disk or a closed stderr must never make the host fail, so writing never raises.
"""

from __future__ import annotations

import contextlib
import sys


def log(message: str) -> None:
    """A line in host.log (the host's stderr); a full disk must not make it fail."""
    with contextlib.suppress(OSError, ValueError):
        print(f"asyncjobs job host: {message}", file=sys.stderr, flush=True)
