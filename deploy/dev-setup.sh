#!/usr/bin/env bash
# Development setup: a venv in .venv with edgebot (editable) and what the tests need.
# llama-cpp-python is compiled from source the first time (~5-10 min on 2 cores); pip keeps the
# wheel in its cache, so later runs take seconds. Set CMAKE_ARGS to build for a board
# (see board-configs/*.toml, [build] cmake_args); deploy/install.sh does that on a board.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EDGEBOT_EXTRAS:-dev,serial}  # serial: pyserial for edgebot-serial and its pty tests

if [ ! -x .venv/bin/python ]; then
    echo "dev-setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    echo "dev-setup: installing llama-cpp-python (a source build the first time: several minutes, once)"
fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
echo "dev-setup: ready (.venv: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
