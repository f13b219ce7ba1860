#!/usr/bin/env bash
# The main job on this machine: set up, start edgebotd, ask it a question over the bus, stop it.
# Uses the real model when it is there ($EDGEBOT_MODEL or the default path); otherwise a tiny
# generated demo model whose answer is scripted, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/dev-setup.sh
export PATH="$PWD/.venv/bin:$PATH"

REAL_MODEL=${EDGEBOT_MODEL:-/var/lib/edgebot/models/DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf}
QUESTION=${1:-What is 2+2?}
if [ -f "$REAL_MODEL" ]; then
    MODEL=$REAL_MODEL
    echo "demo: using the real model $MODEL"
else
    MODEL=${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/demo-script.gguf
    mkdir -p "$(dirname "$MODEL")"
    python -m edgebot.testing.script_model "$MODEL" >/dev/null
    echo "demo: the real model is not at $REAL_MODEL, so this runs on a tiny GENERATED DEMO MODEL"
    echo "      (real llama.cpp inference, but its answer is scripted, whatever you ask)."
    echo "      Get the real one with: sudo edgebot-cli model pull   (or set EDGEBOT_MODEL=/path/to/model.gguf)"
fi

RUN_DIR=$(mktemp -d /tmp/edgebot-demo.XXXXXX)
SOCKET=$RUN_DIR/bus.sock
edgebotd --model "$MODEL" --socket "$SOCKET" --log-level WARNING &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; rm -rf "$RUN_DIR"' EXIT
edgebot-cli --socket "$SOCKET" status --wait 120 >/dev/null
echo "demo: edgebotd is ready (pid $DAEMON). Asking: $QUESTION"
echo "----- thinking (stderr) and answer (stdout) -----"
edgebot-cli --socket "$SOCKET" ask --think "$QUESTION"
echo "-------------------------------------------------"
edgebot-cli --socket "$SOCKET" status
