"""The one-way data flow, as the user guide's "Architecture" page draws it
(docs/guide/architecture.md).

- `contrastkit.training.encoders` is the model library: it imports nothing else of `training`.
- `service` imports only `contrastkit.training.encoders` from `training`; its command table
  (`service/cli.py`) builds on `contrastkit.training.cli`, which names the training commands and
  imports them only when they run.
- `training` never imports `service`.
- Inside `training`: methods and their building blocks (losses, heads, momentum, augment,
  dist) know nothing of the engine; the engine and export reach methods only through the
  contract (`contrastkit.training.methods`, `contrastkit.training.methods.base`), never a method's
  own module.

Inside the service, `contrastkit.service.index` (collections) is layered: the interface and what
every engine shares at its top, an engine per sub-package (`embedded/`, `qdrant/`).

- `contrastkit.service.index` imports neither the web framework nor pydantic (pydantic-settings, so
  contrastkit.service.settings, included): of the rest of the service only
  contrastkit.service.domain_errors, whose error base class its CollectionError extends. The HTTP
  models of collections are in contrastkit.service.schemas, and the service hands the index what its
  Settings say.
- Only the backend factory (service/index/factory.py) reaches into an engine's package;
  the few other doors are listed in ENGINE_DOORS with their reasons. Tests do the same
  except those of the engines themselves (tests/service/index/).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "contrastkit.training.encoders"
WEB_AND_MODELS = ("fastapi", "starlette", "pydantic", "pydantic_settings")
ENGINES = ("contrastkit.service.index.embedded", "contrastkit.service.index.qdrant")
# The code besides an engine's own package that may import it, and why.
ENGINE_DOORS: dict[str, tuple[str, ...]] = {
    "service/index/factory.py": ENGINES,  # opens an engine: the door for everyone else
    # the repair command salvages the embedded store's own files, below the interface
    "service/commands/index/repair.py": ("contrastkit.service.index.embedded",),
    # benchmarks of the embedded store itself (bench search: "our store" against raw FAISS)
    "service/bench/search.py": ("contrastkit.service.index.embedded",),
    "service/bench/search_scale.py": ("contrastkit.service.index.embedded",),
}
ENGINE_TESTS = "tests/service/index/"


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
    assert _violations("training", lambda p, m: _within(m, "contrastkit.service")) == []


def test_the_encoder_library_stands_alone() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "contrastkit.service") or (
            _within(m, "contrastkit.training") and not _within(m, LIBRARY)
        )

    assert _violations("training/encoders", bad) == []


ONNX_CACHE = "contrastkit.training.export.onnx_cache"
EMBED_JOB = ROOT / "service" / "commands" / "embed"
EMBED_BENCH = ROOT / "service" / "bench" / "embed.py"


def test_service_imports_only_the_encoder_library_from_training() -> None:
    def bad(p: Path, m: str) -> bool:
        if p == ROOT / "service" / "cli.py" and m == "contrastkit.training":
            return False  # `from contrastkit.training import cli`: the command table
        if p == ROOT / "service" / "runtime" / "onnx_upgrade.py" and m == ONNX_CACHE:
            return False  # the service traces the ONNX graphs of a model it serves
        if _within(m, "contrastkit.training.data") and (EMBED_JOB in p.parents or p == EMBED_BENCH):
            return False  # `contrastive embed` reads the training data formats (shards, idx)
        return _within(m, "contrastkit.training") and not _within(m, LIBRARY)

    assert _violations("service", bad) == []


BLOCKS = ("losses", "heads", "momentum", "augment", "dist")
METHOD_API = ("contrastkit.training.methods", "contrastkit.training.methods.base")


def test_methods_and_their_blocks_know_nothing_of_the_engine() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "contrastkit.training.engine") or _within(
            m, "contrastkit.training.commands"
        )

    blocks = {f"training/{block}.py" for block in BLOCKS}
    found = _violations("training/methods", bad)
    found += [v for v in _violations("training", bad) if v[0] in blocks]
    assert found == []


def test_engine_and_export_use_methods_only_through_the_contract() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "contrastkit.training.methods") and m not in METHOD_API

    assert _violations("training/engine", bad) + _violations("training/export", bad) == []


def _index_layer_violation(p: Path, m: str) -> bool:
    if any(_within(m, package) for package in WEB_AND_MODELS):
        return True
    outside = _within(m, "contrastkit.service") and not _within(m, "contrastkit.service.index")
    return outside and m != "contrastkit.service.domain_errors"


def test_the_index_imports_no_web_framework_and_no_pydantic() -> None:
    assert _violations("service/index", _index_layer_violation) == []


def test_the_index_loads_no_web_framework_and_no_pydantic() -> None:
    """What the rule above keeps out stays out at run time too (through
    contrastkit.service.domain_errors or a library): the interface, the factory and the embedded
    store, imported, load none of it, nor qdrant-client (a FAISS service never does)."""
    modules = [
        "contrastkit.service.index.factory",
        "contrastkit.service.index.transfer",
        "contrastkit.service.index.embedded.backend",
    ]
    unwanted = (*WEB_AND_MODELS, "qdrant_client")
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {unwanted!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _engine_violation(p: Path, m: str) -> bool:
    """`p` imports `m` from an engine's package that is neither its own nor open to it."""
    rel = p.relative_to(ROOT).as_posix()
    for engine in ENGINES:
        if _within(m, engine):
            home = engine.removeprefix("contrastkit.").replace(".", "/") + "/"  # its folder
            return not rel.startswith(home) and engine not in ENGINE_DOORS.get(rel, ())
    return False


