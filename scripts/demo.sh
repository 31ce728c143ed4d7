#!/usr/bin/env bash
# Runs the demo: three demo origins and luaproxy on scripts/demo.lua (or the example config
# given as the second argument), until Ctrl-C.
set -euo pipefail
BUILD=${1:-$(dirname "$0")/../build}
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG=${2:-$HERE/demo.lua}
ORIGIN="$BUILD/tests/origin/lp_origin"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Configs that name the demo certificate get a self-signed one, made once (git ignores it).
if grep -q 'certs/demo.pem' "$CONFIG" && [ ! -f "$HERE/certs/demo.pem" ]; then
    mkdir -p "$HERE/certs"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,DNS:api.localhost,IP:127.0.0.1" \
        -keyout "$HERE/certs/demo.key" -out "$HERE/certs/demo.pem" 2>/dev/null
fi

for spec in 9001:web 9002:api-1 9003:api-2; do
    "$ORIGIN" -p "${spec%%:*}" -i "${spec#*:}" >/dev/null &
    PIDS+=($!)
done
"$BUILD/luaproxy" -c "$CONFIG" &
PROXY=$!
PIDS+=("$PROXY")

up=0
for _ in $(seq 50); do
    if ! kill -0 "$PROXY" 2>/dev/null; then
        echo "luaproxy did not start (its error is above)" >&2
        exit 1
    fi
    curl -s -o /dev/null http://127.0.0.1:8080/ && { up=1; break; }
    sleep 0.1
done
if [ "$up" != 1 ]; then
    echo "luaproxy does not answer on http://127.0.0.1:8080 (its log is above)" >&2
    exit 1
fi
if [ "$CONFIG" != "$HERE/demo.lua" ]; then
    echo
    echo "luaproxy is running $CONFIG on http://127.0.0.1:8080 (Ctrl-C stops it)."
    echo "The comments at the top of that file say what to try."
    echo
    wait "$PROXY"
    exit
fi
cat <<'TXT'

luaproxy demo is running on http://127.0.0.1:8080 (Ctrl-C stops it). Try:

  curl -i http://127.0.0.1:8080/                       # the web service
  curl -i http://127.0.0.1:8080/api/fixed?size=3       # the API, prefix stripped
  for i in 1 2 3; do curl -s -D- -o /dev/null http://127.0.0.1:8080/api/ | grep X-Origin-Id; done
  curl -s -d 'hello proxy' http://127.0.0.1:8080/echo  # request bodies stream through
  curl -s http://127.0.0.1:8080/headers                # what the origin received (X-Forwarded-*)

  The live status page (rates, latency, upstream health, reloads): http://127.0.0.1:9901/
  curl -s -X POST http://127.0.0.1:9901/reload         # a reload shows in its history

TXT
wait "${PIDS[-1]}"
