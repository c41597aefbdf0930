"""mkdocs hooks of the docs site (``mkdocs.yml`` names this file; it is not published).

- Every public name (``asyncjobs.__all__`` and ``asyncjobs.testing.__all__``) must have a
  ``::: asyncjobs.NAME`` entry on a page under ``reference/``: the build fails naming the ones
  that have none, so a name added to ``__all__`` cannot go undocumented.
- A page may link to a file of the repository outside ``docs/`` (``../benchmarks/README.md``):
  the file must exist (else the build fails), and on the site the link becomes the file's path
  as code, since the site holds only ``docs/``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
_ENTRY = re.compile(r"^::: (asyncjobs(?:\.testing)?)\.(\w+)\s*$", re.MULTILINE)
_OUTSIDE = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)#\s]+)(?:#[^)]*)?\)")


def _public_names(init: Path) -> set[str]:
    """``__all__`` of a package, read from its source (nothing is imported)."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise PluginError(f"{init} has no __all__")


def on_files(files: Any, config: Any) -> Any:
    docs = Path(config["docs_dir"])
    documented: dict[str, set[str]] = {"asyncjobs": set(), "asyncjobs.testing": set()}
    for page in sorted((docs / "reference").glob("*.md")):
        for package, name in _ENTRY.findall(page.read_text(encoding="utf-8")):
            documented[package].add(name)
    wanted = {
        "asyncjobs": _public_names(ROOT / "asyncjobs" / "__init__.py"),
        "asyncjobs.testing": _public_names(ROOT / "asyncjobs" / "testing" / "__init__.py"),
    }
    missing = sorted(
        f"{package}.{name}"
        for package, names in wanted.items()
        for name in names - documented[package]
    )
    if missing:
        raise PluginError(
            "public names without an API reference entry (add `::: NAME` to a page under "
            f"docs/reference/): {', '.join(missing)}"
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    source = Path(config["docs_dir"]) / page.file.src_path

    def outside(m: re.Match[str]) -> str:
        target = (source.parent / m["target"]).resolve()
        if not target.exists():
            raise PluginError(f"{page.file.src_path}: {m['target']} does not exist")
        return f"{m['text']} (`{target.relative_to(ROOT).as_posix()}` in the repository)"

    return _OUTSIDE.sub(outside, markdown)
