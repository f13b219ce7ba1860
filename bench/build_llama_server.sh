#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp vendored in the llama-cpp-python sdist edgebot uses, with
# the board profile's CMAKE flags ([build] cmake_args of board-configs/<board>.toml; generic-x86 on x86-64,
# or $EDGEBOT_BOARD), so bench/bench_engine.py can compare edgebotd with `llama-server --parallel N` on the
# same llama.cpp, flags and model. Built once into ~/.cache/edgebot/llama-server/<key>/ (nothing is
# committed); prints the binary's path. A long CPU job (tens of minutes on 2 busy cores): JOBS=N sets -j.
#
#     bench/build_llama_server.sh            # then: bench/bench_engine.py server ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
case "$(uname -m)" in x86_64) DEFAULT_BOARD=generic-x86 ;; *) DEFAULT_BOARD=rpi5 ;; esac
BOARD=${EDGEBOT_BOARD:-$DEFAULT_BOARD}
CMAKE_FLAGS=$("$PY" - "$BOARD" <<'PY'
import sys, tomllib
with open(f"board-configs/{sys.argv[1]}.toml", "rb") as fh:
    print(tomllib.load(fh)["build"]["cmake_args"])
PY
)
SDIST=$("$PY" -m edgebot.testing.qwen2_vocab --sdist)   # the llama-cpp-python sdist (pip download, once)
KEY=$(printf '%s %s' "$(basename "$SDIST")" "$CMAKE_FLAGS" | sha256sum | cut -c1-16)
ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/llama-server
OUT=$ROOT/$KEY/llama-server
if [ -x "$OUT" ]; then
    echo "$OUT"
    exit 0
fi
echo "build_llama_server: building llama-server for $BOARD from $(basename "$SDIST") (CMAKE flags: $CMAKE_FLAGS)" >&2
WORK=$ROOT/$KEY/work
rm -rf "$WORK"
mkdir -p "$WORK"
tar -xzf "$SDIST" -C "$WORK" --strip-components=3 --wildcards '*/vendor/llama.cpp/*'
# No web UI (and no download of a prebuilt one), no HTTPS, no libcurl: an HTTP API on loopback is all we use.
# shellcheck disable=SC2086  # CMAKE_FLAGS is a list of -D options
cmake -S "$WORK" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    $CMAKE_FLAGS >&2
cmake --build "$WORK/build" --target llama-server -j "${JOBS:-2}" >&2
cp "$WORK/build/bin/llama-server" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
rm -rf "$WORK"
echo "$OUT"
