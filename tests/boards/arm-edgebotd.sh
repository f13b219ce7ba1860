#!/usr/bin/env bash
# edgebotd itself on arm64, in emulation: a Debian 12 arm64 root file system run by qemu-aarch64
# through binfmt_misc, the board profile's llama.cpp cross-compiled as shared libraries under
# llama-cpp-python's Python package, and edgebot's own source. The daemon loads the scripted test
# GGUF and answers over the bus to edgebot-cli running in the same arm64 system: one ask (its whole
# scripted answer checked), and two asks at once with [engine] parallel = 2 and the KV cache split per
# sequence (both answers checked, and the split layout confirmed in the daemon's log).
#
#   sudo tests/boards/arm-edgebotd.sh [PROFILE]      # default: rpi5 (cortex-a76; rk3588 has the same flags)
#
# Needs root (debootstrap, chroot, registering qemu-aarch64 with binfmt_misc when it is not), and
# debootstrap qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake, and .venv
# (deploy/dev-setup.sh). The root file system and the build are kept in ~/.cache/edgebot/arm/. Too
# long for CI (a cross-build of ~20 min and a debootstrap of ~10 min on 2 cores the first time; each
# emulated run takes a minute or two): run it by hand when the engine or a profile's flags change.
# tests/boards/arm-emulation.sh checks the llama.cpp builds alone, on every ARM profile.
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_VERSION=0.3.36
PROFILE=${1:-rpi5}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/arm
ROOT=$CACHE/rootfs-arm64
JOBS=${EDGEBOT_JOBS:-2}
case "$PROFILE" in rpi4) CPU=cortex-a72 ;; *) CPU=cortex-a76 ;; esac

[ "$(id -u)" = 0 ] || { echo "arm-edgebotd: run it as root (debootstrap and chroot)" >&2; exit 1; }
for tool in debootstrap qemu-aarch64-static aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ cmake; do
    command -v "$tool" >/dev/null || { echo "arm-edgebotd: $tool missing: sudo apt-get install -y debootstrap \
qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake" >&2; exit 1; }
done
[ -x .venv/bin/python ] || { echo "arm-edgebotd: no .venv: run deploy/dev-setup.sh first" >&2; exit 1; }
mkdir -p "$CACHE"

# arm64 executables run through qemu-aarch64 (the F flag: the interpreter is opened now, so it works in a chroot)
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
fi

# the vendored llama.cpp, from the sdist (as arm-emulation.sh)
SRC=$CACHE/llama_cpp_python-$LLAMA_VERSION
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/sdist" \
        "llama-cpp-python==$LLAMA_VERSION"
    tar -xzf "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$CACHE"
fi

# the profile's llama.cpp as shared libraries (what llama-cpp-python loads)
FLAGS=$(.venv/bin/python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["build"]["cmake_args"])' \
    "board-configs/$PROFILE.toml")
KEY=$(printf '%s %s shared' "$LLAMA_VERSION" "$FLAGS" | sha256sum | cut -c1-16)
BUILD=$CACHE/$KEY-shared
if [ ! -f "$BUILD/build/bin/libllama.so" ]; then
    echo "arm-edgebotd: cross-compiling llama.cpp (shared) with $FLAGS"
    # shellcheck disable=SC2086 # the profile's flags are words
    cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD/build" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF $FLAGS >"$BUILD.cmake.log" 2>&1
    cmake --build "$BUILD/build" --target llama -j "$JOBS" >"$BUILD.build.log" 2>&1 \
        || { echo "arm-edgebotd: build failed, see $BUILD.build.log" >&2; exit 1; }
fi

# Debian 12 arm64 with the Python packages edgebotd and llama-cpp-python need
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    echo "arm-edgebotd: debootstrap of Debian 12 arm64 into $ROOT"
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-numpy,python3-jinja2,python3-typing-extensions,python3-diskcache,python3-jsonschema,libgomp1 \
        bookworm "$ROOT" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
        || { echo "arm-edgebotd: debootstrap failed, see $CACHE/debootstrap.log" >&2; exit 1; }
fi

