#!/bin/sh
# Runs bench/ratelimit_bench.lua (cxone apply under cxone-sim --rate-limit) against a build tree.
# Usage: bench/ratelimit_bench.sh [BUILD_DIR]   (default build/lua5.4; BENCH_RL_REPS, BENCH_RL_RATE,
# BENCH_RL_STEPS, BENCH_RL_TIMEOUT: see the .lua file)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$SRC/build/lua5.4}" && pwd)
export LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;$SRC/specs/?.lua;;"
export LUA_CPATH="$BUILD/?.so;;"
export CXONE_SIM_BIN="$BUILD/sim/cxone-sim"
exec lua5.4 "$SRC/bench/ratelimit_bench.lua" "$SRC" "$BUILD"
