"""Whether a file an SSH option names can be read: checked before connecting, by the API and
the command line (which must not import asyncssh just to say ``-i /nope: no such file``)."""

from __future__ import annotations

import os


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` can't be read as a file (``no such file``, ...), or None if it can."""
    text = os.path.expanduser(os.fspath(path))
    if not os.path.exists(text):
        return "no such file"
    if os.path.isdir(text):
        return "is a directory, not a file"
    if not os.access(text, os.R_OK):
        return "is not readable"
    return None
