#!/usr/bin/env bash
# mypy over contrastkit.service and contrastkit.training (pyproject.toml's [tool.mypy]).
# mypy does not run setuptools' editable-install import hook, which is what maps the folders
# service/ and training/ onto those names (setup.py); so it reads them through a folder of
# two symlinks named as the install names them. Usage: scripts/mypy.sh [mypy's own flags]
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/mypy-path  # git-ignored; the paths in mypy's messages start with it
python training/bench/checkout_path.py "$tree"
MYPYPATH="$tree" exec mypy "$@"
