#!/bin/sh
# bench/sim_wrk.sh BUILD_DIR [SECONDS]: wrk (keep-alive) against cxone-sim's GET variables route,
# printing requests/s and the simulator's RSS sampled every few seconds over the run.
set -eu

BUILD=${1:?usage: bench/sim_wrk.sh BUILD_DIR [SECONDS]}
SECS=${2:-60}
BIN="$BUILD/sim/cxone-sim"
[ -x "$BIN" ] || { echo "sim_wrk: $BIN not found (build first: make)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "sim_wrk: wrk is not installed" >&2; exit 2; }

TMP=$(mktemp -d /tmp/cxone-sim-bench.XXXXXX)
SIM_PID=""
cleanup() {
    [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

mkfifo "$TMP/out"
"$BIN" --listen 127.0.0.1:0 --quiet >"$TMP/out" &
SIM_PID=$!
read -r URL <"$TMP/out"

TOKEN=$(curl -s -u demo-client:demo-secret-0123456789 -d grant_type=client_credentials "$URL/oauth/token" \
        | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$TOKEN" ] || { echo "sim_wrk: could not get a token" >&2; exit 1; }
PATH_V=/api/v2/integration/actions/a1b2c3d4-e5f6-4890-abcd-ef1234567890/environments/prod/variables
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL$PATH_V")" = 200 ] \
    || { echo "sim_wrk: GET did not answer 200" >&2; exit 1; }

rss() { awk '/^VmRSS/ {print $2 " kB"}' "/proc/$SIM_PID/status"; }

echo "sim: $URL (pid $SIM_PID)"
echo "rss before: $(rss)"
wrk -t2 -c32 -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "$URL$PATH_V" >"$TMP/wrk" 2>&1 &
WRK_PID=$!
STEP=5
[ "$SECS" -lt 10 ] && STEP=1
t=0
while kill -0 "$WRK_PID" 2>/dev/null; do
    sleep "$STEP"
    t=$((t + STEP))
    kill -0 "$WRK_PID" 2>/dev/null && echo "rss at ${t}s: $(rss)"
done
wait "$WRK_PID"
echo "rss after: $(rss)"
echo "requests/s: $(awk '/^Requests\/sec/ {print $2}' "$TMP/wrk")"
awk '/Latency/ && !/Distribution/ {print "latency avg: " $2 ", max: " $4} /^ +99%/ {print "latency p99: " $2}
     /Non-2xx/ {print "non-2xx answers: " $NF} /Socket errors/ {print "socket errors: " $0}' "$TMP/wrk"
STATS=$(curl -s "$URL/_sim/stats")
echo "sim connections: $(echo "$STATS" | sed -n 's/.*"connections":\([0-9]*\).*/\1/p'), requests: $(echo "$STATS" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p')"
