#!/bin/sh
# Runs one libFuzzer harness: run.sh BINARY SEED_DIR WORK_DIR smoke|full
# smoke: FUZZ_SMOKE_SECONDS (30); full: FUZZ_SECONDS (600). New inputs go to WORK_DIR/corpus
# (never into the seed corpus in the source tree), findings to WORK_DIR/artifacts. Exit status
# non-zero on any crash, sanitizer report, leak, timeout or out-of-memory; the finding's log
# tail and input are printed.
set -u
bin=$1 seeds=$2 work=$3 mode=${4:-smoke}
case "$mode" in
    smoke) secs=${FUZZ_SMOKE_SECONDS:-30} ;;
    *) secs=${FUZZ_SECONDS:-600} ;;
esac
[ -x "$bin" ] || { echo "fuzz: $bin not built (cmake --build <tree> --target fuzzers)" >&2; exit 1; }
mkdir -p "$work/corpus" "$work/artifacts"
name=$(basename "$bin")
dict=$(dirname "$0")/${name#fuzz_}.dict
set -- -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/"
[ -f "$dict" ] && set -- "$@" -dict="$dict"
log=$work/last.log
: >"$work/started"
echo "fuzz: $name for $secs s (log: $log)"
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1} \
    "$bin" "$@" "$work/corpus" "$seeds" >"$log" 2>&1
rc=$?
grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: Loaded)" "$log" | sed "s/^/fuzz: $name: /"
if [ "$rc" -ne 0 ] || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:" "$log"; then
    echo "fuzz: $name FAILED (exit $rc); the end of its log:" >&2
    tail -n 60 "$log" >&2
    find "$work/artifacts" -type f -newer "$work/started" | while read -r a; do
        echo "fuzz: input $a (first 512 bytes, escaped):" >&2
        head -c 512 "$a" | od -c | head -n 40 >&2
    done
    exit 1
fi
echo "fuzz: $name clean"
