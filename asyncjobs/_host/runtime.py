"""The pure-Python runtime that a remote host needs to run a job host: asyncjobs and the
pure-Python packages it stands on, in one version-stamped, hash-checked zip.

The controller builds it from its own installed packages (deterministically: sorted names,
fixed timestamps, so the hash only changes when the code does), and installs it into a
per-user cache on the host over the SSH connection it already has: no pip, no network access
from the host, nothing but ``python3`` (3.11 or newer) there. Python imports the zip directly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Final

import attrs

from .._version import __version__

#: What a job host imports: asyncjobs and the pure-Python dependencies of anyio and attrs
#: (asyncssh and trio are not needed on a job host).
PACKAGES: Final = ("asyncjobs", "anyio", "attr", "attrs", "idna", "sniffio", "typing_extensions")
MIN_PYTHON: Final = (3, 11)


@attrs.frozen
class Runtime:
    """The zip's bytes, its sha256, and the file name it is installed under."""

    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return f"asyncjobs-{__version__}-{self.sha256[:16]}.zip"


def _files(package: str) -> list[tuple[str, Path]]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return []  # not installed here (e.g. sniffio with a newer anyio): not needed either
    origin = Path(spec.origin)
    if spec.submodule_search_locations is None:  # a single module file
        return [(origin.name, origin)]
    root = origin.parent
    return [
        (f"{package}/{path.relative_to(root).as_posix()}", path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in (".py", ".typed") and "__pycache__" not in path.parts
    ]


@functools.cache
def build_runtime() -> Runtime:
    """The runtime zip of this controller's code (built once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for name, path in _files(package):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    return Runtime(data, hashlib.sha256(data).hexdigest())


_HASH: Final = (
    "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"
)


def check_script(runtime: Runtime) -> str:
    """A POSIX sh script run on the host: prints ``ok PATH`` if the right runtime is there,
    ``missing PATH`` if not, or ``old-python VERSION`` if python3 is too old."""
    minimum = ", ".join(map(str, MIN_PYTHON))
    return (
        f'd="${{XDG_CACHE_HOME:-$HOME/.cache}}/asyncjobs"; f="$d/{runtime.name}"; '
        f"python3 -c 'import sys; sys.exit(sys.version_info < ({minimum},))' 2>/dev/null || "
        '{ echo "old-python $(python3 -V 2>&1)"; exit 0; }; '
        f'if [ -f "$f" ] && [ "$(python3 -c "{_HASH}" "$f")" = {runtime.sha256} ]; '
        'then echo "ok $f"; else echo "missing $f"; fi'
    )


def install_script(runtime: Runtime) -> str:
    """A POSIX sh script that stores stdin as the runtime, only if its hash is right."""
    return (
        f'd="${{XDG_CACHE_HOME:-$HOME/.cache}}/asyncjobs"; f="$d/{runtime.name}"; '
        'umask 077; mkdir -p "$d" && t="$f.$$.tmp" && cat > "$t" && '
        f'[ "$(python3 -c "{_HASH}" "$t")" = {runtime.sha256} ] && mv "$t" "$f" && '
        'echo "ok $f" || { rm -f "$t"; echo "hash mismatch"; exit 1; }'
    )


#: Runs a module of the runtime zip (``argv[1]``) in an isolated Python (``-I``): the zip is put
#: on ``sys.path`` by hand, not through ``PYTHONPATH``, so the user's ``PYTHONPATH`` and user site
#: cannot shadow the runtime's packages, and the environment stays the user's for what the bridge
#: starts (the job host, and so every job there). ``-I`` also keeps the directory the shell runs
#: in off ``sys.path``.
BOOT: Final = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def boot_argv(python: str, path: str, module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` with only the runtime zip ``path`` added."""
    return [python, "-I", "-c", BOOT, path, module, *args]


def bridge_command(path: str) -> str:
    """Run the bridge to the host's job host from the installed runtime."""
    return "exec " + " ".join(
        _quote(w) for w in boot_argv("python3", path, "asyncjobs._host.bridge")
    )
