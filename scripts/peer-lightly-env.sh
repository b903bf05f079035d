#!/usr/bin/env bash
# The peer environment of `contrastive bench quality --quick`: lightly (PyPI) in its own
# venv, sharing the system torch (--system-site-packages), so that lightly's methods train
# with the same torch as ours. Usage: scripts/peer-lightly-env.sh [VENV, default /tmp/lightlyenv]
set -euo pipefail
venv="${1:-/tmp/lightlyenv}"
python -m venv --system-site-packages "$venv"
# lightly 1.6 needs no other torch: pip keeps the system's (check the line it prints)
"$venv/bin/pip" install lightly
"$venv/bin/python" -c "import lightly, torch; print('lightly', lightly.__version__, 'torch', torch.__version__)"
