#!/bin/sh
# Runs bench/net_bench.lua against the 5.4 build tree with the environment ctest uses.
# Usage: bench/net_bench.sh [N] [REPS]   (BUILD defaults to build/lua5.4)
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$SRC/build/lua5.4}
export LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;$SRC/specs/?.lua;;"
export LUA_CPATH="$BUILD/?.so;;"
export CXONE_SIM_BIN=${CXONE_SIM_BIN:-$SRC/build/lua5.4/sim/cxone-sim}
exec "${LUA:-lua5.4}" "$SRC/bench/net_bench.lua" "$@"
