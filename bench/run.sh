#!/bin/sh
# make bench: prints the project's figures (not a test; the machine is shared and noisy).
# Usage: bench/run.sh BUILD_DIR   (WRK_SECONDS=60 for the full one-minute sim load;
# BENCH_REPS=N for N runs per figure, default 5)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build/lua5.4}" && pwd)
export LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;$SRC/specs/?.lua;;"
export LUA_CPATH="$BUILD/?.so;;"
export CXONE_SIM_BIN="$BUILD/sim/cxone-sim"
echo "== cxone.core offline half"
lua5.4 "$SRC/bench/core_bench.lua"
echo
echo "== cxone-sim under wrk"
"$SRC/bench/sim_wrk.sh" "$BUILD" "${WRK_SECONDS:-10}"
echo
echo "== the client against cxone-sim: its floor, cxone apply at 100/500/2000 actions, the sim's PATCH cost"
lua5.4 "$SRC/bench/apply_bench.lua" "$SRC" "$BUILD"
echo
echo "== the client under a rate limit: requests per step, 429 share, wall against requests / R"
"$SRC/bench/ratelimit_bench.sh" "$BUILD"
echo
echo "== cxone.Client: sequential vs batch"
BUILD="$BUILD" "$SRC/bench/net_bench.sh" 500 3
echo
echo "== embedded hosts: /ping while 20 delayed calls are in flight"
"$SRC/bench/embed_bench.sh" "$BUILD"
