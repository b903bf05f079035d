"""The quickstart's and the tutorials' commands work: every ```bash and ```python block of
the pages in PAGES runs, in order, against a live `contrastive serve` on the built-in model.

- The server listens on a free port; `127.0.0.1:8000` in a block is replaced by its
  address, so the pages show the default one.
- A block just after a `<!-- not-run -->` line is skipped (an install, the server's own
  start, anything that needs what a test machine lacks).
- A block just after a `<!-- serves -->` line is one `contrastive serve ...` command: it
  starts in the background (on a free port, with its own collections), and the page's
  later blocks talk to it instead of the built-in model's server.
- A Python block whose first line is `# NAME.py` (perhaps `# NAME.py: what it does`) is a
  file the page asks the reader to save: it is written to NAME.py, and a later block runs it.
- A block must exit 0; each `# prints: TEXT` comment line in it is checked: TEXT must be in
  what the block printed.
- Blocks run in a temporary folder where `examples/` is the repository's, with a
  `contrastive` command on PATH that runs this checkout (`python -m contrastkit.service`).

Set CONTRASTIVE_DOCS_SERVER=http://127.0.0.1:PORT to run them against a server already
running (a quicker loop while writing the pages).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
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
    "tutorials/train-on-your-folder.md",
    "finetune-clip.md",
]
# what a page needs beyond the install: its test skips without it
NEEDS = {"finetune-clip.md": Path("/usr/share/datasets/fashion-mnist")}
DEFAULT_ADDRESS = "127.0.0.1:8000"
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
FENCE = re.compile(r"^(?:<!-- (not-run|serves) -->\n)?```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
PRINTS = re.compile(r"^\s*# prints: (.+?)\s*$", re.M)
FILE = re.compile(r"\A# ([\w-]+\.py)\b")
BLOCK_TIMEOUT_S = 1800  # a tutorial's training run, on a busy 2-core machine


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str  # "bash" or "python"
    code: str
    role: str  # "run", "not-run", "serves" or "file"

    @property
    def expected(self) -> list[str]:
        return PRINTS.findall(self.code)


def blocks(page: str, text: str | None = None) -> list[Block]:
    """The shell and Python blocks of `page` (its text: read from docs/ unless given), in
    order; other languages are left out."""
    text = (DOCS / page).read_text() if text is None else text
    out = []
    for m in FENCE.finditer(text):
        language, code = LANGUAGES.get(m.group(2)), m.group(3)
        if language:
            line = text.count("\n", 0, m.start(2)) + 1
            role = m.group(1) or ("file" if language == "python" and FILE.match(code) else "run")
            out.append(Block(page, line, language, code, role))
    return out


def _env(**extra: str) -> dict[str, str]:
    """The machine's environment without its CONTRASTIVE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTRASTIVE_")}
    return env | {"CONTRASTIVE_AUTO_ONNX": "false", **extra}


@contextlib.contextmanager
def serving(argv: list[str], folder: Path, cwd: Path) -> Iterator[str]:
    """`contrastive serve` with `argv` (flags after `serve`) on a free port, its collections
    in `folder`, run from `cwd` -> its URL once ready; killed on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / f"server-{port}.log"
    # serve_argv's --model=builtin comes first: a --model in argv wins (argparse: last wins)
    cmd = serve_argv(port, folder / f"collections-{port}", *argv)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_server_ready(url, proc, log.read_text)
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built-in model's server, shared by the pages (CONTRASTIVE_DOCS_SERVER: yours)."""
    given = os.environ.get("CONTRASTIVE_DOCS_SERVER")
    if given:
        yield given.rstrip("/")
        return
    with serving([], tmp_path_factory.mktemp("docs-server"), ROOT) as url:
        yield url


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder to run a page's blocks in: `examples/` of the repository, `contrastive` on
    PATH."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    command = bin_ / "contrastive"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m contrastkit.service "$@"\n')
    command.chmod(0o755)
    return tmp_path


def run_block(block: Block, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = block.code.replace(f"http://{DEFAULT_ADDRESS}", url)
    code = code.replace(DEFAULT_ADDRESS, url.removeprefix("http://"))
    argv = (
        ["bash", "-eo", "pipefail", "-c", code]
        if block.language == "bash"
        else [sys.executable, "-c", code]
    )
    env = _env(PATH=f"{cwd / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )


def serve_flags(block: Block) -> list[str]:
    """The flags after `serve` of a `<!-- serves -->` block (one command, nothing else)."""
    words = shlex.split(block.code, comments=True)
    assert words[:2] == ["contrastive", "serve"], f"{block.page}:{block.line} is not a serve"
    return words[2:]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_page_runs(page: str, server_url: str, workdir: Path) -> None:
    if page in NEEDS and not NEEDS[page].exists():
        pytest.skip(f"{page} needs {NEEDS[page]}")
    found = blocks(page)
    assert any(b.role == "run" for b in found), f"{page} has no block to run"
    with contextlib.ExitStack() as servers:
        url = server_url
        for block in found:
            where = f"{page}:{block.line} ({block.language})"
            if block.role == "file":
                name = FILE.match(block.code)
                assert name is not None
                (workdir / name.group(1)).write_text(block.code)
            elif block.role == "serves":
                url = servers.enter_context(serving(serve_flags(block), workdir, workdir))
            elif block.role == "run":
                done = run_block(block, url, workdir)
                assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr}"
                for text in block.expected:
                    assert text in done.stdout, f"{where} did not print {text!r}:\n{done.stdout}"


def test_blocks_are_found_and_marked() -> None:
    text = (
        "<!-- not-run -->\n```bash\npip install x\n```\n\n```python\nprint(1)\n# prints: 1\n"
        "```\n```json\n{}\n```\n<!-- serves -->\n```bash\ncontrastive serve --model m\n```\n"
        "```python\n# make.py: a file\nprint(2)\n```\n"
    )
    found = blocks("x.md", text)
    assert [(b.language, b.role, b.line, b.expected) for b in found] == [
        ("bash", "not-run", 2, []),
        ("python", "run", 6, ["1"]),
        ("bash", "serves", 14, []),
        ("python", "file", 17, []),
    ]
    assert serve_flags(found[2]) == ["--model", "m"]
