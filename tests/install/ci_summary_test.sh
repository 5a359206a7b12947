#!/bin/sh
# examples/ci/plan-summary.sh against cxone-sim: the plan lands in the job summary file as
# Markdown tables (appended, masked values as ***), `changes=true` goes to $GITHUB_OUTPUT, no
# secret (client secret, masked value: canaries) appears anywhere, and a failed plan is
# reported as a failure (exit 1, a note in the summary) rather than an empty summary.
# usage: ci_summary_test.sh SRC_DIR BUILD_DIR SIM_BIN
set -u
SRC=$1
BUILD=$2
SIM=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-ci.XXXXXX") || exit 1
simpid=
cleanup() {
    [ -n "$simpid" ] && kill "$simpid" 2>/dev/null && wait "$simpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# cxone from this source tree and this build tree (not bin/cxone's default build/lua5.4)
cat >"$tmp/cxone.lua" <<LUA
package.path = "$SRC/lua/?.lua;$SRC/lua/?/init.lua;" .. package.path
package.cpath = "$BUILD/?.so;" .. package.cpath
os.exit(require("cxone.cli").main(arg))
LUA

# the simulator prints its URL on the first line once it listens
mkfifo "$tmp/sim.out"
"$SIM" --listen 127.0.0.1:0 --quiet >"$tmp/sim.out" 2>"$tmp/sim.err" &
simpid=$!
exec 3<"$tmp/sim.out"
read -r url <&3 || true
case "$url" in http://*) ;; *) cat "$tmp/sim.err" >&2; fail "cxone-sim did not start" ;; esac
cat <&3 >/dev/null &

SECRET=demo-secret-0123456789        # the sim's demo client secret: must never be printed
CANARY=ci-canary-masked-7f3a9c        # a masked value of the playbook: must never be printed
summary=$tmp/summary.md
echo "## earlier step" >"$summary"    # the script appends, as GitHub's summary file expects

env CXONE="lua5.4 $tmp/cxone.lua" CXONE_BASE_URL="$url" CXONE_CLIENT_ID=demo-client \
    CXONE_CLIENT_SECRET="$SECRET" CXONE_DEMO_CRM_KEY="$CANARY" CXONE_AUDIT_LOG="$tmp/audit.jsonl" \
    GITHUB_STEP_SUMMARY="$summary" GITHUB_OUTPUT="$tmp/gh_output" NO_COLOR=1 \
    sh "$SRC/examples/ci/plan-summary.sh" "$SRC/examples/promote.lua" >"$tmp/stdout" 2>"$tmp/stderr"
rc=$?
[ "$rc" -eq 0 ] || { cat "$tmp/stderr" >&2; fail "plan-summary.sh exited $rc with changes pending (expected 0)"; }
head -n 1 "$summary" | grep -qx "## earlier step" || fail "the summary file was overwritten, not appended to"
grep -q '^### cxone plan' "$summary" || fail "no plan heading in the summary"
grep -q '^| # | Action | Tier | Status |' "$summary" || fail "no Markdown table of steps in the summary"
for tier in development staging production; do
    grep -q "| $tier | planned |" "$summary" || fail "no planned row for $tier"
done
grep -q '`CRM_API_KEY` | `\*\*\*`' "$summary" || fail "the masked variable is not shown as ***"
grep -qx 'changes=true' "$tmp/gh_output" || fail "GITHUB_OUTPUT lacks changes=true: $(cat "$tmp/gh_output")"
echo "ok: plan posted as Markdown ($(grep -c '^|' "$summary") table rows), changes=true"

for f in "$summary" "$tmp/stdout" "$tmp/stderr" "$tmp/gh_output"; do
    grep -qF "$CANARY" "$f" && fail "the masked value leaked into $(basename "$f")"
    grep -qF "$SECRET" "$f" && fail "the client secret leaked into $(basename "$f")"
done
echo "ok: no secret in the summary, the output or the log"

# A plan that fails (credentials refused) fails the job step and says so in the summary.
summary2=$tmp/summary2.md
env CXONE="lua5.4 $tmp/cxone.lua" CXONE_BASE_URL="$url" CXONE_CLIENT_ID=demo-client \
    CXONE_CLIENT_SECRET="wrong-$CANARY" CXONE_AUDIT_LOG="$tmp/audit.jsonl" \
    GITHUB_STEP_SUMMARY="$summary2" NO_COLOR=1 \
    sh "$SRC/examples/ci/plan-summary.sh" "$SRC/examples/promote.lua" >"$tmp/stdout2" 2>"$tmp/stderr2"
rc=$?
[ "$rc" -eq 1 ] || fail "a refused plan exited $rc (expected 1)"
grep -q 'cxone plan failed' "$summary2" || fail "the failure is not in the summary"
for f in "$summary2" "$tmp/stdout2" "$tmp/stderr2"; do
    grep -qF "$CANARY" "$f" && fail "the wrong secret leaked into $(basename "$f")"
done
echo "ok: a failed plan exits 1 and notes it in the summary"
# The example workflow parses, runs this very script for the plan, posts apply's Markdown to the
# job summary, and takes every credential from the repository's secrets.
python3 - "$SRC/examples/ci/github-actions.yml" <<'PY' || fail "examples/ci/github-actions.yml"
import sys, yaml
wf = yaml.safe_load(open(sys.argv[1]))
runs = [st.get("run", "") for job in wf["jobs"].values() for st in job["steps"]]
assert any("examples/ci/plan-summary.sh" in r for r in runs), "no step runs plan-summary.sh"
assert any("--format markdown" in r and "GITHUB_STEP_SUMMARY" in r for r in runs), "apply is not posted"
for k in ("CXONE_CLIENT_ID", "CXONE_CLIENT_SECRET"):
    assert wf["env"][k].startswith("${{ secrets."), k + " is not taken from the secrets"
print("ok: the example workflow runs plan-summary.sh and takes credentials from secrets")
PY
echo "ci_summary: all checks passed"
