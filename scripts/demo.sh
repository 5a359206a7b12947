#!/bin/sh
# `make demo`: promote a demo Data Action development → staging → production against a local
# cxone-sim, and show every artefact: the plan, the apply report, drift, the applied
# variables (masked as ***), the builds queued, the webhook events and the audit trail.
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
SIM=${CXONE_SIM_BIN:-$ROOT/build/lua5.4/sim/cxone-sim}
CXONE="lua5.4 $ROOT/bin/cxone"
CRM=a1b2c3d4-e5f6-4890-abcd-ef1234567890

[ -x "$SIM" ] || { echo "demo: $SIM not built (run make)" >&2; exit 1; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cxone-demo.XXXXXX")
SIM_PID=
cleanup() {
    if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

heading() { printf '\n==== %s ====\n' "$*"; }
# pretty but short JSON: python3 if present, else raw
pretty() { if command -v python3 >/dev/null 2>&1; then python3 -c "$1"; else cat; fi; }

# 1. the simulator on a free loopback port; its first stdout line is the base URL
mkfifo "$TMP/url"
"$SIM" --listen 127.0.0.1:0 --quiet --state "$TMP/sim-state.json" >"$TMP/url" 2>"$TMP/sim.log" &
SIM_PID=$!
read -r URL <"$TMP/url"
case "$URL" in http://*) ;; *) echo "demo: cxone-sim did not start" >&2; cat "$TMP/sim.log" >&2; exit 1 ;; esac

export CXONE_BASE_URL="$URL" CXONE_CLIENT_ID=demo-client CXONE_CLIENT_SECRET=demo-secret-0123456789
export CXONE_AUDIT_LOG="$TMP/audit.jsonl" CXONE_WEBHOOK_URL="$URL/_sim/webhooks/demo"
export CXONE_WEBHOOK_SECRET=demo-webhook-signing-key
export CXONE_DEMO_CRM_KEY=demo-crm-key-from-the-environment # a saved plan reads masked values from env()
unset CXONE_TOKEN_URL CXONE_ACCESS_KEY_ID CXONE_ACCESS_KEY_SECRET CXONE_CA_FILE

heading "cxone-sim running at $URL (demo tenant, 3 Data Actions)"
echo "Playbook: examples/promote.lua promotes crm-lookup ($CRM)"
echo "development -> staging -> production with plain values and one masked secret."

heading "1. PLAN, saved for review (nothing is written; exit 2 = changes pending; no secret in the file)"
rc=0; $CXONE plan --out "$TMP/plan.json" examples/promote.lua || rc=$?
echo "(cxone plan exited $rc)"
[ "$rc" -eq 2 ] || { echo "demo: expected changes pending" >&2; exit 1; }

heading "2. APPLY the reviewed plan, exactly (each write conditional on what the plan saw; builds, audit, webhooks)"
$CXONE apply "$TMP/plan.json"

heading "3. DRIFT staging -> production after the promotion (exit 2 = drift remains)"
rc=0; $CXONE drift "$CRM" staging production || rc=$?
echo "(cxone drift exited $rc: CRM_BASE_URL differs per tier on purpose; masked values cannot be compared)"

heading "4. APPLIED VARIABLES in production (masked values read back as ***)"
$CXONE vars "$CRM" production

heading "5. BUILDS QUEUED (development and staging build on apply; production does not)"
curl -s "$URL/_sim/stats" | pretty 'import json,sys; s=json.load(sys.stdin); print("builds queued:", s["builds_queued"]); print("API requests:", s["requests"], "| tokens issued:", s["tokens_issued"])'

heading "6. WEBHOOK EVENTS received (names only, never values; signed with CXONE_WEBHOOK_SECRET)"
curl -s "$URL/_sim/webhooks/demo" | pretty 'import json,sys
for e in json.load(sys.stdin)["events"]:
    b=e["body"]; sig="signed" if "x-cxone-signature" in e["headers"] else "unsigned"
    print("  %-22s %-11s vars=%s build=%s (%s)" % (b.get("event"), b.get("environment"), ",".join(b.get("variables") or []), b.get("build_id","-"), sig))'

heading "7. AUDIT TRAIL ($CXONE_AUDIT_LOG)"
$CXONE audit verify "$CXONE_AUDIT_LOG"
pretty 'import json,sys
for l in sys.stdin:
    r=json.loads(l); print("  #%d %-14s %-11s %-8s vars=%s" % (r["seq"], r["event"], r.get("environment") or "-", r.get("status"), ",".join(r.get("variables",[]))))' <"$CXONE_AUDIT_LOG"

heading "8. RE-RUN PLAN (idempotent: what landed plans as unchanged, the masked secret included)"
rc=0; $CXONE plan examples/promote.lua >"$TMP/replan.txt" || rc=$?
tail -n 4 "$TMP/replan.txt"

heading "DONE: demo finished OK"
