#!/bin/sh
# Builds the HTML reference (doc/config.ld) into OUTDIR: stages lua/ and the C LDoc blocks.
# usage: doc/ldoc.sh [OUTDIR]   (default build/doc; run from anywhere)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build/doc}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Debian's ldoc runs under Lua 5.1/5.2 (lua-any); LuaJIT is a 5.1 and is always installed here.
ldoc_bin=$(command -v ldoc)
if command -v lua5.1 >/dev/null 2>&1 || command -v lua5.2 >/dev/null 2>&1; then
    run_ldoc() { "$ldoc_bin" "$@"; }
else
    run_ldoc() { luajit "$ldoc_bin" "$@"; }
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/cxone-doc.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
mkdir "$stage/cxone"
# every Lua module (cxone/..., cxone/transport/..., resty/...); each names itself with @module
(cd "$src/lua" && find . -name '*.lua' | while read -r f; do
    mkdir -p "$stage/$(dirname "$f")" && cp "$f" "$stage/$f"
done)
lua5.4 "$src/doc/extract_c.lua" "$stage/cxone/core.c" "$src"/plugin/*.c
cd "$src/doc"
# Debian's lua-ldoc ships without its built-in markdown.lua: without lua-markdown it would
# silently render every comment as plain text, so that is an error here.
run_ldoc -c "$src/doc/config.ld" -d "$out" "$stage" >"$stage/log" 2>&1 || { cat "$stage/log" >&2; exit 1; }
if grep -q "not found, falling back" "$stage/log"; then
    cat "$stage/log" >&2
    echo "ldoc.sh: no markdown processor for LDoc (install lua-markdown: scripts/deps.sh)" >&2
    exit 1
fi
cat "$stage/log"
echo "reference written to $out/index.html"
