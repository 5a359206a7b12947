#!/bin/sh
# `make doc`'s generator (doc/ldoc.sh) builds the HTML reference; it names the functions of
# cxone.core and of the cxone package, states the error convention, and its table of error
# codes lists every code the sources return (C: cxone_fail(L, "code", ...), `code = "code";`,
# `return "code";`; Lua: `return nil, msg, "code"` and `code = "code"`), and every audit record
# field plugin/audit.c accepts.
# usage: doc_test.sh SRC_DIR
set -u
SRC=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-doctest.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
out=$tmp/doc

sh "$SRC/doc/ldoc.sh" "$out" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; fail "doc/ldoc.sh failed"; }
M=$out/modules
for f in "$out/index.html" "$out/topics/manual.md.html" "$M/cxone.core.html" "$M/cxone.html" \
         "$M/cxone.client.html" "$M/cxone.plan.html" "$M/cxone.report.html" "$M/cxone.tiers.html"; do
    [ -s "$f" ] || fail "missing: ${f#$out/}"
done
echo "ok: reference built ($(ls "$M" | wc -l) modules)"

# names: a documented function has an anchor <a name = "NAME"> in its module's page
names() {
    page=$1; shift
    for n in "$@"; do
        grep -qF "<a name = \"$n\">" "$M/$page.html" || fail "$page: $n is not documented"
    done
    echo "ok: $page documents $*"
}
names cxone.core client Client:authenticate Client:get Client:patch Client:put Client:build Client:last_meta \
    Client:batch validate drift audit_open Audit:append audit_verify sha256 json_encode json_decode
names cxone client payload validate drift
names cxone.client new Client:plan Client:plan_all Client:apply Client:apply_all Client:promote
names cxone.plan Plan:render Plan:markdown
names cxone.report Report:render Report:markdown
names cxone.tiers new

# Comments went through markdown (a `code span` became <code>), not the plain-text fallback.
grep -q "<code>" "$M/cxone.client.html" || fail "no <code> in cxone.client.html: markdown was not applied"

manual=$out/topics/manual.md.html
grep -q "nil, message, code" "$manual" || fail "the manual does not state the error convention"
# Every error code in the sources is a row of the manual's table.
codes=$( { grep -ohE 'cxone_fail[a-z_]*\(L, "[a-z_]+"' "$SRC"/plugin/*.c | grep -oE '"[a-z_]+"$'
           grep -ohE '[a-z_]*code = "[a-z_]+";' "$SRC"/plugin/*.c | grep -oE '"[a-z_]+"'
           grep -ohE '^[[:space:]]*(case [^:]*: |default: )?return "[a-z_]+";' "$SRC"/plugin/*.c | grep -oE '"[a-z_]+"'
           find "$SRC/lua" -name '*.lua' -exec grep -ohE 'return nil, .*, "[a-z_]+"\)?( end)?[[:space:]]*$' {} + \
               | grep -oE '"[a-z_]+"\)?( end)?[[:space:]]*$' | grep -oE '"[a-z_]+"'
           # (a validation violation's code, next to its path, is not an error code)
           find "$SRC/lua" -name '*.lua' -exec grep -hE '\bcode = "[a-z_]+"' {} + | grep -v 'path = ' \
               | grep -oE '\bcode = "[a-z_]+"' | grep -oE '"[a-z_]+"'
         } | tr -d '"' | sort -u)
[ -n "$codes" ] || fail "no error codes found in the sources"
n=0
for c in $codes; do
    grep -qF "<td>$c</td>" "$manual" || fail "error code '$c' (returned by the sources) is not in the manual's table"
    n=$((n + 1))
done
echo "ok: all $n error codes of the sources are in the table: $(echo $codes)"
# The README's code table and layout table match the code too.
for c in $codes; do
    grep -qF "| \`$c\` |" "$SRC/README.md" || fail "error code '$c' is not in the README's table of codes"
done
layout=$(sed -n '/^## Layout/,/^## /p' "$SRC/README.md")
for f in "$SRC"/plugin/*.c "$SRC"/lua/cxone/*.lua "$SRC"/lua/cxone/repl/*.lua; do
    b=$(basename "$f")
    echo "$layout" | grep -qF "\`$b\`" || fail "the README's layout table does not name $b"
done
echo "ok: the README names every code, C source and Lua module"
fields=$(sed -n '/FIELDS\[\] = {/,/^};/p' "$SRC/plugin/audit.c" | grep -oE '\{"[a-z_0-9]+"' | tr -d '{"')
[ -n "$fields" ] || fail "no audit record fields found in plugin/audit.c"
for f in $fields seq ts chain prev hash; do
    grep -qF "<td>$f</td>" "$manual" || fail "audit record field '$f' is not in the manual"
done
echo "ok: every audit record field is documented"
echo "doc: all checks passed"
