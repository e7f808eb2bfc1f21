#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, bodies in src/fuzzing.rs) with cargo-fuzz/libFuzzer on the
# nightly toolchain, each for at most SECONDS and RUNS executions, two at a time, then merges what each
# run found into fuzz/corpus/<target>, keeping only inputs that add coverage (libFuzzer -merge=1). Prints each target's executions, time and
# result; a crash's input lands in fuzz/artifacts/<target>/ and the script exits non-zero.
#
#   scripts/fuzz.sh [-t SECONDS (default 60)] [-r RUNS (default 10000000)] [TARGET...]
#
# Needs: rustup's nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). Bounded: every run stops at
# SECONDS; nothing outside fuzz/ and a per-run /dev/shm file is written.
set -euo pipefail
SECS=60
RUNS=10000000
while getopts "t:r:" o; do
  case $o in
    t) SECS=$OPTARG ;;
    r) RUNS=$OPTARG ;;
    *) echo "usage: $0 [-t SECONDS] [-r RUNS] [TARGET...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
cd "$(dirname "$0")/../fuzz"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O >/dev/null
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
run() {
  local t=$1 len=4096
  # Metadata images and config files are longer than libFuzzer's default input bound.
  case $t in task_metadata | config_file) len=16384 ;; esac
  mkdir -p "work/$t"
  timeout $((SECS + 120)) cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
    -runs="$RUNS" -max_total_time="$SECS" -max_len=$len -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$LOGS/$t.log" 2>&1 && echo ok >"$LOGS/$t.rc" || echo "exit $?" >"$LOGS/$t.rc"
}
export -f run
export SECS RUNS LOGS
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
  cargo +nightly fuzz run -O "$t" "corpus/$t" "work/$t" -- -merge=1 >/dev/null 2>&1 || true
  rm -rf "work/$t"
done
exit $fail
