#!/bin/sh
# doc/playbook.md stays true to the code: it has a row for every key a playbook, a step and a
# variable entry may hold (lua/cxone/playbook.lua) and for every violation code validate emits
# (plugin/validate.c); and examples/payload.json, the sample it points to, is accepted by
# `cxone validate` while a copy with one rule broken is refused naming that rule.
# usage: playbook_doc_test.sh SRC_DIR
set -u
SRC=$1
DOC=$SRC/doc/playbook.md
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-pbdoc.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
[ -s "$DOC" ] || fail "no doc/playbook.md"

n=0
for table in BOOK_KEYS STEP_KEYS ENTRY_KEYS; do
    keys=$(grep -E "^local $table = \{" "$SRC/lua/cxone/playbook.lua" | grep -oE '[a-z_]+ = true' | sed 's/ = true//')
    [ -n "$keys" ] || fail "no $table found in lua/cxone/playbook.lua"
    for k in $keys; do
        grep -qE "^\| \`$k\` \|" "$DOC" || fail "doc/playbook.md has no row for \`$k\` ($table)"
        n=$((n + 1))
    done
done
echo "ok: doc/playbook.md has a row for each of the $n keys of playbook.lua"

codes=$(grep -ohE '(VIOLATION|add_violation)\([^,]+, "[a-z0-9_]+"' "$SRC/plugin/validate.c" | grep -oE '"[a-z0-9_]+"' | tr -d '"' | sort -u)
[ -n "$codes" ] || fail "no violation codes found in plugin/validate.c"
for c in $codes; do
    grep -qE "^\| \`$c\` \|" "$DOC" || fail "doc/playbook.md has no row for the violation code \`$c\`"
done
echo "ok: doc/playbook.md explains every violation code: $(echo $codes)"
grep -q '`env(NAME' "$DOC" || fail "doc/playbook.md does not document env()"

cxone() { NO_COLOR=1 lua5.4 "$SRC/bin/cxone" "$@"; }
out=$(cxone validate "$SRC/examples/payload.json" 2>&1) || fail "cxone validate examples/payload.json: $out"
echo "$out" | grep -q ': valid$' || fail "cxone validate examples/payload.json printed: $out"
# the sample shows every entry key and a masked entry
for k in name value masked description; do
    grep -q "\"$k\":" "$SRC/examples/payload.json" || fail "examples/payload.json shows no \"$k\""
done
grep -q '"masked": true' "$SRC/examples/payload.json" || fail "examples/payload.json has no masked entry"
sed 's/"TIMEOUT_MS"/"timeout_ms"/' "$SRC/examples/payload.json" >"$tmp/bad.json"
out=$(cxone validate "$tmp/bad.json" 2>&1); rc=$?
[ "$rc" -eq 1 ] || fail "a payload with a lower-case name exited $rc: $out"
echo "$out" | grep -q 'variables\[2\]\.name must match' || fail "a lower-case name was not refused: $out"
echo "ok: cxone validate accepts examples/payload.json (exit 0) and refuses it with a lower-case name (exit 1, naming variables[2].name)"
echo "playbook_doc: all checks passed"
