#!/usr/bin/env bash
# Download the default model (DeepSeek-R1-Distill-Qwen-1.5B Q4_K_M GGUF) and, with --lang, the voice
# models, into /var/lib/edgebot: a wrapper around `edgebot-cli model pull` (progress, resume,
# checksum). Any arguments are passed on, e.g.
#   sudo deploy/get-model.sh                       # the model (+ English voices)
#   sudo deploy/get-model.sh --lang zh             # the model + Mandarin voices
#   deploy/get-model.sh --dir ~/models deepseek-r1-distill-qwen-1.5b-q4_k_m
# Works before install.sh: without an installed edgebot-cli it runs this checkout's with python3
# (the download code needs only the standard library).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for cli in "${EDGEBOT_CLI:-}" /opt/edgebot/venv/bin/edgebot-cli "$REPO/.venv/bin/edgebot-cli"; do
    if [ -n "$cli" ] && [ -x "$cli" ]; then
        exec "$cli" model pull "$@"
    fi
done
command -v python3 >/dev/null || { echo "get-model.sh: python3 is needed" >&2; exit 1; }
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m edgebot.cli model pull "$@"