def test_only_the_factory_reaches_into_an_engine() -> None:
    assert _violations("service", _engine_violation) == []
    tests = _violations("tests", _engine_violation)
    assert [(f, m) for f, m in tests if not f.startswith(ENGINE_TESTS)] == []


def test_the_index_rules_can_fail(tmp_path: Path) -> None:
    """The two rules above flag what they are meant to (a check that cannot fail checks
    nothing)."""
    assert _index_layer_violation(tmp_path, "pydantic")
    assert _index_layer_violation(tmp_path, "pydantic_settings")
    assert _index_layer_violation(tmp_path, "fastapi.responses")
    assert _index_layer_violation(tmp_path, "contrastkit.service.settings")
    assert _index_layer_violation(tmp_path, "contrastkit.service.schemas.collections")
    assert not _index_layer_violation(tmp_path, "contrastkit.service.domain_errors")
    assert not _index_layer_violation(tmp_path, "contrastkit.service.index.types")
    assert not _index_layer_violation(tmp_path, "numpy")

    def engine_use(rel: str, module: str) -> bool:
        return _engine_violation(ROOT / rel, module)

    assert engine_use("service/api/deps.py", "contrastkit.service.index.embedded.store")
    assert engine_use("service/state.py", "contrastkit.service.index.qdrant.connection")
    assert engine_use(
        "service/index/qdrant/backend.py", "contrastkit.service.index.embedded.collection"
    )
    assert engine_use(
        "service/commands/index/repair.py", "contrastkit.service.index.qdrant.backend"
    )
    assert engine_use(
        "tests/service/test_graceful_shutdown.py", "contrastkit.service.index.embedded"
    )
    assert not engine_use("service/index/factory.py", "contrastkit.service.index.qdrant.backend")
    assert not engine_use(
        "service/index/embedded/store.py", "contrastkit.service.index.embedded.collection"
    )
    assert not engine_use("service/state.py", "contrastkit.service.index.factory")
    assert not engine_use("service/api/deps.py", "contrastkit.service.index.backend")
    assert all((ROOT / door).is_file() for door in ENGINE_DOORS), "a door that is gone"


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n"
        "    from contrastkit.training.engine.trainer import Trainer\n"
        "    import contrastkit.service.app\n"
    )
    assert _imports(f) == ["contrastkit.training.engine.trainer", "contrastkit.service.app"]


def _readme_tree() -> list[str]:
    """The paths the user guide's Architecture tree names: ["service/", "service/app.py",
    ...]."""
    text = (ROOT / "docs" / "guide" / "architecture.md").read_text()
    block = text.split("# Architecture", 1)[1].split("```", 2)[1]
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
    assert _packages() - set(named) == set(), "a package the guide's tree does not show"
