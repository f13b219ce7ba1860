#!/usr/bin/env bash
# Install edgebot on a board: apt packages, the edgebot user, a venv in /opt/edgebot with
# llama-cpp-python built for the board (CMAKE_ARGS from board-configs/BOARD.toml), the config in
# /etc/edgebot, the systemd units and udev rules, the models, and start it at every boot.
#
#   sudo deploy/install.sh rpi5               # Raspberry Pi 5 (also: rpi4, rk3588, generic-x86)
#   deploy/install.sh rpi5 --dry-run          # print every step, change nothing (no root needed)
#   sudo deploy/install.sh rk3588 --npu       # the model on the RK3588 NPU (profile rk3588-npu, docs/npu.md)
#   sudo deploy/install.sh rpi5 --wheel llama_cpp_python-0.3.36-cp311-cp311-linux_aarch64.whl
#                                             # a llama-cpp-python wheel built once for this board kind
#   sudo deploy/install.sh rpi5 --http        # the OpenAI-compatible HTTP API too (docs/http-api.md)
#
# Idempotent: each step checks first and says "unchanged"; a second run changes nothing and says so.
# Supported: Debian 12/13, Raspberry Pi OS (bookworm or later), Ubuntu 22.04/24.04; arm64, or x86-64
# with the generic-x86 profile for development.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/edgebot
LLAMA_VERSION=${EDGEBOT_LLAMA_VERSION:-0.3.36}   # the llama-cpp-python release the tests ran against
MODEL_MB=1066      # DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M (1,117,320,800 bytes)
VOICE_MB=200       # a vosk small model + a piper voice, unpacked
VENV_MB=1500       # the venv plus the llama.cpp build tree while compiling
MIN_MEM_MB=1800    # model + a 2048-token KV cache + compute buffers + the OS (see board-configs/README.md)
# The RKLLM runtime edgebot's bindings are written against (edgebot/engine/backends/rkllm_api.py, docs/npu.md):
# rknn-llm's aarch64 librkllmrt.so at that tag, checked by its git blob id; and the NPU driver it needs.
RKLLM_VERSION=1.3.0
RKLLM_TAG=release-v1.3.0
RKLLM_BLOB=34167b32f99cb7ab19e21fb579fb750d96b878f1
RKLLM_URL=https://github.com/airockchip/rknn-llm/raw/$RKLLM_TAG/rkllm-runtime/Linux/librkllm_api/aarch64/librkllmrt.so
MIN_NPU_DRIVER=0.9.8
# Overridable for tests and unusual systems (documented in docs/install.md).
OS_RELEASE=${EDGEBOT_OS_RELEASE:-/etc/os-release}
MEMINFO=${EDGEBOT_MEMINFO:-/proc/meminfo}
ARCH=${EDGEBOT_ARCH:-$(uname -m)}
RKNPU_FILES=${EDGEBOT_RKNPU_FILES:-/sys/kernel/debug/rknpu/version /sys/module/rknpu/version}

DRY_RUN=0 VOICE=1 MODELS=1 REBUILD=0 ROOT="" LANGUAGE=en BOARD="" NPU=0 NPU_RUNTIME="" WHEEL="" HTTP=0 PANEL=0
# the console scripts linked into /usr/local/bin, so `edgebot-cli doctor` works from any shell
COMMANDS=(edgebot-cli edgebotd edgebot-serial edgebot-speech-in edgebot-speech-out)
CHANGED=0