# edgebot and llama-cpp-python's Python package (its ctypes binding) with the arm64 libraries
APP=$ROOT/opt/edgebot
rm -rf "$APP" && mkdir -p "$APP/lib/llama_cpp/lib" "$APP/run"
cp -r edgebot "$APP/lib/"
cp -r board-configs "$APP/"
find "$APP/lib/edgebot" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$SRC/llama_cpp/." "$APP/lib/llama_cpp/"
find "$BUILD/build/bin" -name '*.so*' -exec cp -P {} "$APP/lib/llama_cpp/lib/" \;
.venv/bin/python -m edgebot.testing.script_model "$APP/script.gguf" >/dev/null
EXPECTED=$(.venv/bin/python -c 'from edgebot.testing.script_model import DEFAULT_SCRIPT as s; print(s.answer_text)')
file -L "$APP/lib/llama_cpp/lib/libllama.so" | grep -q aarch64 || { echo "arm-edgebotd: libllama.so is not aarch64" >&2; exit 1; }

cat >"$APP/run/check.py" <<'PY'
"""Runs inside the arm64 system: edgebotd on the script model, asked by edgebot-cli (also arm64)."""
import json, os, platform, socket, subprocess, sys, time

expected = sys.argv[1]
assert platform.machine() == "aarch64", platform.machine()
env = {**os.environ, "PYTHONPATH": "/opt/edgebot/lib", "OMP_WAIT_POLICY": "PASSIVE",
       "EDGEBOT_BOARD_DIR": "/opt/edgebot/board-configs",
       "LD_LIBRARY_PATH": "/opt/edgebot/lib/llama_cpp/lib"}  # the cross-build's RUNPATH names the build folder
py = sys.executable
with open("/opt/edgebot/run/edgebot.toml", "w") as fh:
    fh.write("[llm]\nn_ctx = 1024\nn_threads = 2\n[engine]\nparallel = 2\nsequences = 2\nkv_tokens = 4096\n"
             "kv_per_sequence = true\n")
sock = "/opt/edgebot/run/bus.sock"
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # edgebotd says READY=1 here, as to systemd
if os.path.exists("/opt/edgebot/run/notify.sock"):
    os.unlink("/opt/edgebot/run/notify.sock")
notify.bind("/opt/edgebot/run/notify.sock")
notify.settimeout(5)
env["NOTIFY_SOCKET"] = "/opt/edgebot/run/notify.sock"
t0 = time.monotonic()
daemon = subprocess.Popen([py, "-c", "import sys; from edgebot.daemon import main; sys.exit(main())",
                           "--config", "/opt/edgebot/run/edgebot.toml", "--model", "/opt/edgebot/script.gguf",
                           "--socket", sock, "--board", "rpi5", "--log-level", "INFO"], env=env,
                          stderr=open("/opt/edgebot/run/edgebotd.log", "w"))
cli = [py, "-c", "import sys; from edgebot.cli import main; sys.exit(main())", "--socket", sock]
try:
    while True:  # READY=1, or the daemon's death, whichever comes first (15 minutes at most)
        try:
            if b"READY=1" in notify.recv(4096):
                break
        except socket.timeout:
            pass
        assert daemon.poll() is None, "edgebotd exited: " + open("/opt/edgebot/run/edgebotd.log").read()[-2000:]
        assert time.monotonic() - t0 < 900, "edgebotd not ready after 15 minutes"
    ready = time.monotonic() - t0
    up = subprocess.run(cli + ["ask", "What is 2+2?"], env=env, capture_output=True, text=True, timeout=900)
    print(f"edgebotd on {platform.machine()}: ready in {ready:.1f} s, answered in {time.monotonic() - t0 - ready:.1f} s: "
          f"{up.stdout.strip()!r}")
    assert up.returncode == 0 and up.stdout.strip() == expected, (up.returncode, up.stdout, up.stderr)
    asks = [subprocess.Popen(cli + ["ask", "--json", "--session", f"s{i}", f"Question {i}?"], env=env,
                             stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in asks]
    for out in outs:
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        text = "".join(x["data"]["text"] for x in lines if x["type"] == "answer-delta")
        assert text == expected, out
    log = open("/opt/edgebot/run/edgebotd.log").read()
    assert "split evenly" in log, log[-2000:]
    print("two asks at once, parallel 2, KV cache split per sequence: both answers exact")
finally:
    daemon.terminate()
    daemon.wait(60)
PY
echo "arm-edgebotd: running edgebotd in Debian 12 arm64 under qemu-aarch64 ($CPU, profile $PROFILE)"
QEMU_CPU=$CPU chroot "$ROOT" /usr/bin/python3 /opt/edgebot/run/check.py "$EXPECTED" \
    || { echo "arm-edgebotd: FAILED; edgebotd's log: $APP/run/edgebotd.log" >&2; exit 1; }
echo "arm-edgebotd: OK"
