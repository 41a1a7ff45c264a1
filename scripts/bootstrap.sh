#!/usr/bin/env bash
# Create .venv with the toolkit and its test dependencies; safe to run again (fast no-op).
#
# torch is installed first and on its own, so that pip never replaces it with another build:
#   - a torch already importable by $PYTHON's venv is kept (GPU users keep their own build);
#   - otherwise TORCH_SPEC (default torch==2.13.0) is installed, from TORCH_INDEX_URL when set
#     (on a CPU-only machine point it at PyTorch's CPU wheel index to avoid the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "bootstrap: installing $TORCH_SPEC" >&2
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
    else
        "${pip[@]}" install "$TORCH_SPEC"
    fi
fi
stamp="$VENV/.distill-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing the toolkit (editable) with its test extras" >&2
    "${pip[@]}" install -e ".[test]"
    touch "$stamp"
fi
