"""The one-way data flow, as the README's "Architecture" section draws it.

- `training.encoders` is the model library: it imports nothing else of `training`.
- `service` imports only `training.encoders` from `training`; its command table
  (`service/cli.py`) builds on `training.cli`, which names the training commands and
  imports them only when they run.
- `training` never imports `service`.
- Inside `training`: methods and their building blocks (losses, heads, momentum, augment,
  dist) know nothing of the engine; the engine and export reach methods only through the
  contract (`training.methods`, `training.methods.base`), never a method's own module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "training.encoders"


def _imports(path: Path) -> list[str]:
    """Every absolute module name `path` imports, at any depth (lazy imports too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(folder: str, bad: Callable[[Path, str], bool]) -> list[tuple[str, str]]:
    return [
        (str(p.relative_to(ROOT)), m)
        for p in (ROOT / folder).rglob("*.py")
        for m in _imports(p)
        if bad(p, m)
    ]


def test_training_never_imports_service() -> None:
    assert _violations("training", lambda p, m: _within(m, "service")) == []


def test_the_encoder_library_stands_alone() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "service") or (_within(m, "training") and not _within(m, LIBRARY))

    assert _violations("training/encoders", bad) == []


def test_service_imports_only_the_encoder_library_from_training() -> None:
    def bad(p: Path, m: str) -> bool:
        if p == ROOT / "service" / "cli.py" and m == "training":
            return False  # `from training import cli`: the command table
        return _within(m, "training") and not _within(m, LIBRARY)

    assert _violations("service", bad) == []


BLOCKS = ("losses", "heads", "momentum", "augment", "dist")
METHOD_API = ("training.methods", "training.methods.base")


def test_methods_and_their_blocks_know_nothing_of_the_engine() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "training.engine") or _within(m, "training.commands")

    found = _violations("training/methods", bad)
    for block in BLOCKS:
        found += [v for v in _violations("training", bad) if v[0] == f"training/{block}.py"]
    assert found == []


def test_engine_and_export_use_methods_only_through_the_contract() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "training.methods") and m not in METHOD_API

    assert _violations("training/engine", bad) + _violations("training/export", bad) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from training.engine.trainer import Trainer\n    import service.app\n"
    )
    assert _imports(f) == ["training.engine.trainer", "service.app"]


def _readme_tree() -> list[str]:
    """The paths the README's Architecture tree names: ["service/", "service/app.py", ...]."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    paths: list[str] = []
    parents: list[str] = []  # the folder at each indentation level
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        if not names or indent > 8:  # a description's continuation line
            continue
        level = indent // 2
        del parents[level:]
        for name in re.split(r"[\s,]+", names):
            if name in ("", "..."):
                continue
            path = "".join(parents) + name
            paths.append(path)
        if names.endswith("/"):
            parents.append(names)
    return paths


def _packages() -> set[str]:
    """Every package folder of both halves, as "service/api/", "training/encoders/nets/"."""
    found = set()
    for top in ("service", "training"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(str(init.parent.relative_to(ROOT)) + "/")
    return found


def test_the_readme_tree_is_true() -> None:
    named = _readme_tree()
    assert "training/encoders/exported/" in named and "service/api/routes/" in named
    assert [p for p in named if not (ROOT / p).exists()] == []
    assert _packages() - set(named) == set(), "a package the README's tree does not show"
