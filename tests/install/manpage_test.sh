#!/bin/sh
# doc/cxone.1 renders with `man -l` without a single groff warning, has the sections a man page
# needs, and names every command of the CLI and every CXONE_* variable the sources read.
# usage: manpage_test.sh SRC_DIR
set -u
SRC=$1
PAGE=$SRC/doc/cxone.1
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-mantest.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

LC_ALL=C.UTF-8 MANWIDTH=80 MAN_KEEP_FORMATTING= man --warnings=all -l "$PAGE" >"$tmp/out" 2>"$tmp/err" \
    || { cat "$tmp/err" >&2; fail "man -l failed"; }
[ -s "$tmp/err" ] && { cat "$tmp/err" >&2; fail "man -l printed warnings"; }
# plain text: drop backspace overstrikes, whatever the pager settings
sed 's/.\x08//g' "$tmp/out" >"$tmp/text"
[ "$(wc -l <"$tmp/text")" -gt 50 ] || fail "the rendered page is too short"
echo "ok: man -l renders $(wc -l <"$tmp/text") lines, no warnings"

for s in NAME SYNOPSIS DESCRIPTION COMMANDS ENVIRONMENT FILES "EXIT STATUS" EXAMPLES; do
    grep -q "^$s\$" "$tmp/text" || fail "no section $s"
done
echo "ok: sections NAME SYNOPSIS DESCRIPTION COMMANDS ENVIRONMENT FILES EXIT STATUS EXAMPLES"

# every command listed in the CLI's usage text is in the SYNOPSIS
cmds=$(sed -n '/^commands:/,/^$/p' "$SRC/lua/cxone/cli.lua" | sed 1d | awk 'NF {print $1}' | sort -u)
[ -n "$cmds" ] || fail "no commands found in lua/cxone/cli.lua"
syn=$(sed -n '/^SYNOPSIS/,/^DESCRIPTION/p' "$tmp/text")
for c in $cmds; do
    echo "$syn" | grep -qE "cxone $c( |\$)" || fail "command '$c' is not in the SYNOPSIS"
done
echo "ok: SYNOPSIS names every command: $(echo $cmds)"

# every CXONE_* variable the sources read is in ENVIRONMENT
vars=$(grep -rhoE '"CXONE_[A-Z_]+"' "$SRC/lua" "$SRC/plugin" | tr -d '"' | sort -u)
envsec=$(sed -n '/^ENVIRONMENT/,/^FILES/p' "$tmp/text")
for v in $vars; do
    echo "$envsec" | grep -qw "$v" || fail "$v (read by the sources) is not in ENVIRONMENT"
done
echo "ok: ENVIRONMENT names every variable read: $(echo $vars)"
# the webhook signature header is the one the client sends (plugin/client.c)
hdr=$(grep -ohE '"X-[A-Za-z-]+-Signature: t=' "$SRC/plugin/client.c" | head -n 1 | sed 's/^"//; s/: t=$//')
[ -n "$hdr" ] || fail "no signature header found in plugin/client.c"
grep -q "^ *$hdr: t=TIME,v1=HEX" "$tmp/text" || fail "the man page does not name the header $hdr: t=TIME,v1=HEX"
for other in $(grep -ohE 'X-[A-Za-z-]*Signature' "$tmp/text" | sort -u); do
    [ "$other" = "$hdr" ] || fail "the man page names $other; the client sends $hdr"
done
echo "ok: the man page names the webhook header the client sends: $hdr"
echo "manpage: all checks passed"
