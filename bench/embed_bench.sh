#!/bin/sh
# Embedded hosts stay responsive: /ping p50/p99 (wrk) while 20 calls with a 2 s upstream delay are
# in flight, for nginx (1 worker, cosockets) and HAProxy (2 threads, core.httpclient); then
# calls/s of /admin/vars without delay, and the tokens the sim issued. Target: p99 < 50 ms.
# Usage: bench/embed_bench.sh BUILD_DIR   (the lua5.4 tree; the luajit and lua5.3 trees beside it)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build/lua5.4}" && pwd)
ROOT=$(dirname "$BUILD")
SECS=${EMBED_SECONDS:-1} # whole seconds (wrk), inside the 2 s delay
CRM=a1b2c3d4-e5f6-4890-abcd-ef1234567890
WORK=$(mktemp -d /tmp/cxone-embed-bench.XXXXXX)
chmod 755 "$WORK"
SIMPID=""; NGX=""; HAP=""
cleanup() {
    [ -n "$NGX" ] && [ -f "$NGX" ] && kill -QUIT "$(cat "$NGX")" 2>/dev/null || true
    [ -n "$HAP" ] && [ -f "$HAP" ] && kill -TERM "$(cat "$HAP")" 2>/dev/null || true
    [ -n "$SIMPID" ] && kill "$SIMPID" 2>/dev/null || true
    sleep 0.2
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$BUILD/sim/cxone-sim" --listen 127.0.0.1:0 --quiet >"$WORK/sim.url" &
SIMPID=$!
i=0; while [ ! -s "$WORK/sim.url" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
SIM=$(head -n 1 "$WORK/sim.url")
export CXONE_BASE_URL="$SIM" CXONE_CLIENT_ID=demo-client CXONE_CLIENT_SECRET=demo-secret-0123456789
export CXONE_SRC="$SRC" UPSTREAM="${SIM#http://}" CA_FILE=/etc/ssl/certs/ca-certificates.crt

tokens() { curl -s "$SIM/_sim/stats" | sed -E 's/.*"tokens_issued":([0-9]+).*/\1/'; }
run() { # run NAME URL: the figures for one host
    name=$1; url=$2
    t0=$(tokens)
    curl -s -o /dev/null "$url/admin/vars?action=$CRM&tier=staging" # warm: token, connections
    curl -s -o /dev/null -X POST "$SIM/_sim/faults" -d '{"method":"GET","kind":"delay","delay_ms":2000,"count":20}'
    args=""
    for _ in $(seq 20); do args="$args $url/admin/vars?action=$CRM&tier=staging -o /dev/null"; done
    # shellcheck disable=SC2086
    curl -s --no-progress-meter -Z --parallel-immediate $args &
    bg=$!
    i=0; while curl -s "$SIM/_sim/faults" | grep -q '"kind"' && [ $i -lt 100 ]; do sleep 0.02; i=$((i + 1)); done
    lat=$(wrk -t1 -c2 -d"${SECS}s" --latency "$url/ping" 2>/dev/null)
    wait "$bg" || true
    p50=$(echo "$lat" | awk '$1 == "50%" { print $2 }')
    p99=$(echo "$lat" | awk '$1 == "99%" { print $2 }')
    rps=$(wrk -t1 -c8 -d"${SECS}s" "$url/admin/vars?action=$CRM&tier=staging" 2>/dev/null | awk '/Requests\/sec/ { print $2 }')
    echo "$name: /ping p50 $p50 p99 $p99 with 20 delayed calls in flight; /admin/vars ${rps} calls/s; tokens issued $(( $(tokens) - t0 ))"
}

# nginx, 1 worker (LuaJIT: the luajit tree's module)
mkdir -p "$WORK/nginx"
PORT=$((20000 + $$ % 20000))
WORKERS=1 PREFIX="$WORK/nginx" CXONE_CPATH="$ROOT/luajit/?.so" LISTEN="127.0.0.1:$PORT" UPSTREAM_SCHEME=http \
    envsubst '${WORKERS} ${PREFIX} ${CXONE_SRC} ${CXONE_CPATH} ${LISTEN} ${CA_FILE} ${UPSTREAM} ${UPSTREAM_SCHEME}' \
    <"$SRC/examples/nginx/nginx.conf" >"$WORK/nginx/nginx.conf"
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
NGX="$WORK/nginx/nginx.pid"
sleep 0.3
run "nginx (1 worker)" "http://127.0.0.1:$PORT"

# HAProxy, 2 threads (Lua 5.3: the lua5.3 tree's module)
mkdir -p "$WORK/haproxy"
PORT2=$((PORT + 1))
PREFIX="$WORK/haproxy" CXONE_CPATH="$ROOT/lua5.3/?.so" LISTEN="127.0.0.1:$PORT2" \
    envsubst '${PREFIX} ${CA_FILE} ${CXONE_CPATH} ${CXONE_SRC} ${LISTEN} ${UPSTREAM}' \
    <"$SRC/examples/haproxy/haproxy.cfg" >"$WORK/haproxy/haproxy.cfg"
haproxy -D -f "$WORK/haproxy/haproxy.cfg" 2>"$WORK/haproxy/stderr"
HAP="$WORK/haproxy/haproxy.pid"
sleep 0.3
run "HAProxy (2 threads)" "http://127.0.0.1:$PORT2"
