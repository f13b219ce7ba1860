#!/usr/bin/env bash
# Re-vendor the classroom panel's browser libraries from the npm registry at pinned versions.
#
# The board is offline and runs no build step: the built files and their licences are committed
# under edgebot/http/static/vendor/. Run this (it needs npm and the registry) only to change a
# version: edit the pins below, run it, check the page (tests/test_panel_browser.py), commit.
set -euo pipefail
cd "$(dirname "$0")/.."
MARKED=18.2.1        # Markdown -> HTML (MIT)
DOMPURIFY=3.5.0      # HTML sanitiser (MPL-2.0 OR Apache-2.0)
KATEX=0.19.1         # maths (MIT)
HLJS=11.12.0         # code highlighting, the "common" languages build (BSD-3-Clause)

command -v npm >/dev/null || { echo "vendor-panel: npm is needed (apt-get install npm)" >&2; exit 2; }
OUT=edgebot/http/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pkg in "marked@$MARKED" "dompurify@$DOMPURIFY" "katex@$KATEX" "@highlightjs/cdn-assets@$HLJS"; do
    (cd "$work" && npm pack --silent "$pkg" >/dev/null)
done
for tgz in "$work"/*.tgz; do
    dir=${tgz%.tgz}
    mkdir -p "$dir"
    tar xzf "$tgz" -C "$dir"
done
m=$work/marked-$MARKED/package
d=$work/dompurify-$DOMPURIFY/package
k=$work/katex-$KATEX/package
h=$work/highlightjs-cdn-assets-$HLJS/package

rm -rf "$OUT"
mkdir -p "$OUT/fonts"
# the source-map comments point at files not vendored; drop them so the browser does not ask
sed '/sourceMappingURL=/d' "$m/lib/marked.umd.js" > "$OUT/marked.umd.js"
sed '/sourceMappingURL=/d' "$d/dist/purify.min.js" > "$OUT/purify.min.js"
cp "$k/dist/katex.min.js" "$k/dist/katex.min.css" "$OUT/"
cp "$k"/dist/fonts/*.woff2 "$OUT/fonts/"   # every browser the panel targets reads woff2 first
cp "$h/highlight.min.js" "$OUT/"
cp "$h/styles/github.min.css" "$OUT/hljs-light.min.css"
cp "$h/styles/github-dark.min.css" "$OUT/hljs-dark.min.css"
cp "$m/LICENSE" "$OUT/LICENSE.marked"
cp "$d/LICENSE" "$OUT/LICENSE.dompurify"
cp "$k/LICENSE" "$OUT/LICENSE.katex"
cp "$h/LICENSE" "$OUT/LICENSE.highlight.js"
cat > "$OUT/VERSIONS" <<EOF
# Written by deploy/vendor-panel.sh from the npm registry; do not edit by hand.
marked $MARKED
dompurify $DOMPURIFY
katex $KATEX
@highlightjs/cdn-assets $HLJS
EOF
echo "vendor-panel: $(du -sh "$OUT" | cut -f1) in $OUT"
