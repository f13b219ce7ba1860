#!/usr/bin/env bash
# The classroom panel on the board's own display: Chromium in kiosk mode on edgebotd's page
# (http://127.0.0.1:PORT/?kiosk=1). Called by `deploy/install.sh BOARD --panel`; runs on its own too.
#
#   sudo deploy/panel.sh                  # no desktop (Raspberry Pi OS Lite): cage on tty1, systemd unit
#   sudo deploy/panel.sh --desktop        # a desktop session (Raspberry Pi OS with desktop): its autostart
#   deploy/panel.sh --dry-run             # print every step, change nothing
#   deploy/panel.sh --root DIR            # write the files under DIR (no apt, no users, no systemctl)
#
# The page needs [http] enabled in /etc/edgebot/edgebot.toml (install.sh --panel turns it on). When
# that config sets an [http] token, the launcher hands it to the page in the URL's #fragment (which
# never leaves the board), so the kiosk does not ask for it; the launcher is readable by root and
# the panel's user only. Idempotent: a second run changes nothing and says so.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=${EDGEBOT_CONFIG_FILE:-/etc/edgebot/edgebot.toml}
DRY_RUN=0 ROOT="" DESKTOP=0 LANGUAGE=en CHANGED=0
USER_NAME=edgebot-panel
LAUNCHER=/usr/local/bin/edgebot-panel-browser
UNIT=/etc/systemd/system/edgebot-panel.service
AUTOSTART=/etc/xdg/autostart/edgebot-panel.desktop
SYSUSERS=/usr/lib/sysusers.d/edgebot-panel.conf

usage() {
    cat <<EOF
usage: deploy/panel.sh [--desktop] [--lang en|zh] [--dry-run] [--root DIR]
  --desktop    start the kiosk from a desktop session's autostart instead of cage on tty1
  --lang       the panel's language on the board's display (zh also installs Chinese fonts)
  --dry-run    print every step without doing it
  --root DIR   write the files under DIR; skips apt, users and systemctl
EOF
}
say() { echo "==> $*"; }
note() { echo "    $*"; }
die() { echo "panel.sh: error: $*" >&2; exit 1; }

run() {
    CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then echo "    would run: $*"; else echo "    run: $*"; "$@"; fi
}

# write_file DEST MODE [GROUP]: the content on stdin, written when missing or different.
write_file() {
    local tmp dest=$ROOT$1
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        echo "    ok: $1 (unchanged)"
    elif [ "$DRY_RUN" = 1 ]; then
        CHANGED=1
        echo "    would write $1:"
        sed -e 's/#token=[^ "]*/#token=<the [http] token>/' -e 's/^/    | /' "$tmp"
    else
        run install -D -m "$2" "$tmp" "$dest"
        if [ -n "${3:-}" ] && [ -z "$ROOT" ]; then run chgrp "$3" "$dest"; fi
    fi
    rm -f "$tmp"
}

# http_setting KEY DEFAULT: a value of [http] in the edgebot config (flat TOML, as install.sh writes it).
http_setting() {
    local value=""
    if [ -r "$ROOT$CONFIG" ]; then
        value=$(awk -v key="$1" '
            /^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); section = $0; next }
            section == "http" {
                line = $0; sub(/[[:space:]]+#.*$/, "", line)
                if (match(line, "^[[:space:]]*" key "[[:space:]]*=")) {
                    v = substr(line, RLENGTH + 1); gsub(/^[[:space:]]+|[[:space:]]+$/, "", v)
                    gsub(/^"|"$/, "", v); print v; exit
                }
            }' "$ROOT$CONFIG")
    fi
    echo "${value:-$2}"
}

browser_package() {
    # Debian and current Raspberry Pi OS call it chromium; older Raspberry Pi OS chromium-browser
    if apt-cache show chromium >/dev/null 2>&1; then echo chromium; else echo chromium-browser; fi
}

packages() {
    say "packages"
    if [ -n "$ROOT" ]; then note "skipped with --root"; return; fi
    local want=() p missing=()
    want=("$(browser_package)")
    [ "$DESKTOP" = 1 ] || want+=(cage)
    [ "$LANGUAGE" != zh ] || want+=(fonts-noto-cjk)
    for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} = 0 ]; then note "ok: ${want[*]} (unchanged)"; return; fi
    run apt-get install -y --no-install-recommends "${missing[@]}"
}

