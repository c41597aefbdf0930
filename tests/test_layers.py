"""The shape of the package, checked: layers, no import cycles, and what runs without asyncssh.

Every import in a file counts (module level, under ``TYPE_CHECKING``, inside functions), as
``docs/architecture.md`` says. Layers, lowest first; a module may import its own layer and the
ones below, never above, and the two middle rooms (SSH, the job host) never each other:

    _version, _core  ->  _local  ->  _ssh | _host  ->  _remote  ->  asyncjobs (the facade)  ->  _cli

``asyncjobs.testing`` (the sshd test hosts for users' tests) stands beside them all: it may
import the public facade ``asyncjobs`` and nothing internal (no ``asyncjobs._*``), and nothing
in the package imports it (it ranks above everything, so any import of it points up).

The one upward import allowed is ``JobManager.invoke``'s lazy import of the fan-out (it saves
local programs asyncssh's import time); it must sit inside a function, and the cycle check still
counts it, so the fan-out cannot import the manager back.
"""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asyncjobs"

#: Each room and its rank; equal ranks may not import each other unless they are one room.
RANKS = {
    "asyncjobs._version": 0,
    "asyncjobs._core": 1,
    "asyncjobs._local": 2,
    "asyncjobs._ssh": 3,
    "asyncjobs._host": 3,
    "asyncjobs._remote": 4,
    "asyncjobs": 5,  # the facade: __init__.py re-exports the public names
    "asyncjobs._cli": 6,
    "asyncjobs.__main__": 7,
    "asyncjobs.testing": 8,  # public test hosts: the facade at most, see test_testing_is_apart
}
#: (importer, imported): the lazy upward imports allowed, each inside a function.
LAZY_UPWARD = {
    ("asyncjobs._local.remote", "asyncjobs._remote.fanout"),  # invoke's default engine
    ("asyncjobs._local.remote", "asyncjobs._remote.pool"),  # invoke(persist=)'s connections
    ("asyncjobs._local.remote", "asyncjobs._remote.transfer"),  # copy and gather
}
#: Third-party packages only some rooms may import.
ONLY_IN = {"asyncssh": {"asyncjobs._ssh", "asyncjobs._remote", "asyncjobs._cli"}}

MAX_TOP_LEVEL = 10
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def room(module: str) -> str:
    """The room (layer package) a module lives in."""
    parts = module.split(".")
    name = ".".join(parts[:2])
    return name if name in RANKS else "asyncjobs"


def _package_of(module: str) -> str:
    is_package = MODULES[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported name, line, inside a function) for every import in ``module``'s file."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = _package_of(module).split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                for alias in child.names:
                    full = f"{target}.{alias.name}"
                    found.append((full if full in MODULES else target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    return {
        m: {name for name, _, _ in _imports(m) if name in MODULES and name != m} for m in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_imports_point_down() -> None:
    wrong = []
    for module in MODULES:
        here = room(module)
        for name, line, in_function in _imports(module):
            if name not in MODULES:
                continue
            there = room(name)
            if here == there:
                continue
            if (module, name) in LAZY_UPWARD and in_function:
                continue
            if RANKS[there] >= RANKS[here]:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} -> {name}")
    assert wrong == []


def test_testing_is_apart() -> None:
    """``asyncjobs.testing`` uses the public API only; the package never imports it (so
    ``import asyncjobs`` does not pay for it, and the runtime bundle's code never needs it)."""
    wrong = []
    for module in MODULES:
        inside = room(module) == "asyncjobs.testing"
        for name, line, _ in _imports(module):
            if name not in MODULES and not name.startswith("asyncjobs."):
                continue
            there = "asyncjobs.testing" if name.startswith("asyncjobs.testing") else room(name)
            if inside and there not in ("asyncjobs.testing",) and name != "asyncjobs":
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} -> {name}")
            if not inside and there == "asyncjobs.testing":
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} -> {name}")
    assert wrong == []


def test_the_allowed_lazy_import_is_still_needed_and_lazy() -> None:
    """The allow-list names real imports: a stale entry would hide nothing but mislead."""
    for importer, imported in LAZY_UPWARD:
        hits = [inner for name, _, inner in _imports(importer) if name == imported]
        assert hits and all(hits), (importer, imported)


def test_third_party_packages_stay_in_their_rooms() -> None:
    wrong = []
    for module in MODULES:
        for name, line, _ in _imports(module):
            top = name.partition(".")[0]
            if top in ONLY_IN and room(module) not in ONLY_IN[top]:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}")
    assert wrong == []


def test_rooms_are_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_store_imports_neither_anyio_nor_asyncssh() -> None:
    """The CLI's fast path reads the store directly instead of copying its schema."""
    done = _run(
        """
        import sys
        import asyncjobs._host.store
        loaded = sorted(m for m in ("anyio", "asyncssh", "trio") if m in sys.modules)
        print(loaded)
        """,
        dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture
def no_asyncssh(tmp_path: Path) -> dict[str, str]:
    """An environment whose Pythons (this one's children, the job host it spawns) cannot import
    asyncssh: a shadowing ``asyncssh`` package that raises, first on ``PYTHONPATH``."""
    shadow = tmp_path / "shadow"
    (shadow / "asyncssh").mkdir(parents=True)
    (shadow / "asyncssh" / "__init__.py").write_text(
        "raise ImportError('asyncssh is unimportable in this test')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(ROOT)])
    env["ASYNCJOBS_HOST_DIR"] = str(tmp_path / "host")
    return env


def test_local_jobs_and_a_local_job_host_run_without_asyncssh(
    no_asyncssh: dict[str, str], tmp_path: Path
) -> None:
    done = _run(
        """
        import sys
        import anyio
        import asyncjobs
        import asyncjobs._host.daemon

        async def main():
            async with asyncjobs.JobManager() as jobs:
                job = await jobs.start_command(["echo", "local"])
                print(await job)
            async with asyncjobs.connect_local(name="layers") as s:
                job = await s.jobs.start_command("echo hosted")
                await s.jobs.wait(job)
                print(await s.jobs.receive(job))
            print("asyncssh" in sys.modules)

        anyio.run(main)
        """,
        no_asyncssh,
    )
    lock = tmp_path / "host" / "host.lock"
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:3] == ["['local']", "['hosted']", "False"]
    finally:
        pid = int(lock.read_text().strip() or 0) if lock.exists() else 0
        if pid > 0:  # the job host this test started (its pid is in its own lock file)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)


def test_asyncssh_unimportable_is_what_the_fixture_makes(no_asyncssh: dict[str, str]) -> None:
    """The test above proves something only if asyncssh really cannot be imported there."""
    done = _run("import asyncssh", no_asyncssh)
    assert done.returncode != 0
    assert "unimportable in this test" in done.stderr
