#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, bodies in src/fuzzing.rs) under libFuzzer, each for at most
# SECONDS and RUNS executions, two at a time, then merges what each run found into fuzz/corpus/<target>,
# keeping only inputs that add coverage (libFuzzer -merge=1). Prints each target's executions, time and
# result; a crash's input lands in fuzz/artifacts/<target>/ and the script exits non-zero.
#
#   scripts/fuzz.sh [-t SECONDS (default 60)] [-r RUNS (default 10000000)] [-a] [-n] [TARGET...]
#     -a  with AddressSanitizer: builds with cargo-fuzz on the nightly toolchain (cargo install cargo-fuzz)
#     -n  no merge: fuzz/corpus is left as it is (the test suite's short run)
#
# By default the targets build on the stable toolchain: libfuzzer-sys compiles libFuzzer itself (needs a C++
# compiler), and rustc's SanitizerCoverage pass, asked for with the same flags cargo-fuzz passes, gives it
# its coverage feedback. What stable cannot add is AddressSanitizer, which only matters for the few
# `unsafe` blocks none of the parsers reach; -a adds it for long runs. Bounded: every run stops at SECONDS
# (the outer `timeout` allows 120 s more); nothing outside fuzz/ and a per-run /dev/shm file is written.
set -euo pipefail
SECS=60
RUNS=10000000
ASAN=0
MERGE=1
while getopts "t:r:an" o; do
  case $o in
    t) SECS=$OPTARG ;;
    r) RUNS=$OPTARG ;;
    a) ASAN=1 ;;
    n) MERGE=0 ;;
    *) echo "usage: $0 [-t SECONDS] [-r RUNS] [-a] [-n] [TARGET...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
cd "$(dirname "$0")/../fuzz"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(basename -s .rs fuzz_targets/*.rs)
HOST=$(rustc -vV | awk '/^host:/ { print $2 }')
if [ "$ASAN" = 1 ]; then
  cargo +nightly fuzz build -O >/dev/null
  BIN=$PWD/target/$HOST/release
else
  # --target keeps these flags off build scripts and proc macros, as cargo-fuzz does.
  RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
    CARGO_TARGET_DIR=target/stable cargo build --release --target "$HOST" --bins -q
  BIN=$PWD/target/stable/$HOST/release
fi
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
run() {
  local t=$1 len=4096
  # Metadata images and config files are longer than libFuzzer's default input bound.
  case $t in task_metadata | config_file) len=16384 ;; esac
  mkdir -p "work/$t" "artifacts/$t"
  timeout $((SECS + 120)) "$BIN/$t" "work/$t" "corpus/$t" -runs="$RUNS" -max_total_time="$SECS" \
    -max_len=$len -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" \
    >"$LOGS/$t.log" 2>&1 && echo ok >"$LOGS/$t.rc" || echo "exit $?" >"$LOGS/$t.rc"
}
export -f run
export SECS RUNS LOGS BIN
# Each run records its own result; xargs's status adds nothing (and must not end the script early).
printf '%s\n' "${TARGETS[@]}" | xargs -P 2 -I{} bash -c 'run {}' || true
fail=0
echo "| target | executions | seconds | result |"
echo "|---|---|---|---|"
for t in "${TARGETS[@]}"; do
  runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' || echo "?")
  secs=$(grep -ao 'Done [0-9]* runs in [0-9]* second' "$LOGS/$t.log" | awk '{print $5}' || true)
  res=$(cat "$LOGS/$t.rc" 2>/dev/null || echo "no result")
  [ "$res" = ok ] || { fail=1; tail -n 30 "$LOGS/$t.log" >&2; }
  echo "| $t | ${runs:-?} | ${secs:-?} | $res |"
  # New inputs went to work/<target>; only those that add coverage join the kept corpus, which stays small.
  [ "$MERGE" = 0 ] || "$BIN/$t" -merge=1 "corpus/$t" "work/$t" >/dev/null 2>&1 || true
  rm -rf "work/$t"
done
exit $fail
