#!/usr/bin/env bash
# Build the documentation site, serve it on localhost and take headless-Chromium screenshots of
# its pages, to look at the site as a reader does (code that overflows the content column, table
# columns broken mid-word, what the API contents list). Nothing leaves the machine.
#
#   docs/screenshots.sh [OUT_DIR] [PAGE ...]     (default: site/screenshots, the pages below)
#
# OUT_DIR gets one PNG per page and width (1280 and 820 pixels wide, HEIGHT=900 tall unless set
# in the environment), named after the page; a page may carry an anchor (`design/#1-the-picture`).
# Needs chromium (Debian: `apt-get install -y chromium`) and the `.[dev]` install (mkdocs); run it
# from anywhere. The server started here is stopped on every path, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/site/screenshots}")
shift || true
PAGES=("$@")
if [ ${#PAGES[@]} -eq 0 ]; then
  PAGES=("" design/ build_your_own/ api/ api/nn/ api/training/ benchmarks/ tutorials/)
fi
HEIGHT=${HEIGHT:-900}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$CHROMIUM" ]; then
  echo "docs/screenshots.sh: no chromium on PATH (Debian: apt-get install -y chromium)" >&2
  exit 2
fi

SITE=$(mktemp -d)
PROFILE=$(mktemp -d)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$SITE" "$PROFILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$ROOT" && NO_MKDOCS_2_WARNING=1 "$PYTHON" -m mkdocs build --strict --quiet --site-dir "$SITE")
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m http.server "$PORT" --bind 127.0.0.1 --directory "$SITE" >/dev/null 2>&1 &
SERVER=$!
for _ in $(seq 50); do  # wait until it answers (at most 5 s)
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" \
    2>/dev/null && break
  sleep 0.1
done

mkdir -p "$OUT"
for page in "${PAGES[@]}"; do
  name=$(echo "${page:-index}" | tr '/#' '__' | sed 's/_$//')
  for width in 1280 820; do
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
      --disable-background-networking --disable-component-update --disable-sync \
      --hide-scrollbars --user-data-dir="$PROFILE" --window-size="$width,$HEIGHT" \
      --screenshot="$OUT/$name-$width.png" "http://127.0.0.1:$PORT/$page" >/dev/null 2>&1
    echo "$OUT/$name-$width.png"
  done
done
