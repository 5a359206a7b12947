#!/bin/sh
# `cmake --install` into a temp prefix, then the installed cxone runs from / with an empty
# environment (env -i: no LUA_PATH, LUA_CPATH, PATH or HOME), finds its own modules, validates a
# payload, prints the REPL's help for C functions from the installed cxone.repl.core_doc, runs
# the cxone-sim installed beside it, and its man page and bash completion are where man and
# bash-completion look.
# usage: install_test.sh SRC_DIR BUILD_DIR (the Lua 5.4 tree)
set -u
SRC=$1
BUILD=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-install.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
P=$tmp/prefix

cmake --install "$BUILD" --prefix "$P" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; fail "cmake --install"; }
for f in bin/cxone lib/lua/5.4/cxone/core.so share/lua/5.4/cxone/init.lua share/lua/5.4/cxone/cli.lua \
         share/man/man1/cxone.1 share/bash-completion/completions/cxone \
         share/zsh/vendor-completions/_cxone share/fish/vendor_completions.d/cxone.fish; do
    [ -f "$P/$f" ] || fail "not installed: $f"
done
[ -x "$P/bin/cxone" ] || fail "bin/cxone is not executable"
head -n 1 "$P/share/zsh/vendor-completions/_cxone" | grep -qx '#compdef cxone' || fail "the zsh completion has no #compdef line"
grep -q 'complete -c cxone' "$P/share/fish/vendor_completions.d/cxone.fish" || fail "the fish completion completes nothing for cxone"
ok "layout: bin, lib/lua/5.4, share/lua/5.4, share/man/man1, bash, zsh and fish completions"

# Every module of the tree is installed (a module added to lua/ and not installed fails here),
# plus cxone.repl.core_doc, generated at build time from plugin/*.c.
(cd "$SRC/lua" && { find . -name '*.lua'; echo ./cxone/repl/core_doc.lua; } | sort) >"$tmp/tree"
(cd "$P/share/lua/5.4" && find . -name '*.lua' | sort) >"$tmp/installed"
cmp -s "$tmp/tree" "$tmp/installed" || { diff "$tmp/tree" "$tmp/installed" >&2; fail "installed Lua modules differ from lua/"; }
ok "all $(wc -l <"$tmp/tree") Lua modules installed"

# The installed command names its own prefix and nothing of the source or build tree.
grep -q "$P/share/lua/5.4" "$P/bin/cxone" || fail "installed cxone does not name its prefix"
grep -q '@CXONE_' "$P/bin/cxone" && fail "installed cxone still holds @CXONE_ placeholders"
grep -qF "$SRC" "$P/bin/cxone" && fail "installed cxone refers to the source tree"
grep -qF "$BUILD" "$P/bin/cxone" && fail "installed cxone refers to the build tree"
ok "paths settled at install time"

cat >"$tmp/valid.json" <<'JSON'
{"actionId": "a1b2c3d4-e5f6-4890-abcd-ef1234567890", "environmentId": "staging",
 "variables": [{"name": "TIMEOUT_MS", "value": "3000", "masked": false}]}
JSON
cat >"$tmp/invalid.json" <<'JSON'
{"actionId": "not-a-uuid", "environmentId": "staging",
 "variables": [{"name": "TIMEOUT_MS", "value": "3000", "masked": false}]}
JSON

# From /, with nothing in the environment; the source tree is not reachable by any default path.
out=$(cd / && env -i "$P/bin/cxone" validate "$tmp/valid.json" 2>&1); rc=$?
[ "$rc" -eq 0 ] || fail "env -i cxone validate (valid) exited $rc: $out"
echo "$out" | grep -q "valid" || fail "no verdict printed: $out"
out=$(cd / && env -i "$P/bin/cxone" validate "$tmp/invalid.json" 2>&1); rc=$?
[ "$rc" -eq 1 ] || fail "env -i cxone validate (invalid) exited $rc, expected 1: $out"
echo "$out" | grep -q "actionId" || fail "the violation is not named: $out"
ok "env -i PREFIX/bin/cxone validate from /: valid exit 0, invalid exit 1 naming actionId"

