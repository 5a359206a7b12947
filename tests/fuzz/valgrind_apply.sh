#!/bin/sh
# valgrind:apply: one end-to-end `cxone apply --yes examples/promote.lua` against a local
# cxone-sim (with webhooks and the audit trail), then `cxone audit verify`, both under valgrind
# memcheck; fails on any memory error, a definite leak, or a wrong outcome.
# Usage: valgrind_apply.sh SOURCE_DIR BUILD_TREE SIM_BINARY
set -eu
SRC=$1 TREE=$2 SIM=$3
command -v valgrind >/dev/null || { echo "valgrind not installed (scripts/deps.sh)" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cxone-vg.XXXXXX")
SIM_PID=
cleanup() {
    if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

mkfifo "$TMP/url"
"$SIM" --listen 127.0.0.1:0 --quiet >"$TMP/url" 2>"$TMP/sim.log" &
SIM_PID=$!
read -r URL <"$TMP/url"
case "$URL" in http://*) ;; *) echo "cxone-sim did not start" >&2; cat "$TMP/sim.log" >&2; exit 1 ;; esac

export CXONE_BASE_URL="$URL" CXONE_CLIENT_ID=demo-client CXONE_CLIENT_SECRET=demo-secret-0123456789
export CXONE_AUDIT_LOG="$TMP/audit.jsonl" CXONE_WEBHOOK_URL="$URL/_sim/webhooks/vg"
export CXONE_WEBHOOK_SECRET=valgrind-webhook-key NO_COLOR=1
unset CXONE_TOKEN_URL CXONE_ACCESS_KEY_ID CXONE_ACCESS_KEY_SECRET CXONE_CA_FILE CXONE_STATE_FILE \
    CXONE_DEBUG CXONE_AUDIT_KEY 2>/dev/null || true
# bin/cxone looks for the module in build/lua5.4: load this tree's module first instead.
export LUA_INIT_5_4="package.cpath = '$TREE/?.so;' .. package.cpath; require('cxone.core')"

vg() {
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --track-fds=no --log-file="$TMP/vg.%p.log" "$@"
}
check_logs() {
    ls "$TMP"/vg.*.log >/dev/null 2>&1 || { echo "valgrind did not run ($1)" >&2; exit 1; }
    if [ -n "$(cat "$TMP"/vg.*.log 2>/dev/null)" ]; then
        echo "valgrind reported ($1):" >&2
        cat "$TMP"/vg.*.log >&2
        exit 1
    fi
}

rc=0
(cd "$SRC" && vg lua5.4 bin/cxone apply --yes examples/promote.lua) >"$TMP/out" 2>"$TMP/err" || rc=$?
cat "$TMP/out"
check_logs apply
rm -f "$TMP"/vg.*.log
[ "$rc" -eq 0 ] || { echo "apply exited $rc:" >&2; cat "$TMP/err" >&2; exit 1; }
n=$(curl -s "$URL/_sim/stats" | lua5.4 -e 'local s = io.read("a"); print(s:match([["PATCH /api/v2/integration/actions/{actionId}/environments/{envId}/variables":%s*{([^}]*)}]]) or "")')
case "$n" in *[0-9]*) ;; *) echo "the sim saw no PATCH: $n" >&2; exit 1 ;; esac

rc=0
(cd "$SRC" && vg lua5.4 bin/cxone audit verify "$CXONE_AUDIT_LOG") >"$TMP/out" 2>"$TMP/err" || rc=$?
cat "$TMP/out"
check_logs "audit verify"
[ "$rc" -eq 0 ] || { echo "audit verify exited $rc:" >&2; cat "$TMP/err" >&2; exit 1; }
echo "valgrind: apply and audit verify clean"
