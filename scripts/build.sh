#!/bin/sh
# Configures and builds one tree per Lua version given (5.4, 5.3, luajit) under ${BUILD:-build}.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
for v in "$@"; do
    case "$v" in
        luajit) dir="$BUILD/luajit" ;;
        *) dir="$BUILD/lua$v" ;;
    esac
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        cmake -S . -B "$dir" -DLUA="$v" ${CMAKE_FLAGS:-} >/dev/null
    fi
    cmake --build "$dir" -j "$JOBS" -- --no-print-directory >"$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
    grep -E "warning:" "$dir.log" >&2 || true
    echo "built $dir"
done