# It loaded the installed cxone.core, not some other copy.
ver=$(cd / && env -i "$P/bin/cxone" --version 2>&1) || fail "cxone --version: $ver"
echo "$ver" | grep -q '^cxone ' || fail "cxone --version printed: $ver"
ok "$ver"

# The REPL's help for a C function comes from the installed data module (the source tree's
# plugin/*.c is out of reach): help(cxone.core.sha256) prints its reference text.
out=$(cd / && printf '%s\n' 'help(cxone.core.sha256)' 'help(cxone.core.exec)' \
      'select(2, require("cxone.repl.cdoc").entries())' | env -i "$P/bin/cxone" repl 2>"$tmp/repl.err")
rc=$?
[ "$rc" -eq 0 ] || fail "env -i cxone repl (help) exited $rc: $out $(cat "$tmp/repl.err")"
echo "$out" | grep -q '^cxone.core.sha256 (C)$' || fail "help(cxone.core.sha256) printed no title: $out"
echo "$out" | grep -q 'SHA-256 of a string' || fail "help(cxone.core.sha256) printed no reference text: $out"
echo "$out" | grep -q 'Replaces this process by a program' || fail "help(cxone.core.exec) printed no reference text: $out"
echo "$out" | grep -q 'no documentation' && fail "the installed REPL has no documentation for a C function: $out"
echo "$out" | tail -n 1 | grep -qx '"module"' || fail "the help text did not come from cxone.repl.core_doc: $out"
ok "installed cxone repl: help(cxone.core.sha256) and help(cxone.core.exec) from cxone.repl.core_doc"

# `cxone sim` finds the emulator installed beside it (no CXONE_SIM_BIN, no PATH).
if [ -x "$P/bin/cxone-sim" ]; then
    out=$(cd / && env -i "$P/bin/cxone" sim --help 2>&1) || fail "env -i cxone sim --help: $out"
    echo "$out" | grep -q -- '--listen HOST:PORT' || fail "cxone sim --help did not run the emulator: $out"
    ok "env -i PREFIX/bin/cxone sim runs PREFIX/bin/cxone-sim"
fi

# man finds the page under the prefix; bash loads the completion and completes a command.
page=$(man -M "$P/share/man" -w cxone 2>&1) || fail "man -M PREFIX/share/man -w cxone: $page"
[ "$page" = "$P/share/man/man1/cxone.1" ] || fail "man found $page"
ok "man -w cxone: $page"
words=$(bash -c '. "$1" || exit 1
COMP_WORDS=(cxone pl); COMP_CWORD=1; COMP_LINE="cxone pl"; COMP_POINT=${#COMP_LINE}
fn=$(complete -p cxone | sed -E "s/.* -F ([^ ]+) .*/\1/") || exit 1
"$fn" cxone pl cxone; echo "${COMPREPLY[@]}"' sh "$P/share/bash-completion/completions/cxone" 2>&1) \
    || fail "the completion script does not load: $words"
[ "$words" = "plan" ] || fail "completing 'cxone pl' gave '$words', expected 'plan'"
ok "bash completion: 'cxone pl<TAB>' -> plan"
# Staged for a package (DESTDIR): the command names the final prefix, not the staging directory.
DESTDIR="$tmp/stage" cmake --install "$BUILD" --prefix /opt/cxone-test >"$tmp/stage.log" 2>&1 \
    || { cat "$tmp/stage.log" >&2; fail "DESTDIR install"; }
staged=$tmp/stage/opt/cxone-test/bin/cxone
[ -x "$staged" ] || fail "DESTDIR install: no $staged"
grep -qF "[==[/opt/cxone-test/share/lua/5.4]==]" "$staged" || fail "DESTDIR install: cxone does not name /opt/cxone-test"
grep -qF "$tmp/stage" "$staged" && fail "DESTDIR install: cxone names the staging directory"
ok "DESTDIR=STAGE --prefix /opt/cxone-test: cxone names /opt/cxone-test only"
echo "install: all checks passed"
