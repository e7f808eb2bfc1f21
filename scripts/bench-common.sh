# Shared by the benchmark scripts (sourced, not run): the process list and the clean-up every script
# installs, and the small helpers they all use. The sourcing script sets WORK (its scratch directory)
# first and appends every background PID it starts to PIDS.
# shellcheck shell=bash

PIDS=()
# Stops every started process (TERM, then KILL after up to 10 s), keeps the logs when
# SHOAL_BENCH_KEEP_LOGS names a directory, and removes WORK. Runs on exit, including after INT/TERM.
bench_cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || true; fi; done
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill -9 "$p" 2>/dev/null || true; fi; done
  if [ -n "${SHOAL_BENCH_KEEP_LOGS:-}" ]; then mkdir -p "$SHOAL_BENCH_KEEP_LOGS"; cp "$WORK"/*.log "$SHOAL_BENCH_KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END { if (NR) print a[int((NR+1)/2)] }'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
