#!/bin/sh
# make test: builds the 5.4, 5.3 and LuaJIT trees, runs ctest in each, and ends with one
# closing line "N passed, N failed" over all of them.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
scripts/build.sh 5.4 5.3 luajit || { echo "0 passed, 1 failed"; exit 1; }
passed=0; failed=0
for dir in "$BUILD/lua5.4" "$BUILD/lua5.3" "$BUILD/luajit"; do
    echo "== ctest in $dir"
    out=$(mktemp)
    ( cd "$dir" && ctest --output-on-failure -j "${JOBS:-2}" ${CTEST_FLAGS:-} ) 2>&1 | tee "$out"
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
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
