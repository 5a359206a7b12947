#!/bin/sh
# make bench: prints the project's figures (not a test; the machine is shared and noisy).
# Usage: bench/run.sh BUILD_DIR   (WRK_SECONDS=60 for the full one-minute sim load)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build/lua5.4}" && pwd)
export LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;$SRC/specs/?.lua;;"
export LUA_CPATH="$BUILD/?.so;;"
export CXONE_SIM_BIN="$BUILD/sim/cxone-sim"
echo "== cxone.core offline half (issue 2)"
lua5.4 "$SRC/bench/core_bench.lua"
echo "== cxone-sim under wrk (issue 3)"
"$SRC/bench/sim_wrk.sh" "$BUILD" "${WRK_SECONDS:-15}"
echo "== client against cxone-sim (issue 4)"
BUILD="$BUILD" "$SRC/bench/net_bench.sh" 500 3
