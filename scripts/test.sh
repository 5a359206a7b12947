#!/bin/sh
# make test: builds the 5.4, 5.3 and LuaJIT trees and a fourth, sanitizer tree (Lua 5.4 with
# -DCXONE_SANITIZE=ON: ASan + UBSan, halt on error), runs ctest in each, and ends with one
# closing line "N passed, N failed" over all of them.
#  - the 5.4 tree also runs the fuzz smoke (fuzz:*, FUZZ_SMOKE_SECONDS each) and valgrind
#    (c:util:valgrind, valgrind:apply);
#  - the sanitizer tree runs the Lua 5.4 specs, the sim suites and the C tests; lua5.4 is not
#    instrumented, so tests/fuzz/asan/lua5.4 (first on PATH) preloads the ASan runtime into it.
#    Every sanitizer report is written to a file; any report fails the run, whatever the exit
#    status of the process that made it.
# SANITIZE=0 skips the sanitizer tree.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build}
JOBS=${JOBS:-2}
started=$(date +%s)
scripts/build.sh 5.4 5.3 luajit || { echo "0 passed, 1 failed"; exit 1; }

SAN=$BUILD/lua5.4-sanitize
if [ "${SANITIZE:-1}" != 0 ]; then
    if [ ! -f "$SAN/CMakeCache.txt" ]; then
        cmake -S . -B "$SAN" -DLUA=5.4 -DCXONE_SANITIZE=ON ${CMAKE_FLAGS:-} >/dev/null \
            || { echo "0 passed, 1 failed"; exit 1; }
    fi
    cmake --build "$SAN" -j "$JOBS" -- --no-print-directory >"$SAN.log" 2>&1 \
        || { cat "$SAN.log" >&2; echo "0 passed, 1 failed"; exit 1; }
    echo "built $SAN"
fi

passed=0; failed=0
# run_ctest DIR [ctest options...]: adds the tree's summary to passed/failed.
run_ctest() {
    dir=$1; shift
    echo "== ctest in $dir"
    out=$(mktemp)
    ( cd "$dir" && if [ -n "${SAN_ENV:-}" ]; then export $SAN_ENV; fi \
        && ctest --output-on-failure -j "$JOBS" ${CTEST_FLAGS:-} "$@" ) 2>&1 | tee "$out"
    line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$out" | tail -n 1)
    if [ -z "$line" ]; then
        echo "ctest in $dir printed no summary" >&2
        failed=$((failed + 1))
    else
        total=$(echo "$line" | sed -E 's/.*out of ([0-9]+).*/\1/')
        nfail=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed.*/\1/')
        passed=$((passed + total - nfail))
        failed=$((failed + nfail))
    fi
    rm -f "$out"
}

for dir in "$BUILD/lua5.4" "$BUILD/lua5.3" "$BUILD/luajit"; do
    run_ctest "$dir"
done

if [ "${SANITIZE:-1}" != 0 ]; then
    cc=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$SAN/CMakeCache.txt")
    asan=$(${cc:-cc} -print-file-name=libasan.so)
    case "$asan" in
        /*) ;;
        *) asan=$(${cc:-cc} -print-file-name=libclang_rt.asan-x86_64.so) ;; # built with clang
    esac
    logs=$ROOT/$SAN/sanitizer-logs
    rm -rf "$logs"
    mkdir -p "$logs"
    # detect_leaks=0: the interpreters' own allocations at exit are not ours to report.
    # (paths without spaces: the list is split on them)
    SAN_ENV="PATH=$ROOT/tests/fuzz/asan:$PATH CXONE_ASAN_RUNTIME=$asan
        ASAN_OPTIONS=halt_on_error=1:detect_leaks=0:log_path=$logs/asan
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
    run_ctest "$SAN" -R '^(lua5\.4:|sim:|c:)'
    SAN_ENV=
    if [ -n "$(ls -A "$logs")" ]; then
        echo "== sanitizer reports in $SAN (each fails the run):" >&2
        for f in "$logs"/*; do
            echo "-- $f" >&2
            head -n 60 "$f" >&2
            failed=$((failed + 1))
        done
    fi
fi

echo "make test took $(( $(date +%s) - started )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
