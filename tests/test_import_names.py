"""The import names are distinctive: a user's own `training/` or `service/` folder (a common
layout) never shadows ours.

The repository's folders service/ and training/ install as `contrastkit.service` and
`contrastkit.training` (setup.py maps them); the distribution is `contrastkit` (the name
`contrastive` belongs to another project on PyPI); the command stays `contrastive`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.test_layout import _imports as imports_of  # every import, lazy ones too

ROOT = Path(__file__).resolve().parents[1]
DECOY = "raise ImportError('the decoy {name}/ package was imported instead of contrastkit.{name}')"


def _decoy_folder(tmp_path: Path) -> Path:
    """A folder holding `training/` and `service/` packages that fail loudly on import, and
    modules named like ours below them."""
    for name in ("training", "service"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(DECOY.format(name=name) + "\n")
        for module in ("cli.py", "client.py", "encoders.py"):
            (pkg / module).write_text(DECOY.format(name=name) + "\n")
    return tmp_path


def _env(decoy: Path) -> dict[str, str]:
    """The decoy first on the path, as a notebook or a script run from that folder has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(decoy)
    return env


def _contrastive() -> list[str]:
    """The installed console script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("contrastive")
    found = str(beside) if beside.exists() else shutil.which("contrastive")
    if found is None:
        pytest.skip("the `contrastive` command is not installed (pip install -e .)")
    return [found]


def test_contrastive_help_runs_beside_decoy_packages(tmp_path: Path) -> None:
    decoy = _decoy_folder(tmp_path)
    done = subprocess.run(
        [*_contrastive(), "--help"], cwd=decoy, env=_env(decoy), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: contrastive")
    assert "decoy" not in done.stdout + done.stderr


def test_the_client_and_the_training_cli_import_beside_decoy_packages(tmp_path: Path) -> None:
    decoy = _decoy_folder(tmp_path)
    code = (
        "import sys\n"
        "from contrastkit.service.client import ContrastiveClient\n"
        "from contrastkit.training import cli\n"
        "print(ContrastiveClient.__module__, cli.__name__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'training')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=decoy, env=_env(decoy), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        "contrastkit.service.client.sync contrastkit.training.cli",
        "[]",  # no top-level `service` or `training` module was loaded at all
    ]


def test_the_decoy_is_really_in_the_way(tmp_path: Path) -> None:
    """The two tests above prove something only if a top-level `training` import from that
    folder does reach the decoy (a decoy nobody can import shields nothing)."""
    decoy = _decoy_folder(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", "import training"],
        cwd=decoy,
        env=_env(decoy),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "the decoy training/ package was imported" in done.stderr


def test_the_distribution_installs_the_command_under_its_free_name() -> None:
    dist = metadata.distribution("contrastkit")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"contrastive": "contrastkit.service.cli:main"}
    assert dist.read_text("top_level.txt") in (None, "", "contrastkit\n")  # one import name


def _top_level_imports(path: Path) -> list[str]:
    """The absolute imports of `path` whose first name is `service` or `training`."""
    return [n for n in imports_of(path) if n.split(".")[0] in ("service", "training")]


def test_no_code_imports_the_folders_by_their_bare_names(tmp_path: Path) -> None:
    """Run from the repository's root, `import training` would find the folder itself: a
    second copy of every module, beside the installed one."""
    found = [
        (str(p.relative_to(ROOT)), name)
        for folder in ("service", "training", "tests", "docs", "scripts")
        for p in sorted((ROOT / folder).rglob("*.py"))
        for name in _top_level_imports(p)
    ]
    assert found == []
    sample = tmp_path / "m.py"
    sample.write_text("import training.cli\nfrom service.client import X\nimport contrastkit.cli\n")
    assert _top_level_imports(sample) == ["training.cli", "service.client"]  # it can fail


@pytest.mark.slow
def test_the_wheel_holds_both_folders_under_contrastkit_and_nothing_else(tmp_path: Path) -> None:
    """What `pip install .` (the container image) installs: every module of both folders,
    under contrastkit/, and no top-level `service` or `training`."""
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("contrastkit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n) for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {n.split("/")[0] for n in names} == {
        "contrastkit",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    modules = {
        f"contrastkit/{p.relative_to(ROOT).as_posix()}"
        for folder in ("service", "training")
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules - names == set()
    assert "contrastkit/service/web/index.html" in names
    assert b"contrastive = contrastkit.service.cli:main" in entry_points