panel_user() {
    [ "$DESKTOP" = 0 ] || return 0
    say "the panel's user"
    write_file "$SYSUSERS" 0644 <<EOF
# sysusers.d(5): the user the classroom panel's kiosk browser runs as (deploy/panel.sh)
u $USER_NAME - "edgebot classroom panel" /var/lib/edgebot-panel
m $USER_NAME video
m $USER_NAME render
m $USER_NAME input
EOF
    if [ -z "$ROOT" ] && ! id "$USER_NAME" >/dev/null 2>&1; then run systemd-sysusers "$SYSUSERS"; fi
}

launcher() {
    say "the kiosk launcher"
    local port token lang url group=""
    [ "$(http_setting enabled false)" = true ] || note "warning: [http] enabled is not true in $CONFIG: \
the panel will wait for a page that is not served (install.sh --panel turns it on)"
    port=$(http_setting port 8080)
    token=$(http_setting token "")
    lang=$([ "$LANGUAGE" = zh ] && echo zh-CN || echo en-US)
    url="http://127.0.0.1:$port/?kiosk=1${token:+#token=$token}"
    [ "$DESKTOP" = 1 ] || group=$USER_NAME
    write_file "$LAUNCHER" "$([ -n "$group" ] && echo 0750 || echo 0755)" "$group" <<EOF
#!/usr/bin/env bash
# Written by deploy/panel.sh: waits for edgebotd's HTTP server, then shows the panel full screen.
for _ in \$(seq 120); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 1; done
browser=\$(command -v chromium || command -v chromium-browser)
exec "\$browser" --kiosk --app="$url" --lang=$lang --no-first-run --noerrdialogs --disable-infobars \\
    --disable-session-crashed-bubble --disable-features=Translate --disable-pinch --overscroll-history-navigation=0 \\
    --check-for-update-interval=31536000 --ozone-platform-hint=auto --user-data-dir="\$HOME/.config/edgebot-panel"
EOF
    if [ -n "$token" ] && [ "$DESKTOP" = 1 ]; then
        note "note: the launcher holds the [http] token and is readable by every desktop user"
    fi
}

session() {
    if [ "$DESKTOP" = 1 ]; then
        say "desktop autostart"
        write_file "$AUTOSTART" 0644 <<EOF
[Desktop Entry]
Type=Application
Name=edgebot classroom panel
Exec=$LAUNCHER
X-GNOME-Autostart-enabled=true
EOF
        return
    fi
    say "the kiosk unit (cage on tty1)"
    write_file "$UNIT" 0644 < "$REPO/systemd/edgebot-panel.service"
    if [ -n "$ROOT" ]; then note "skipped with --root: systemctl enable --now edgebot-panel.service"; return; fi
    if [ "$CHANGED" = 1 ] || ! systemctl is-enabled --quiet edgebot-panel.service 2>/dev/null; then
        run systemctl daemon-reload
        run systemctl enable edgebot-panel.service
        run systemctl restart edgebot-panel.service
    else
        note "ok: edgebot-panel.service enabled (unchanged)"
    fi
}

main() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run|--dry-run=1) DRY_RUN=1 ;;
            --dry-run=0) ;;
            --desktop) DESKTOP=1 ;;
            --lang) shift; LANGUAGE=${1:-} ;;
            --root) shift; ROOT=${1:-}; [ -n "$ROOT" ] || { usage >&2; exit 2; } ;;
            -h|--help) usage; exit 0 ;;
            *) echo "panel.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
        esac
        shift
    done
    case "$LANGUAGE" in en|zh) ;; *) echo "panel.sh: --lang must be en or zh" >&2; exit 2 ;; esac
    if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo deploy/panel.sh), or look first with --dry-run"
    fi
    packages
    panel_user
    launcher
    session
    if [ "$CHANGED" = 0 ]; then echo "panel.sh: nothing to do: the panel is already set up as asked (no changes)"
    elif [ "$DRY_RUN" = 1 ]; then echo "panel.sh: dry run done"
    else echo "panel.sh: done: the panel shows on the display at the next boot (or now)"; fi
}

main "$@"
