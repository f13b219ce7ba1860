#!/usr/bin/env bash
# The ARM board profiles' llama.cpp builds, cross-compiled and run in emulation.
#
#   tests/boards/arm-emulation.sh [PROFILE...]      # default: rpi4 rpi5 rk3588
#
# For each profile: the llama.cpp that llama-cpp-python $LLAMA_VERSION vendors (from its sdist on
# PyPI) is cross-compiled with the profile's [build] cmake_args by Debian's aarch64 cross compiler,
# and llama.cpp's own llama-simple (greedy decoding) runs under qemu-aarch64-static with the board's
# CPU model (cortex-a72 for the Pi 4, cortex-a76 for the Pi 5 and the RK3588's big cores) on the
# scripted test GGUF (edgebot/testing/script_model.py), whose whole generation (thinking, </think>,
# answer) is known exactly. A build with dotprod/fp16 is also run on cortex-a72, which lacks them: it
# must die with SIGILL, which shows the flags reach the code and the CPU model is enforced.
#
# Needs: gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static cmake, and .venv (dev-setup.sh).
# Builds are kept in ~/.cache/edgebot/arm/ by a hash of the flags (profiles with the same flags
# share one). Prints one result line per profile and writes them to ~/.cache/edgebot/arm/results.tsv.
# Emulated tokens/s are a sanity figure, not a board's speed. Too long for CI (minutes per build on
# 2 cores): run it by hand when a profile's cmake_args or the llama-cpp-python version change.
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_VERSION=0.3.36
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/arm
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(rpi4 rpi5 rk3588)
JOBS=${EDGEBOT_JOBS:-2}

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64-static cmake; do
    command -v "$tool" >/dev/null || { echo "arm-emulation: $tool missing: sudo apt-get install -y \
gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static cmake" >&2; exit 1; }
done
[ -x .venv/bin/python ] || { echo "arm-emulation: no .venv: run deploy/dev-setup.sh first" >&2; exit 1; }
mkdir -p "$CACHE"

# the vendored llama.cpp, from the sdist
SRC=$CACHE/llama_cpp_python-$LLAMA_VERSION
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    echo "arm-emulation: fetching the llama-cpp-python $LLAMA_VERSION sdist"
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/sdist" \
        "llama-cpp-python==$LLAMA_VERSION"
    tar -xzf "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$CACHE"
fi

MODEL=$CACHE/script.gguf
.venv/bin/python -m edgebot.testing.script_model "$MODEL" >/dev/null
# what the script model generates after the R1 generation prompt, and that prompt (the chat template's)
EXPECTED=$(.venv/bin/python -c 'from edgebot.testing.script_model import DEFAULT_SCRIPT as s
print(s.think_text + s.close_text + s.answer_text, end="")')
PROMPT=$'<｜User｜>What is 2+2?<｜Assistant｜><think>\n'   # llama-simple adds the BOS itself ($(...) would drop the \n)

cpu_of() { case "$1" in rpi4) echo cortex-a72 ;; *) echo cortex-a76 ;; esac; }

# build PROFILE: echo the llama-simple binary; the build time goes to $CACHE/<key>/build-seconds
build() {
    local flags key dir start
    flags=$(.venv/bin/python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["build"]["cmake_args"])' \
        "board-configs/$1.toml")
    key=$(printf '%s %s' "$LLAMA_VERSION" "$flags" | sha256sum | cut -c1-16)
    dir=$CACHE/$key
    if [ ! -x "$dir/build/bin/llama-simple" ]; then
        echo "arm-emulation: $1: cross-compiling llama.cpp with $flags" >&2
        start=$(date +%s)
        # shellcheck disable=SC2086 # the profile's flags are words
        cmake -S "$SRC/vendor/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
            -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
            -DLLAMA_BUILD_EXAMPLES=ON $flags >"$dir.cmake.log" 2>&1 \
            || { echo "arm-emulation: $1: cmake failed, see $dir.cmake.log" >&2; return 1; }
        cmake --build "$dir/build" --target llama-simple -j "$JOBS" >"$dir.build.log" 2>&1 \
            || { echo "arm-emulation: $1: build failed, see $dir.build.log" >&2; return 1; }
        echo $(( $(date +%s) - start )) >"$dir/build-seconds"
    fi
    echo "$dir/build/bin/llama-simple"
}

# run BIN CPU: llama-simple under qemu; stdout = the generated text, stderr kept in $CACHE/last-run.log
run() {
    qemu-aarch64-static -cpu "$2" -L /usr/aarch64-linux-gnu "$1" -m "$MODEL" -n 64 "$PROMPT" 2>"$CACHE/last-run.log"
}

printf 'profile\tcpu\tbuild_s\tanswer_correct\temulated_tokens_per_s\tflags\n' >"$CACHE/results.tsv"
status=0
for p in "${PROFILES[@]}"; do
    bin=$(build "$p") || { status=1; continue; }
    cpu=$(cpu_of "$p")
    out=$(run "$bin" "$cpu") || true
    generated=${out#*"<｜Assistant｜><think>"}   # llama-simple echoes the prompt first
    generated=${generated#$'\n'}
    speed=$(grep -oE 'speed: [0-9.]+ t/s' "$CACHE/last-run.log" | grep -oE '[0-9.]+' | tail -n 1 || true)
    if [ "$generated" = "$EXPECTED" ]; then ok=yes; else ok=no; status=1; fi
    flags=$(grep -oE 'cmake_args = ".*"' "board-configs/$p.toml" | cut -d '"' -f 2)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$cpu" "$(cat "$(dirname "$(dirname "$(dirname "$bin")")")/build-seconds")" \
        "$ok" "${speed:-?}" "$flags" | tee -a "$CACHE/results.tsv"
    if [ "$ok" = no ]; then
        echo "arm-emulation: $p: expected $(printf '%q' "$EXPECTED")" >&2
        echo "arm-emulation: $p: got      $(printf '%q' "$generated") (log: $CACHE/last-run.log)" >&2
    fi
    if [ "$cpu" = cortex-a76 ] && grep -q dotprod <<<"$flags"; then
        if run "$bin" cortex-a72 >/dev/null 2>&1; then
            echo "arm-emulation: $p: the dotprod/fp16 build ran on cortex-a72: the flags did not reach the code" >&2
            status=1
        else
            echo "arm-emulation: $p: on cortex-a72 (no dotprod/fp16) it fails, as it must: $(tail -n 1 "$CACHE/last-run.log")"
        fi
    fi
done
exit $status
