#!/bin/sh
# make fuzz: builds the libFuzzer harnesses (tests/fuzz, clang) in the 5.4 tree and runs each
# for FUZZ_SECONDS (600) with ASan + UBSan; FUZZ_HARNESSES picks some (default: all). The corpus
# grows in <tree>/tests/fuzz/work/<name>/corpus (kept between runs); findings are saved in
# .../artifacts and fail the run. Ends with one line per harness: executions and the verdict.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
TREE=$BUILD/lua5.4
HARNESSES=${FUZZ_HARNESSES:-json validate audit response}
cmake --build "$TREE" --target fuzzers -- --no-print-directory >"$TREE/fuzz-build.log" 2>&1 \
    || { cat "$TREE/fuzz-build.log" >&2; exit 1; }
bad=0
summary=""
for h in $HARNESSES; do
    work=$TREE/tests/fuzz/work/$h
    verdict=clean
    tests/fuzz/run.sh "$TREE/tests/fuzz/fuzz_$h" "tests/fuzz/corpus/$h" "$work" full || { verdict=FOUND; bad=1; }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/last.log" | tail -n 1)
    summary="$summary
fuzz_$h: ${runs:-?} executions in ${FUZZ_SECONDS:-600} s, $(ls "$work/corpus" | wc -l) corpus inputs: $verdict"
done
echo "== make fuzz$summary"
exit $bad
