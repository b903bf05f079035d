"""Every file that the documents and the code refer to exists.

A repository path is one under a top folder of the project (`service/`, `training/`,
`tests/`, `docs/`, `deploy/`, `scripts/`, `.ci/`), wherever it is named: anywhere in the
README, CONTRIBUTING.md, SECURITY.md and docs/ (prose, tables and code blocks alike), in
the comments and docstrings of the Python sources, and in the scripts, CI, Dockerfile,
deployment files and pyproject.toml. The Python comments and docstrings also name modules
(`contrastkit.training.engine.checkpoint`, `contrastkit.service.client.ServiceError`): each names a
module of the project, or a name that module defines. Links and anchors: tests/test_docs.py.

A path that is named but not shipped is in NOT_OURS, with the reason.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

from tests.test_docs import DOCUMENTS, ROOT

TOP_FOLDERS = ("service", "training", "tests", "docs", "deploy", "scripts", ".ci", "examples")
# What a dotted module name starts with: the import names of the two folders (setup.py), tests
PACKAGES = ("contrastkit.service", "contrastkit.training", "tests")

SKIP_DIRS = {"__pycache__", ".ruff_cache", ".mypy_cache", ".pytest_cache", "node_modules"}

# Named, but not files of this repository: path (or folder prefix) -> why.
NOT_OURS: dict[str, str] = {
    "deploy/.env": "compose's env file, the user's own (git-ignored)",
    "deploy/k8s/api-keys.env": "the user's API keys (from api-keys.env.example; git-ignored)",
    "deploy/k8s/qdrant/api-keys.env": "the user's API keys (git-ignored)",
    "deploy/k8s/qdrant/qdrant-api-key.env": "the user's Qdrant key (git-ignored)",
    "deploy/prometheus/contrastive-api-key": "the user's key file for Prometheus' scrapes",
    "service/contrastive-index": "a Kubernetes Service (kubectl's KIND/NAME), not a path",
    "scripts/pretrain/": "solo-learn's recipes, in solo-learn's repository",
}
# Dotted names in Python prose that stand for any module (a placeholder).
PLACEHOLDER_MODULES = {"contrastkit.training.engine.X"}

# A path under a top folder, not inside a longer path or a URL. `*`, `<...>`, `{...}` and
# `$` are taken in so that a pattern or a placeholder is seen whole (and not checked).
PATH = re.compile(
    r"(?<![\w./~$-])((?:" + "|".join(map(re.escape, TOP_FOLDERS)) + r")/[\w./*<>{}$-]*)"
)
MODULE = re.compile(
    r"(?<![\w./-])((?:" + "|".join(map(re.escape, PACKAGES)) + r")(?:\.[A-Za-z_]\w*)+)"
)


def _files(folder: Path, *patterns: str) -> list[Path]:
    found = {p for pattern in patterns for p in folder.rglob(pattern)}
    return sorted(p for p in found if p.is_file() and not SKIP_DIRS & set(p.parts))


def python_prose(source: str) -> str:
    """A Python source's comments and docstrings (module, class, function)."""
    parts = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def _texts() -> Iterator[tuple[Path, str]]:
    """(file, the text of it that may name repository paths) for every file checked."""
    for doc in DOCUMENTS:
        yield doc, doc.read_text()
    for folder in ("service", "training", "tests", "scripts"):
        for path in _files(ROOT / folder, "*.py"):
            yield path, python_prose(path.read_text())
    others = [
        *_files(ROOT / "scripts", "*.sh"),
        *_files(ROOT / "deploy", "*.yaml", "*.yml", "*.txt"),
        ROOT / ".ci" / "run",
        ROOT / "Dockerfile",
        ROOT / "pyproject.toml",
    ]
    for path in others:
        yield path, path.read_text()


def named_paths(text: str) -> set[str]:
    """The repository paths `text` names (patterns and placeholders left out)."""
    paths = set()
    for match in PATH.findall(text):
        path = match.rstrip(".")  # the end of a sentence
        if not re.search(r"[*<>{}$]", path):
            paths.add(path)
    return paths


def _not_ours(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in NOT_OURS)


def test_every_path_named_in_documents_code_and_deployment_files_exists() -> None:
    missing = sorted(
        f"{source.relative_to(ROOT)}: {path}"
        for source, text in _texts()
        for path in named_paths(text)
        if not _not_ours(path) and not (ROOT / path).exists()
    )
    assert missing == []


def test_what_is_named_but_not_ours_is_still_named_and_still_absent() -> None:
    """An entry of NOT_OURS that nothing names any more, or that now exists, goes."""
    named = {path for _, text in _texts() for path in named_paths(text)}
    for entry in NOT_OURS:
        assert not (ROOT / entry).exists(), entry
        assert any(p == entry or (entry.endswith("/") and p.startswith(entry)) for p in named), (
            entry
        )


def _defines(module_file: Path) -> set[str]:
    """The names a module defines at any depth: functions, classes, assignments, imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a module of the project, or a name its longest module defines."""
    parts = dotted.removeprefix("contrastkit.").split(".")  # the folder's name: setup.py
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else None
        if module is None and (base / "__init__.py").is_file():
            module = base / "__init__.py"
        if module is not None:
            rest = parts[n:]
            return not rest or rest[0] in _defines(module)
    return False


def test_every_module_named_in_python_comments_and_docstrings_exists() -> None:
    missing = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("service", "training", "tests", "scripts")
        for path in _files(ROOT / folder, "*.py")
        for name in {m.rstrip(".") for m in MODULE.findall(python_prose(path.read_text()))}
        if name not in PLACEHOLDER_MODULES and not resolves(name)
    )
    assert missing == []


def test_the_checks_can_fail() -> None:
    text = (
        "see docs/nowhere.md. and `tests/x.py::test_y`, service/app.py:12, "
        "https://example.org/service/remote.py, ~/scripts/mine.sh, "
        "scripts/pretrain/cifar/<method>.yaml, tests/*.py, deploy/{name}.yaml, .ci/run"
    )
    assert named_paths(text) == {"docs/nowhere.md", "tests/x.py", "service/app.py", ".ci/run"}
    assert not (ROOT / "docs/nowhere.md").exists()
    assert _not_ours("scripts/pretrain/cifar/simclr.yaml") and not _not_ours("scripts/x.sh")
    assert resolves("contrastkit.training.catalog.METHOD_SETTINGS") and resolves(
        "contrastkit.service.client"
    )
    assert not resolves("contrastkit.training.no_such_module") and not resolves(
        "contrastkit.training.catalog.NOPE"
    )
    assert MODULE.findall("from contrastkit.training.cli (see contrastkit.service.cli.main).") == [
        "contrastkit.training.cli",
        "contrastkit.service.cli.main",
    ]
    source = '"""Module: docs/a.md."""\n# a comment: tests/b.py\nx = "service/c.py"\n'
    assert named_paths(python_prose(source)) == {"docs/a.md", "tests/b.py"}
