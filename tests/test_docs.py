"""The docs are part of the test suite.

Every fenced ```python block in ``docs/*.md`` is a complete program: each one runs in its own
Python (with warnings as errors) in an empty temporary directory and must exit 0. The test id
names the page and the block's index on it (``test_python_block[buffers-1]``) and a failure
quotes the block's line and what the program printed.

A block may be skipped only on a platform where it cannot work, said in an HTML comment on the
line before the fence, naming that platform (a ``sys.platform`` prefix) and the reason:
``<!-- not-tested: win32: needs /bin/sh -->``. On every other platform the block still runs.

The state table and diagram of ``docs/states.md`` must match ``asyncjobs._core.state.TRANSITIONS``
(``docs/make_state_diagram.py --check``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testhosts import TestHosts

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT = 60.0  # seconds per program
PAGES = (
    "index.md",
    "getting-started.md",
    "thread-jobs.md",
    "process-jobs.md",
    "command-jobs.md",
    "streams.md",
    "buffers.md",
    "states.md",
    "errors.md",
    "remote-jobs.md",
    "job-host.md",
    "cli.md",
)
_NOT_TESTED = re.compile(r"^<!--\s*not-tested:\s*(?P<platform>[a-z0-9]+):\s*(?P<why>\S.*?)\s*-->$")
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


@dataclass(frozen=True)
class Block:
    page: str
    index: int  # position among the page's python blocks, from 0
    line: int  # line of the opening fence, from 1
    code: str
    not_tested: str | None  # the comment's text, if the block is marked


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown page, with the ``not-tested`` mark before each."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.name}:{start + 1}: ```python block is never closed"
        before = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        mark = before if before.startswith("<!-- not-tested") else None
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(path.name, len(blocks), start + 1, code, mark))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in sorted(DOCS.glob("*.md")) for b in python_blocks(page)]


def child_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if home is not None:
        env["HOME"] = str(home)
        env.pop("SSH_AUTH_SOCK", None)
    return env


@pytest.fixture(scope="session")
def docs_home(ssh_hosts: TestHosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose ~/.ssh/config names the test hosts web1, web2, web3, as a reader's would
    name their own hosts: the remote examples run unchanged against real sshd."""
    home = tmp_path_factory.mktemp("home")
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    key = ssh / "id_ed25519"
    key.write_bytes(ssh_hosts.client_key.read_bytes())
    key.chmod(0o600)
    config, known = [], []
    for i, host in enumerate(ssh_hosts.hosts):
        config.append(
            f"Host web{i + 1}\n  Hostname {host.address}\n  Port {host.port}\n"
            f"  User {host.username}\n"
        )
        known.append(f"{host.known_hosts_name} {ssh_hosts.host_public_key(i)}\n")
    (ssh / "config").write_text("".join(config))
    (ssh / "known_hosts").write_text("".join(known))
    return home


def run_program(argv: list[str], cwd: Path, home: Path | None = None) -> tuple[int, str]:
    """Run ``argv`` in its own process group; on timeout kill the whole group (worker
    processes included) and fail. Returns the exit status and the combined output."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=child_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{argv} did not finish in {TIMEOUT:.0f} s; its output:\n{out}")
    return proc.returncode, out


def skip_reason(block: Block) -> str | None:
    """The reason to skip ``block`` on this platform, or None to run it."""
    if block.not_tested is None:
        return None
    match = _NOT_TESTED.match(block.not_tested)
    assert match, (
        f"{block.page}:{block.line}: write '<!-- not-tested: PLATFORM: reason -->' with a "
        f"sys.platform prefix (linux, darwin, win32) and why, not {block.not_tested!r}"
    )
    if sys.platform.startswith(match["platform"]):
        return f"{block.page}:{block.line} on {sys.platform}: {match['why']}"
    return None


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("block", all_blocks(), ids=lambda b: f"{Path(b.page).stem}-{b.index}")
def test_python_block(block: Block, tmp_path: Path, docs_home: Path) -> None:
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    program = tmp_path / "example.py"
    program.write_text(block.code, encoding="utf-8")
    status, out = run_program([sys.executable, "-W", "error", program.name], tmp_path, docs_home)
    assert status == 0, (
        f"docs/{block.page}, python block {block.index} (line {block.line}) exited with "
        f"{status}; its output:\n{out}"
    )


def test_every_page_is_there_and_has_programs() -> None:
    present = {p.name for p in DOCS.glob("*.md")}
    assert set(PAGES) <= present, f"missing pages: {sorted(set(PAGES) - present)}"
    empty = [page for page in PAGES if not python_blocks(DOCS / page)]
    assert not empty, f"pages without a python example: {empty}"


def test_relative_links_point_at_files() -> None:
    broken = [
        f"{page.name}: {m['target']}"
        for page in sorted(DOCS.glob("*.md"))
        for m in _LINK.finditer(page.read_text(encoding="utf-8"))
        if "://" not in m["target"] and not (page.parent / m["target"]).exists()
    ]
    assert not broken, f"links to files that do not exist: {broken}"


def test_state_diagram_is_up_to_date(tmp_path: Path) -> None:
    script = DOCS / "make_state_diagram.py"
    status, out = run_program([sys.executable, str(script), "--check"], tmp_path)
    assert status == 0, f"docs/states.md is stale; run python docs/make_state_diagram.py\n{out}"


def test_not_tested_mark_must_name_a_platform(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not-tested: win32: needs /bin/sh -->\n\n```python\nprint(1)\n```\n"
        "<!-- not-tested: too slow -->\n```python\nprint(2)\n```\n"
        "```python\nprint(3)\n```\n",
        encoding="utf-8",
    )
    marked, vague, plain = python_blocks(page)
    assert (marked.line, marked.code, plain.index) == (3, "print(1)\n", 2)
    assert (skip_reason(marked) is None) is not sys.platform.startswith("win32")
    assert skip_reason(plain) is None
    with pytest.raises(AssertionError, match=r"sys\.platform prefix"):
        skip_reason(vague)
