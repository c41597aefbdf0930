"""``invoke --outdir DIR``: each host's stdout and stderr in files of their own, as pssh -o
lays them out (``DIR/<host>.out``, ``DIR/<host>.err``), written as they arrive.

The host is named as written on the command line (``web01``, ``ops@db1:2222``), made safe as
a file name (``safe_name``). The bytes are written raw, a chunk at a time as the host sent
them (no tags, no line splitting), to files opened only while their host runs: a fan-out to a
thousand hosts never holds two thousand files open.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO, Any

from ._terminal import _PREFIX, value_text


def safe_name(location: str) -> str:
    """A host as written, made safe as one file name: no ``/`` or NUL (each becomes ``_``),
    never ``.``, ``..`` or empty."""
    name = location.replace("/", "_").replace("\0", "_")
    return name if name.strip(".") else f"_{name}"


class OutDir:
    """``--outdir DIR``: each host's stdout and stderr in ``DIR/<host>.out`` / ``.err``, written
    as they arrive (pssh's layout). Both files are made for every host before anything
    connects (empty if it sent nothing), and open only while their host sends. A host written
    twice gets ``<host>~2.out`` the second time. Other streams go to ``.err`` with their prefix
    (``WARNING: ...``), as the screen shows them."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._names: dict[str, list[str]] = {}  # location -> its file stems, in order
        self._files: dict[str, dict[str, IO[bytes]]] = {}  # stem -> {"output": file, "error": file}

    def prepare(self, locations: Sequence[str]) -> None:
        """Make the directory and every host's two files (raises ``OSError``)."""
        os.makedirs(self.directory, exist_ok=True)
        seen: dict[str, int] = {}
        for location in locations:
            stem = safe_name(location)
            seen[stem] = count = seen.get(stem, 0) + 1
            if count > 1:
                stem = f"{stem}~{count}"
            self._names.setdefault(location, []).append(stem)
            for suffix in (".out", ".err"):
                with open(os.path.join(self.directory, stem + suffix), "wb"):
                    pass

    def stem(self, location: str) -> str:
        """The file stem of the next host written as ``location`` to be followed."""
        stems = self._names.get(location)
        if not stems:  # not prepared (the job host's own location, without -H)
            self.prepare([location])
            stems = self._names[location]
        return stems.pop(0) if len(stems) > 1 else stems[0]

    def write(self, stem: str, stream: str, value: Any) -> None:
        files = self._files.get(stem)
        if files is None:
            files = self._files[stem] = {
                name: open(os.path.join(self.directory, stem + suffix), "ab", buffering=0)  # noqa: SIM115 - closed by close()
                for name, suffix in (("output", ".out"), ("error", ".err"))
            }
        if not isinstance(value, bytes) or stream not in ("output", "error"):
            text = _PREFIX.get(stream, "") + value_text(value) + "\n"
            value = text.encode("utf-8", "surrogateescape")
            stream = "output" if stream in ("output", "information") else "error"
        files[stream].write(value)

    def close(self, stem: str) -> None:
        for file in self._files.pop(stem, {}).values():
            file.close()

    def close_all(self) -> None:
        for stem in list(self._files):
            self.close(stem)
