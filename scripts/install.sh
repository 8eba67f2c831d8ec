#!/usr/bin/env bash
# Create .venv at the project root (if missing) and install binser with its test, serve, ray,
# scenes and sofa extras (so the Ray executor and scene generator tests run in CI).
# torch: this project's machines have a local CPU build, `torch==2.13.0`; elsewhere set
# BINSER_TORCH to the requirement you want (e.g. "torch" or a CUDA build's spec), or
# BINSER_TORCH=skip to keep whatever torch the venv already has.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet="-q --disable-pip-version-check"
TORCH_SPEC=${BINSER_TORCH:-torch==2.13.0}
if [ "$TORCH_SPEC" != skip ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install $quiet "$TORCH_SPEC" 2>&1 | grep -v "is ignored: it is neither" || true
fi
.venv/bin/pip install $quiet -e ".[test,serve,ray,scenes,sofa]" 2>&1 | grep -v -E "is ignored: it is neither|corresp\(|^\s*!!|^\s*$" || true
.venv/bin/python -c "import binser, torch; print(f'binser {binser.__version__} installed (torch {torch.__version__})')"
