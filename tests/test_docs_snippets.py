"""The quickstart's and the tutorials' commands work: every ```bash and ```python block of
the pages in PAGES runs, in order, against a live `contrastive serve` on the built-in model.

- The server listens on a free port; `127.0.0.1:8000` in a block is replaced by its
  address, so the pages show the default one.
- A block just after a `<!-- not-run -->` line is skipped (an install, the server's own
  start, anything that needs what a test machine lacks).
- A block must exit 0; each `# prints: TEXT` comment line in it is checked: TEXT must be in
  what the block printed.
- Blocks run in a temporary folder where `examples/` is the repository's, with a
  `contrastive` command on PATH that runs this checkout (`python -m contrastkit.service`).

Set CONTRASTIVE_DOCS_SERVER=http://127.0.0.1:PORT to run them against a server already
running (a quicker loop while writing the pages).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, serve_argv, wait_server_ready

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "quickstart.md",
    "tutorials/serve-and-classify.md",
    "tutorials/index-a-photo-folder.md",
]
DEFAULT_ADDRESS = "127.0.0.1:8000"
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
FENCE = re.compile(r"^(<!-- not-run -->\n)?```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
PRINTS = re.compile(r"^\s*# prints: (.+?)\s*$", re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str  # "bash" or "python"
    code: str
    run: bool

    @property
    def expected(self) -> list[str]:
        return PRINTS.findall(self.code)


def blocks(page: str, text: str | None = None) -> list[Block]:
    """The shell and Python blocks of `page` (its text: read from docs/ unless given), in
    order; other languages are left out."""
    text = (DOCS / page).read_text() if text is None else text
    out = []
    for m in FENCE.finditer(text):
        language = LANGUAGES.get(m.group(2))
        if language:
            line = text.count("\n", 0, m.start(2)) + 1
            out.append(Block(page, line, language, m.group(3), run=m.group(1) is None))
    return out


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("CONTRASTIVE_DOCS_SERVER")
    if given:
        yield given.rstrip("/")
        return
    folder = tmp_path_factory.mktemp("docs-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    cmd = serve_argv(port, folder / "collections")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTRASTIVE_")}
    env |= {"CONTRASTIVE_AUTO_ONNX": "false", "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_server_ready(url, proc, log.read_text)
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to run the blocks in: `examples/` of the repository, `contrastive` on PATH."""
    folder = tmp_path_factory.mktemp("docs-snippets")
    (folder / "examples").symlink_to(ROOT / "examples")
    bin_ = folder / "bin"
    bin_.mkdir()
    command = bin_ / "contrastive"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m contrastkit.service "$@"\n')
    command.chmod(0o755)
    return folder


def run_block(block: Block, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = block.code.replace(f"http://{DEFAULT_ADDRESS}", url)
    code = code.replace(DEFAULT_ADDRESS, url.removeprefix("http://"))
    argv = (
        ["bash", "-eo", "pipefail", "-c", code]
        if block.language == "bash"
        else [sys.executable, "-c", code]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTRASTIVE_")}
    env |= {
        "PATH": f"{cwd / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "CONTRASTIVE_AUTO_ONNX": "false",
    }
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_page_runs(page: str, server_url: str, workdir: Path) -> None:
    found = blocks(page)
    assert any(b.run for b in found), f"{page} has no block to run"
    for block in found:
        if not block.run:
            continue
        done = run_block(block, server_url, workdir)
        where = f"{page}:{block.line} ({block.language})"
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr}"
        for text in block.expected:
            assert text in done.stdout, f"{where} did not print {text!r}:\n{done.stdout}"


def test_blocks_are_found_and_marked() -> None:
    text = (
        "<!-- not-run -->\n```bash\npip install x\n```\n\n```python\nprint(1)\n# prints: 1\n"
        "```\n```json\n{}\n```\n"
    )
    assert [(b.language, b.run, b.line, b.expected) for b in blocks("x.md", text)] == [
        ("bash", False, 2, []),
        ("python", True, 6, ["1"]),
    ]
