#!/usr/bin/env bash
# Make (once) the Debian 12 root file system the appliance harness boots with systemd-nspawn.
#
#   tests/appliance/make-rootfs.sh [DIR]     # default: ~/.cache/edgebot/rootfs/debian12
#
# A plain debootstrap of bookworm with systemd as init and the few packages install.sh wants when it
# is given a prebuilt llama-cpp-python wheel (--wheel), so installing inside needs no compiler.
# The result is kept outside the repository and reused: a run that finds DIR/.complete does nothing.
# The host's trusted CA certificates and pip configuration are copied in by the harness at each boot
# (registry traffic may pass a TLS-inspecting proxy), not baked in here.
set -euo pipefail
DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edgebot/rootfs/debian12}
MIRROR=${EDGEBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,libgomp1,libportaudio2,alsa-utils,iproute2,procps
if [ -f "$DIR/.complete" ]; then
    echo "make-rootfs: $DIR is ready (remove it to make it again)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make-rootfs: debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "make-rootfs: debootstrap needs root" >&2; exit 1; }
rm -rf "$DIR.tmp"
mkdir -p "$(dirname "$DIR")"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$DIR.tmp" "$MIRROR"
# a machine id is made at first boot; no getty on the container console
rm -f "$DIR.tmp/etc/machine-id"
: > "$DIR.tmp/etc/machine-id"
echo edgebot-test > "$DIR.tmp/etc/hostname"
rm -rf "$DIR.tmp/var/cache/apt/archives/"*.deb
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
date +%s > "$DIR/.complete"
echo "make-rootfs: $DIR made in $(( $(date +%s) - start )) s ($(du -sm "$DIR" | cut -f1) MiB)"
