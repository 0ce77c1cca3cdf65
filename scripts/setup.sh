#!/usr/bin/env bash
# Create .venv (if missing) and install rlmeta with its test tools. Safe to run again.
# PyTorch: torch==2.13.0 is pinned here so that machines with a local CPU wheel (like our CI)
# use it; elsewhere pip fetches that release from PyPI. Set RLMETA_TORCH to choose another spec,
# e.g. RLMETA_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
# RLMETA_EXTRAS picks the extras (default "dev,es": test tools and the evolution-strategies engine,
# EvoTorch and Ray; "dev,es,bench" adds the benchmark peers: SB3, TorchOpt, higher).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  $PIP install ${RLMETA_TORCH:-torch==2.13.0}
fi
extras=${RLMETA_EXTRAS:-dev,es}
stamp=.venv/.rlmeta-installed-${extras//,/-}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install -e ".[$extras]"
  touch "$stamp"
fi