usage() {
    cat <<EOF
usage: deploy/install.sh BOARD [--dry-run] [--no-voice] [--no-models] [--lang en|zh] [--rebuild] [--root DIR]
                         [--wheel FILE] [--http] [--npu [--npu-runtime FILE]] [--panel]
  BOARD        one of: $(boards | tr '\n' ' ')
  --dry-run    print every step without doing it
  --no-voice   skip the speech bridges (no microphone/speaker)
  --no-models  do not download models (copy them to /var/lib/edgebot later); the units that need a model
               are enabled, not started
  --lang       voice models for English (en, default) or Mandarin (zh)
  --rebuild    rebuild llama-cpp-python even if it was built with the same flags
  --root DIR   install the files (units, config, users, rules) under DIR; skips apt, venv, models, systemctl
  --wheel FILE install this prebuilt llama-cpp-python $LLAMA_VERSION wheel instead of compiling it (build it
               once per board kind: pip wheel --no-binary llama-cpp-python with the profile's CMAKE_ARGS)
  --http       serve the HTTP API: the aiohttp extra, [http] enabled in a new config, and the network drop-in
  --panel      the classroom panel on the board's display: Chromium in kiosk mode (deploy/panel.sh; implies --http)
  --npu        rk3588 only: run the model on the NPU (profile rk3588-npu): checks the NPU driver
               (>= $MIN_NPU_DRIVER) and installs RKLLM runtime $RKLLM_VERSION in /usr/local/lib
  --npu-runtime FILE  install this librkllmrt.so instead of downloading it (it must be the same $RKLLM_VERSION build)
EOF
}

boards() { for f in "$REPO"/board-configs/*.toml; do basename "$f" .toml; done; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }
note() { echo "    $*"; }
unchanged() { echo "    ok: $* (unchanged)"; }

# run CMD...: do it (or print it in a dry run); every change goes through here.
run() {
    CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then
        echo "    would run: $*"
    else
        echo "    run: $*"
        "$@"
    fi
}

# toml_get FILE SECTION KEY: a string/number value from our own flat TOML files (no arrays).
toml_get() {
    awk -v want="$2" -v key="$3" '
        /^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); section = $0; next }
        section == want {
            line = $0; sub(/[[:space:]]+#.*$/, "", line)
            if (match(line, "^[[:space:]]*" key "[[:space:]]*=")) {
                value = substr(line, RLENGTH + 1); gsub(/^[[:space:]]+|[[:space:]]+$/, "", value)
                gsub(/^"|"$/, "", value); print value; exit
            }
        }' "$1"
}

# install_file SRC DEST MODE: copy when missing or different.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        unchanged "$2"
    else
        run install -D -m "$3" "$1" "$2"
        FILES_CHANGED=1
    fi
}

# write_file DEST MODE: like install_file, with the generated content on stdin.
write_file() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        unchanged "$1"
    elif [ "$DRY_RUN" = 1 ]; then
        CHANGED=1 FILES_CHANGED=1
        echo "    would write $1:"
        sed 's/^/    | /' "$tmp"
    else
        run install -D -m "$2" "$tmp" "$1"
        FILES_CHANGED=1
    fi
    rm -f "$tmp"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --no-voice) VOICE=0 ;;
            --no-models) MODELS=0 ;;
            --rebuild) REBUILD=1 ;;
            --lang) shift; LANGUAGE=${1:-} ;;
            --root) shift; ROOT=${1:-}; [ -n "$ROOT" ] || { usage >&2; exit 2; } ;;
            --npu) NPU=1 ;;
            --panel) PANEL=1 HTTP=1 ;;
            --npu-runtime) shift; NPU_RUNTIME=${1:-}; [ -n "$NPU_RUNTIME" ] || { usage >&2; exit 2; } ;;
            --wheel) shift; WHEEL=${1:-}; [ -n "$WHEEL" ] || { usage >&2; exit 2; } ;;
            --http) HTTP=1 ;;
            -h|--help) usage; exit 0 ;;
            -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
            *) [ -z "$BOARD" ] || { echo "install.sh: one board only (got $BOARD and $1)" >&2; exit 2; }
               BOARD=$1 ;;
        esac
        shift
    done
    if [ -z "$BOARD" ]; then
        echo "install.sh: error: no board name given" >&2
        usage >&2
        exit 2
    fi
    if [ ! -f "$REPO/board-configs/$BOARD.toml" ]; then
        echo "install.sh: error: unknown board '$BOARD'; known boards: $(boards | tr '\n' ' ')" >&2
        exit 2
    fi
    case "$LANGUAGE" in en|zh) ;; *) echo "install.sh: --lang must be en or zh" >&2; exit 2 ;; esac
    case "$BOARD:$NPU" in
        rk3588:1) BOARD=rk3588-npu ;;
        rk3588-npu:*) NPU=1 ;;
        *:1) echo "install.sh: --npu is for the rk3588 board only (RKLLM runs on its NPU)" >&2; exit 2 ;;
    esac
    if [ -n "$NPU_RUNTIME" ] && [ "$NPU" = 0 ]; then
        echo "install.sh: --npu-runtime goes with --npu" >&2; exit 2
    fi
    if [ -n "$WHEEL" ]; then
        [ -f "$WHEEL" ] || { echo "install.sh: --wheel $WHEEL: no such file" >&2; exit 2; }
        case "$(basename "$WHEEL")" in
            llama_cpp_python-"$LLAMA_VERSION"-*.whl) ;;
            *) echo "install.sh: --wheel $WHEEL is not a llama_cpp_python-$LLAMA_VERSION-*.whl (edgebot is tested \
against llama-cpp-python $LLAMA_VERSION)" >&2; exit 2 ;;
        esac
        WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
    fi
    if [ -n "$ROOT" ]; then
        mkdir -p "$ROOT"
        ROOT=$(cd "$ROOT" && pwd)
    fi
}

# --- 1. checks that fail early, before anything is changed -----------------------------------
preflight() {
    say "checking the system"
    [ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE: unsupported OS"
    local id like version
    # shellcheck source=/dev/null
    id=$(. "$OS_RELEASE"; echo "${ID:-}")
    # shellcheck source=/dev/null
    like=$(. "$OS_RELEASE"; echo "${ID_LIKE:-}")
    # shellcheck source=/dev/null
    version=$(. "$OS_RELEASE"; echo "${VERSION_ID:-0}")
    case "$id" in
        debian|raspbian) [ "${version%%.*}" -ge 12 ] 2>/dev/null \
            || die "Debian/Raspberry Pi OS $version is too old: bookworm (12) or later is needed" ;;
        ubuntu) [ "${version%%.*}" -ge 22 ] 2>/dev/null || die "Ubuntu $version is too old: 22.04 or later is needed" ;;
        *) die "unsupported OS '$id' (ID_LIKE '$like'): edgebot installs on Debian 12+, Raspberry Pi OS or Ubuntu 22.04+" ;;
    esac
    note "OS: $id $version, $ARCH"
    local want_arch
    want_arch=$(case "$BOARD" in generic-x86) echo x86_64 ;; *) echo aarch64 ;; esac)
    [ "$ARCH" = "$want_arch" ] || die "board $BOARD needs a $want_arch system, this one is $ARCH \
(a 32-bit OS on a Pi reports armv7l: install the 64-bit Raspberry Pi OS)"
    local mem_kb mem_mb need_disk free_mb dir
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' "$MEMINFO")
    mem_mb=$((mem_kb / 1024))
    [ "$mem_mb" -ge "$MIN_MEM_MB" ] || die "only $mem_mb MiB of memory; the model needs at least $MIN_MEM_MB MiB"
    note "memory: $mem_mb MiB (at least $MIN_MEM_MB needed)"
    need_disk=$VENV_MB
    [ "$MODELS" = 0 ] || need_disk=$((need_disk + MODEL_MB))
    [ "$VOICE" = 0 ] || [ "$MODELS" = 0 ] || need_disk=$((need_disk + VOICE_MB))
    dir=${ROOT:-}/var/lib
    while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
    free_mb=${EDGEBOT_FREE_MB:-$(df -Pm "$dir" | awk 'NR == 2 { print $4 }')}
    [ "$free_mb" -ge "$need_disk" ] || die "only $free_mb MiB free on $dir; $need_disk MiB are needed \
(venv and build $VENV_MB, model $MODEL_MB, voices $VOICE_MB)"
    note "disk: $free_mb MiB free on $dir ($need_disk needed)"
    [ "$NPU" = 0 ] || npu_preflight
    if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo deploy/install.sh $BOARD), or look first with --dry-run"
    fi
    MEM_MB=$mem_mb
}

# --- NPU (--npu): the kernel driver, then the pinned RKLLM runtime -----------------------------
# npu_driver_version: "VERSION WHERE" from the first driver file that names one, else dmesg.
npu_driver_version() {
    local f v
    for f in $RKNPU_FILES; do
        [ -r "$f" ] || continue
        v=$(grep -oE '[0-9]+\.[0-9]+\.[0-9]+' "$f" 2>/dev/null | head -n 1) || true
        if [ -n "$v" ]; then echo "$v $f"; return; fi
    done
    if [ -z "${EDGEBOT_RKNPU_FILES:-}" ] && command -v dmesg >/dev/null; then
        v=$(dmesg 2>/dev/null | grep -oE 'Initialized rknpu [0-9]+\.[0-9]+\.[0-9]+' | tail -n 1 | awk '{ print $3 }') || true
        if [ -n "$v" ]; then echo "$v dmesg"; fi
    fi
}

version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }  # version_ge A B: A >= B

npu_preflight() {
    local found version
    found=$(npu_driver_version)
    [ -n "$found" ] || die "no RKNPU kernel driver found ($RKNPU_FILES, dmesg): the NPU needs a Rockchip \
vendor kernel with rknpu $MIN_NPU_DRIVER or later (docs/npu.md); for the CPU instead: deploy/install.sh rk3588"
    version=${found%% *}
    version_ge "$version" "$MIN_NPU_DRIVER" || die "the RKNPU driver is $version (${found#* }), too old: RKLLM \
runtime $RKLLM_VERSION needs $MIN_NPU_DRIVER or later; update the board's kernel (docs/npu.md), or use the CPU: \
deploy/install.sh rk3588"
    note "NPU driver: rknpu $version (${found#* }; at least $MIN_NPU_DRIVER needed)"
    if [ -n "$NPU_RUNTIME" ]; then
        [ -r "$NPU_RUNTIME" ] || die "--npu-runtime $NPU_RUNTIME: no such file"
        check_runtime "$NPU_RUNTIME" "$NPU_RUNTIME"
    fi
}

# git_blob_id FILE: what `git hash-object FILE` prints (sha1 of "blob SIZE\0" + content), without git.
git_blob_id() { { printf 'blob %d\0' "$(stat -c %s "$1")"; cat "$1"; } | sha1sum | cut -d ' ' -f 1; }

check_runtime() {  # check_runtime FILE NAME: die (removing FILE when it is a download) unless it is the pinned build
    local id
    id=$(git_blob_id "$1")
    [ "$id" = "$RKLLM_BLOB" ] && return 0
    [ "$1" = "$2" ] || rm -f "$1"
    die "$2 is not the RKLLM runtime $RKLLM_VERSION build edgebot is written against \
(its git blob id is $id, not $RKLLM_BLOB): edgebotd would refuse it"
}

npu_runtime() {
    [ "$NPU" = 1 ] || return 0
    say "RKLLM runtime $RKLLM_VERSION for the NPU"
    local dest=$ROOT/usr/local/lib/librkllmrt.so tmp
    if [ -n "$ROOT" ]; then note "skipped with --root"; return; fi
    if [ -f "$dest" ] && [ "$(git_blob_id "$dest")" = "$RKLLM_BLOB" ]; then
        unchanged "$dest is runtime $RKLLM_VERSION (git blob $RKLLM_BLOB)"
        return
    fi
    if [ "$DRY_RUN" = 1 ]; then
        CHANGED=1
        echo "    would install ${NPU_RUNTIME:-$RKLLM_URL} as $dest after checking its git blob id is $RKLLM_BLOB"
        echo "    would run: ldconfig"
        return
    fi
    tmp=$(mktemp)
    if [ -n "$NPU_RUNTIME" ]; then
        cp "$NPU_RUNTIME" "$tmp"
    else
        run curl -fsSL --retry 3 -o "$tmp" "$RKLLM_URL" || { rm -f "$tmp"; die "download of $RKLLM_URL failed; \
retry, or fetch it elsewhere and pass --npu-runtime FILE"; }
    fi
    check_runtime "$tmp" "${NPU_RUNTIME:-$RKLLM_URL}"
    run install -D -m 0644 "$tmp" "$dest"
    rm -f "$tmp"
    run ldconfig
}

# --- 2. Debian packages ---------------------------------------------------------------------
apt_packages() {
    say "apt packages"
    local cmake_args pkgs missing=() p
    cmake_args=$(toml_get "$PROFILE" build cmake_args)
    pkgs=(python3 python3-venv ca-certificates)
    if [ -z "$WHEEL" ]; then pkgs+=(python3-dev build-essential cmake git pkg-config); fi  # to compile llama.cpp
    [ "$NPU" = 0 ] || pkgs+=(curl)
    case "$cmake_args" in *GGML_BLAS=ON*) pkgs+=(libopenblas-dev) ;; esac
    case "$cmake_args" in *GGML_OPENMP=OFF*) ;; *) pkgs+=(libgomp1) ;; esac  # llama.cpp uses OpenMP by default
    [ "$VOICE" = 0 ] || pkgs+=(libportaudio2 alsa-utils)
    note "wanted: ${pkgs[*]}"
    if [ -n "$ROOT" ]; then note "skipped with --root"; return; fi
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} = 0 ]; then
        unchanged "all installed"
    else
        run apt-get update || die "apt-get update failed (see above): check the network and /etc/apt/sources.list"
        run apt-get install -y --no-install-recommends "${missing[@]}" \
            || die "apt-get could not install ${missing[*]} (see above); fix that, then run install.sh again"
    fi
}

# --- 3. the user, group and directories -------------------------------------------------------
users_and_dirs() {
    say "user, group and directories (sysusers.d, tmpfiles.d)"
    local sysroot=()
    [ -z "$ROOT" ] || sysroot=(--root="$ROOT")
    FILES_CHANGED=0
    install_file "$REPO/deploy/sysusers.d/edgebot.conf" "$ROOT/etc/sysusers.d/edgebot.conf" 0644
    if [ "$FILES_CHANGED" = 1 ] || ! grep -q '^edgebot:' "$ROOT/etc/passwd" 2>/dev/null; then
        run systemd-sysusers "${sysroot[@]}" edgebot.conf
    else
        unchanged "user edgebot"
    fi
    FILES_CHANGED=0
    install_file "$REPO/deploy/tmpfiles.d/edgebot.conf" "$ROOT/etc/tmpfiles.d/edgebot.conf" 0644
    if [ "$FILES_CHANGED" = 1 ] || [ ! -d "$ROOT/var/lib/edgebot/models" ]; then
        run systemd-tmpfiles "${sysroot[@]}" --create edgebot.conf
    else
        unchanged "directories /etc/edgebot /var/lib/edgebot/{models,voices}"
    fi
}

# --- 4. the venv, llama-cpp-python built for the board, edgebot itself -----------------------
venv_and_build() {
    say "venv $PREFIX/venv and llama-cpp-python $LLAMA_VERSION built for $BOARD"
    local cmake_args stamp want extras src_hash
    cmake_args=$(toml_get "$PROFILE" build cmake_args)
    note "CMAKE_ARGS=$cmake_args"
    if [ -n "$ROOT" ]; then note "skipped with --root"; return; fi
    if [ -x "$PREFIX/venv/bin/python" ]; then unchanged "$PREFIX/venv"; else run python3 -m venv "$PREFIX/venv"; fi
    stamp=$PREFIX/venv/.llama-cpp-build
    if [ -n "$WHEEL" ]; then
        want="llama-cpp-python wheel $(basename "$WHEEL") sha256 $(sha256sum "$WHEEL" | cut -d ' ' -f 1)"
    else
        want="llama-cpp-python==$LLAMA_VERSION CMAKE_ARGS=$cmake_args"
    fi
    if [ "$REBUILD" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        if [ -n "$WHEEL" ]; then unchanged "llama-cpp-python from $(basename "$WHEEL") (same sha256)"
        else unchanged "llama-cpp-python built with these flags"; fi
    elif [ -n "$WHEEL" ]; then
        note "the prebuilt wheel: it must have been built with the CMAKE_ARGS above for this board kind"
        run "$PREFIX/venv/bin/pip" install --no-cache-dir --force-reinstall --no-deps "$WHEEL" \
            || pip_failed "the llama-cpp-python wheel $WHEEL" "Is it for this Python ($(python3 --version)) and \
this CPU ($ARCH)? its name says which"
        run_write "$stamp" "$want"
    else
        note "compiling llama.cpp: 10-30 minutes on a Pi 5, longer on a Pi 4"
        run env CMAKE_ARGS="$cmake_args" FORCE_CMAKE=1 "$PREFIX/venv/bin/pip" install --no-cache-dir \
            --force-reinstall --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION" \
            || pip_failed "llama-cpp-python $LLAMA_VERSION (compiled with CMAKE_ARGS=$cmake_args)" "A compiler \
error names the flag or package missing (build-essential, cmake); out of memory on a small board: add swap"
        run_write "$stamp" "$want"
    fi
    extras=serial,mqtt,wyoming
    [ "$VOICE" = 0 ] || extras=serial,mqtt,wyoming,voice
    [ "$HTTP" = 0 ] || extras=$extras,http
    src_hash=$(cd "$REPO" && find edgebot pyproject.toml -type f \( -name '*.py' -o -name pyproject.toml \) \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
    stamp=$PREFIX/venv/.edgebot-source
    want="$src_hash [$extras]"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        unchanged "edgebot [$extras] installed from this source"
    else
        [ "$VOICE" = 0 ] || note "the voice extra installs piper-tts (GPL-3.0); --no-voice leaves it out"
        run "$PREFIX/venv/bin/pip" install --no-cache-dir "${REPO}[$extras]" \
            || pip_failed "edgebot [$extras] and its Python packages" "A package with no wheel for this system \
needs its build dependencies"
        run_write "$stamp" "$want"
    fi
}

# pip_failed WHAT HINT: say what pip could not install and how to go on, then stop.
pip_failed() {
    die "pip could not install $1 (its own messages are above). $2. Network problems: pip must reach PyPI \
(a proxy or TLS-inspecting gateway needs PIP_PROXY / PIP_CERT or /etc/pip.conf). Fix it and run install.sh again: \
finished steps are kept"
}

# --- 4b. the commands on PATH ------------------------------------------------------------------
commands_on_path() {
    say "commands on PATH (/usr/local/bin)"
    local c link target
    for c in "${COMMANDS[@]}"; do
        link=$ROOT/usr/local/bin/$c
        target=$PREFIX/venv/bin/$c
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
            unchanged "$link -> $target"
        elif [ -e "$link" ] && [ ! -L "$link" ]; then
            note "$link exists and is not ours: left alone (run $target)"
        else
            run mkdir -p "$ROOT/usr/local/bin"
            run ln -sfn "$target" "$link"
        fi
    done
}

run_write() {  # run_write FILE TEXT
    CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then echo "    would write $1"; else printf '%s\n' "$2" >"$1"; fi
}

# --- 5. board profiles, docs, config ---------------------------------------------------------
config_files() {
    say "board profiles and config"
    local f
    for f in "$REPO"/board-configs/*.toml; do
        install_file "$f" "$ROOT$PREFIX/board-configs/$(basename "$f")" 0644
    done
    for f in "$REPO"/docs/*.md; do
        install_file "$f" "$ROOT$PREFIX/docs/$(basename "$f")" 0644
    done
    local conf=$ROOT/etc/edgebot/edgebot.toml
    if [ -f "$conf" ]; then
        unchanged "$conf kept as it is (never overwritten)"
    else
        write_file "$conf" 0644 < <(
            echo "# edgebot configuration; every key: $PREFIX/docs/configuration.md"
            echo "board = \"$BOARD\""
            if [ "${MEM_MB:-4096}" -lt 3000 ]; then
                echo
                echo "[llm]"
                echo "# a ${MEM_MB} MiB board: a 2048-token context leaves room for the speech bridges"
                echo "n_ctx = 2048"
                echo "n_batch = 128"
                echo "[engine]"
                echo "# one 2048-token KV cache (56 MiB) for every conversation"
                echo "kv_tokens = 2048"
            fi
            if [ "$HTTP" = 1 ]; then
                echo
                echo "[http]"
                echo "# the OpenAI-compatible API on this board only; another host needs host and token ($PREFIX/docs/http-api.md)"
                echo "enabled = true"
            fi
        )  # not a pipe: write_file must run in this shell to record the change
    fi
}

# network_needs CONF: "lan" when the config serves HTTP beyond loopback or uses the remote backend,
# "loopback" when it serves HTTP on loopback only, "" when edgebotd needs no network at all.
network_needs() {
    local conf=$1 enabled host backend
    [ -f "$conf" ] || { [ "$HTTP" = 1 ] && echo loopback; return 0; }
    enabled=$(toml_get "$conf" http enabled)
    host=$(toml_get "$conf" http host)
    backend=$(toml_get "$conf" llm backend)
    if [ "$backend" = remote ]; then echo lan; return 0; fi
    if [ "$enabled" = true ] || { [ "$HTTP" = 1 ] && [ -z "$enabled" ]; }; then
        case "${host:-127.0.0.1}" in 127.*|::1|localhost) echo loopback ;; *) echo lan ;; esac
    fi
}

# --- 6. systemd units, the board drop-in, udev rules -----------------------------------------
units_and_rules() {
    say "systemd units and udev rules"
    local unit dir=$ROOT/etc/systemd/system mem cpus
    FILES_CHANGED=0
    for unit in edgebot.socket edgebot.service edgebot-serial@.service edgebot-speech-in.service \
                edgebot-speech-out.service edgebot-mqtt.service edgebot-wyoming.service; do
        install_file "$REPO/systemd/$unit" "$dir/$unit" 0644
    done
    mem=$(toml_get "$PROFILE" service memory_max)
    cpus=$(toml_get "$PROFILE" service cpu_affinity)
    write_file "$dir/edgebot.service.d/board.conf" 0644 < <(
        echo "# Written by deploy/install.sh from board-configs/$BOARD.toml [service]."
        echo "[Service]"
        [ -z "$mem" ] || echo "MemoryMax=$mem"
        [ -z "$cpus" ] || echo "CPUAffinity=$cpus"
    )  # not a pipe: write_file must run in this shell to record the change
    note "MemoryMax=${mem:-none} CPUAffinity=${cpus:-all}"
    network_dropin "$dir/edgebot.service.d/network.conf"
    UNITS_CHANGED=$FILES_CHANGED
    FILES_CHANGED=0
    install_file "$REPO/deploy/udev/70-edgebot-serial.rules" "$ROOT/etc/udev/rules.d/70-edgebot-serial.rules" 0644
    if [ "$FILES_CHANGED" = 1 ] && [ -z "$ROOT" ] && command -v udevadm >/dev/null; then
        run udevadm control --reload-rules
        run udevadm trigger --subsystem-match=tty --action=add
    fi
    if [ "$UNITS_CHANGED" = 1 ] && [ -z "$ROOT" ] && systemd_running; then
        run systemctl daemon-reload
        if [ "$DRY_RUN" = 0 ] && systemctl is-active --quiet edgebot.service; then
            run systemctl restart edgebot.service  # a changed unit or drop-in applies only to a new process
        fi
    fi
}

systemd_running() { [ -d /run/systemd/system ]; }

# network_dropin FILE: edgebot.service has no network (PrivateNetwork=yes, AF_UNIX only, IPAddressDeny=any).
# Only when the config serves HTTP or uses the remote backend does this drop-in open what that needs:
# the host's network namespace, IPv4/IPv6 sockets, and IP traffic with loopback (and, for "lan", the
# private LAN ranges and link-local; never the internet). Removed again when the config no longer asks.
network_dropin() {
    local need
    need=$(network_needs "$ROOT/etc/edgebot/edgebot.toml")
    if [ -z "$need" ]; then
        if [ -f "$1" ]; then
            run rm -f "$1"
            FILES_CHANGED=1
        fi
        note "no network for edgebotd (no [http] enabled, no remote backend)"
        return
    fi
    write_file "$1" 0644 < <(
        echo "# Written by deploy/install.sh: the config serves HTTP or asks a remote server ($need)."
        echo "[Service]"
        echo "PrivateNetwork=no"
        echo "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"
        if [ "$need" = lan ]; then
            echo "IPAddressAllow=localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"
        else
            echo "IPAddressAllow=localhost"
        fi
    )  # not a pipe: write_file must run in this shell to record the change
    note "network for edgebotd: $need only (IPAddressDeny=any stays for everything else)"
    if [ "$HTTP" = 1 ] && [ -f "$ROOT/etc/edgebot/edgebot.toml" ] \
        && [ "$(toml_get "$ROOT/etc/edgebot/edgebot.toml" http enabled)" != true ]; then
        note "--http: $ROOT/etc/edgebot/edgebot.toml was kept as it is; add [http] enabled = true there to serve it"
    fi
}

# --- 7. models ---------------------------------------------------------------------------------
models() {
    say "models"
    if [ "$MODELS" = 0 ]; then note "skipped (--no-models): copy the GGUF to /var/lib/edgebot/models/"; return; fi
    if [ -n "$ROOT" ]; then note "skipped with --root"; return; fi
    local cli=$PREFIX/venv/bin/edgebot-cli out
    local names=(deepseek-r1-distill-qwen-1.5b-q4_k_m)
    if [ "$NPU" = 1 ]; then
        names=()
        note "the NPU model is not downloadable: convert it with rkllm-toolkit $RKLLM_VERSION on an x86 PC and copy it"
        note "to $(toml_get "$PROFILE" llm model) (docs/npu.md)"
        [ "$VOICE" = 1 ] || return 0
    fi
    if [ "$VOICE" = 1 ]; then
        if [ "$LANGUAGE" = zh ]; then names+=(vosk-small-zh piper-zh-huayan-medium)
        else names+=(vosk-small-en piper-en-lessac-medium); fi
    fi
    if [ "$DRY_RUN" = 1 ]; then
        echo "    would run: $cli model pull ${names[*]}"
        CHANGED=1
        return
    fi
    out=$("$cli" model pull "${names[@]}" | tee /dev/stderr) || die "model download failed (see above); \
run the same command again to resume, or use --no-models and copy the files"
    case "$out" in *"installed "*) CHANGED=1 ;; esac
    fix_model_owner
}

fix_model_owner() {
    if find /var/lib/edgebot -not -user edgebot -print -quit | grep -q .; then
        run chown -R edgebot:edgebot /var/lib/edgebot
    fi
}

# --- 8. enable and start -----------------------------------------------------------------------
enable_units() {
    say "enable at boot and start"
    local units=(edgebot.socket edgebot.service) u todo=() later=()
    [ "$VOICE" = 0 ] || units+=(edgebot-speech-in.service edgebot-speech-out.service)
    if [ -n "$ROOT" ]; then note "skipped with --root: ${units[*]}"; return; fi
    for u in "${units[@]}"; do
        if [ "$MODELS" = 0 ] && [ "$u" != edgebot.socket ]; then
            # no models yet: enabled for the next boot, not started now (edgebotd would exit 78 at once)
            if [ "$DRY_RUN" = 0 ] && systemctl is-enabled --quiet "$u" 2>/dev/null; then
                unchanged "$u enabled (not started: --no-models)"
            else
                later+=("$u")
            fi
        elif [ "$DRY_RUN" = 0 ] && systemctl is-enabled --quiet "$u" 2>/dev/null \
            && { ! systemd_running || systemctl is-active --quiet "$u"; }; then
            unchanged "$u enabled$(systemd_running && echo ' and active')"
        else
            todo+=("$u")
        fi
    done
    if [ ${#later[@]} -gt 0 ]; then
        run systemctl enable "${later[@]}"
        note "not started (--no-models): copy the models to /var/lib/edgebot/ (or: edgebot-cli model pull ...),"
        note "then: sudo systemctl start ${later[*]}"
    fi
    [ ${#todo[@]} = 0 ] && return
    if systemd_running || [ "$DRY_RUN" = 1 ]; then
        run systemctl enable --now "${todo[@]}" || die "systemd could not start ${todo[*]}: see \
systemctl status ${todo[*]} and journalctl -u edgebot -n 50 (edgebot-cli doctor checks the usual causes)"
    else
        run systemctl enable "${todo[@]}"
        note "systemd is not running here (a container or chroot): enabled for the next boot, not started"
    fi
}

main() {
    parse_args "$@"
    PROFILE=$REPO/board-configs/$BOARD.toml
    [ "$DRY_RUN" = 0 ] || echo "install.sh: DRY RUN for $BOARD: nothing will be changed"
    preflight
    apt_packages
    users_and_dirs
    venv_and_build
    commands_on_path
    npu_runtime
    config_files
    units_and_rules
    models
    enable_units
    if [ "$PANEL" = 1 ]; then "$REPO/deploy/panel.sh" --lang "$LANGUAGE" ${ROOT:+--root "$ROOT"} --dry-run="$DRY_RUN"; fi
    if [ "$CHANGED" = 0 ]; then
        echo "install.sh: nothing to do: edgebot for $BOARD is already installed as asked (no changes)"
    elif [ "$DRY_RUN" = 1 ]; then
        echo "install.sh: dry run done: the steps above marked 'would' are what a real run does"
    else
        echo "install.sh: done. Check it with: edgebot-cli doctor   (ask: edgebot-cli ask \"Hello\")"
    fi
}

main "$@"
