#!/bin/sh
# `cxone sim` is the emulator itself (exec, same process id), so a signal sent to the command
# reaches the emulator and nothing is left behind: for TERM, INT and HUP, start `cxone sim`, check
# that its pid is cxone-sim serving HTTP, send the signal to that pid, and check that the process
# is gone and the port no longer answers.
# usage: sim_test.sh SRC_DIR SIM_BIN
set -u
SRC=$1
SIM=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-simtest.XXXXXX") || exit 1
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
sim_real=$(readlink -f "$SIM")

for sig in TERM INT HUP; do
    CXONE_SIM_BIN=$SIM lua5.4 "$SRC/bin/cxone" sim --listen 127.0.0.1:0 --quiet >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    # the first stdout line is the base URL (bounded wait for start-up: 20 s)
    i=0
    until url=$(head -n 1 "$tmp/out" 2>/dev/null) && [ -n "$url" ]; do
        kill -0 "$pid" 2>/dev/null || fail "$sig: cxone sim exited before listening: $(cat "$tmp/err")"
        i=$((i + 1)); [ "$i" -lt 200 ] || fail "$sig: cxone sim printed no URL in 20 s"
        sleep 0.1
    done
    exe=$(readlink -f "/proc/$pid/exe") || fail "$sig: no process $pid"
    [ "$exe" = "$sim_real" ] || fail "$sig: pid $pid of cxone sim runs $exe, not the emulator $sim_real"
    [ -z "$(ps -o pid= --ppid "$pid")" ] || fail "$sig: cxone sim has child processes: $(ps -o pid,comm --ppid "$pid")"
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url/") || fail "$sig: $url does not answer"
    [ "$code" != 000 ] || fail "$sig: $url does not answer"
    kill "-$sig" "$pid" || fail "$sig: kill -$sig $pid"
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null && fail "$sig: process $pid still runs after SIG$sig"
    pid=
    curl -s -o /dev/null --max-time 5 "$url/" && fail "$sig: $url still answers after SIG$sig"
    ok "SIG$sig to cxone sim (pid = the emulator's, HTTP $code) ends the emulator (status $rc), port closed"
done
echo "sim: all checks passed"
