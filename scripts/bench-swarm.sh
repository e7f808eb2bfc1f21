#!/usr/bin/env bash
# Swarm benchmark: a scheduler, a seed and N peers, each a `shoal` process in its own network namespace,
# joined by a bridge, with the origin's link limited by tc. Every peer fetches the same file at once
# through its own daemon; then the same peers download it directly from the origin, in the same run.
# Reports origin egress / file size and per-peer completion times (min / median / max), as markdown.
#
#   sudo scripts/bench-swarm.sh [-n PEERS] [-s SIZE_MIB] [--origin-rate 100mbit] [--peer-rate 1gbit] [-o OUTDIR]
#
# Writes results.md, data.json and chart.svg (per-peer completion times of both runs, origin bytes of
# both) to OUTDIR (default /var/tmp/shoal-bench/bench-swarm); a chart that cannot be drawn is a warning.
#
# Needs root (ip netns, tc), python3 (the origin is python's http.server: Content-Length, no Range).
# Bounded in time; namespaces and processes are removed on exit, even when interrupted. Exits non-zero
# only if the set-up fails; a missed goal is a figure to report.
set -euo pipefail

N=16
SIZE_MIB=256
ORIGIN_RATE=100mbit
PEER_RATE=1gbit
OUT=/var/tmp/shoal-bench/bench-swarm
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -s) SIZE_MIB=$2; shift 2 ;;
    --origin-rate) ORIGIN_RATE=$2; shift 2 ;;
    --peer-rate) PEER_RATE=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-n PEERS] [-s SIZE_MIB] [--origin-rate R] [--peer-rate R] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-swarm: needs root (ip netns, tc)" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROOT=$PWD
mkdir -p "$OUT"
cargo build --release -q
BIN=$PWD/target/release/shoal

P=shb$$                      # namespace prefix, unique per run
NET=10.213.0                 # addresses exist only inside this run's namespaces
WORK=$(mktemp -d /var/tmp/shoal-swarm.XXXXXX)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"   # helpers; this script installs its own clean-up below
# One cluster secret for this run's scheduler and daemons (they read it from the environment).
"$BIN" secret generate > "$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
trap swarm_cleanup EXIT INT TERM

bridge_switch
host() { swarm_host "$@"; }

host origin 2 "$ORIGIN_RATE"
host sched 3 "$PEER_RATE"
host seed 4 "$PEER_RATE"
for i in $(seq 1 "$N"); do host "peer$i" $((10 + i)) "$PEER_RATE"; done

# The object, named by its sha256 like a Git LFS object.
mkdir -p "$WORK/origin"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/obj"
OID=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
mv "$WORK/obj" "$WORK/origin/$OID"
URL="http://$NET.2:8080/$OID"

bg_ns origin python3 -m http.server 8080 --bind "$NET.2" -d "$WORK/origin" >/dev/null 2>&1
bg_ns sched "$BIN" scheduler --listen "$NET.3:8002" 2>"$WORK/sched.log"
daemon() { swarm_daemon "$@"; }
daemon seed 4 --seed
for i in $(seq 1 "$N"); do daemon "peer$i" $((10 + i)); done
swarm_wait_started $((N + 1)) || { tail -n 5 "$WORK"/*.log >&2; exit 1; }
for _ in $(seq 1 50); do in_ns peer1 curl -s -o /dev/null "http://$NET.2:8080/" && break; sleep 0.1; done

tx() { in_ns origin cat /sys/class/net/eth0/statistics/tx_bytes; }
# Runs CMD in every peer namespace at once; prints each one's seconds.
all_peers() {
  local pids=() i
  for i in $(seq 1 "$N"); do
    ( s=$(date +%s.%N); in_ns "peer$i" "$@" "$i" >/dev/null 2>"$WORK/run$i.err" || echo "peer $i failed: $(tail -n1 "$WORK/run$i.err")" >&2
      echo "$(date +%s.%N) - $s" | bc > "$WORK/t$i" ) & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for i in $(seq 1 "$N"); do cat "$WORK/t$i"; done
}
# Bounds: every peer at once shares the origin link, so a direct run lasts about N × size / rate.
BOUND=$(( 600 + N * SIZE_MIB * 8 * 3 / 200 ))   # seconds: 600 plus 1.5 × N × size at 100 Mbit/s
p2p_get() { timeout "$BOUND" "$BIN" get "$URL" --daemon 127.0.0.1:65001 --digest "sha256:$OID" -O "$WORK/out$1" && rm -f "$WORK/out$1"; }
direct_get() { timeout "$BOUND" curl -sf -o /dev/null "$URL"; }
export -f p2p_get direct_get in_ns; export BIN URL OID WORK P BOUND

stats() { sort -n | awk '{a[NR]=$1} END {printf "%.1f / %.1f / %.1f", a[1], a[int((NR+1)/2)], a[NR]}'; }
size=$((SIZE_MIB << 20))
# $0 expands in the child bash, on purpose.
# CPU seconds (user + system) of this run's daemons (the seed's and the peers'): with every node on one
# machine's cores, this says whether the swarm waited on the links or on the CPU.
cpu_s() {
  local t=0 p
  for p in $(pgrep -f "$WORK" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = shoal ] || continue
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "scale=1; $t / $(getconf CLK_TCK)" | bc
}
t0=$(tx); c0=$(cpu_s); w0=$(date +%s.%N)
# shellcheck disable=SC2016
P2P=$(all_peers bash -c 'p2p_get "$0"')
p2p_bytes=$(( $(tx) - t0 ))
p2p_cpu=$(echo "$(cpu_s) - $c0" | bc); p2p_wall=$(echo "$(date +%s.%N) - $w0" | bc)
t0=$(tx)
# shellcheck disable=SC2016
DIRECT=$(all_peers bash -c 'direct_get "$0"')
direct_bytes=$(( $(tx) - t0 ))
ideal=$(echo "scale=1; $size * 8 / $(numfmt --from=si "$(echo "${ORIGIN_RATE%bit}" | tr '[:lower:]' '[:upper:]')")" | bc)
# The seed's own back-to-source time (its "task complete" line): if uploads to the swarm slowed the seed's
# origin fetch, this exceeds size / origin rate by more than the link's overhead.
seed_s=$(grep -a "task complete" "$WORK/seed.log" | grep -ao 'ms=[0-9]*' | head -n1 | awk -F= '{printf "%.1f", $2 / 1000}')

{
  echo
  echo "| $N peers, ${SIZE_MIB} MiB, origin link $ORIGIN_RATE, peer links $PEER_RATE | origin bytes / size | per-peer seconds min / median / max |"
  echo "|---|---|---|"
  printf "| Shoal P2P (scheduler + seed) | %.3f | %s |\n" "$(echo "scale=3; $p2p_bytes / $size" | bc)" "$(echo "$P2P" | stats)"
  printf "| direct from the origin | %.3f | %s |\n" "$(echo "scale=3; $direct_bytes / $size" | bc)" "$(echo "$DIRECT" | stats)"
  echo "| the seed's fetch from the origin | | ${seed_s:-?} |"
  printf "| Shoal daemons' CPU during the P2P run | | %.1f s over %.1f s on %s cores |\n" "$p2p_cpu" "$p2p_wall" "$(nproc)"
  echo "| size / origin link rate | | $ideal |"
} | tee "$OUT/results.md"

list() { awk 'NF {printf "%s%.3f", sep, $1; sep = ", "}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", a / b}'; }
printf '{"title": "bench-swarm: %s peers, %s MiB, origin link %s (2-vCPU VM)", "p2p": [%s], "direct": [%s], "origin_bytes": {"p2p": %s, "direct": %s}, "ideal": %s}\n' \
  "$N" "$SIZE_MIB" "$ORIGIN_RATE" "$(echo "$P2P" | list)" "$(echo "$DIRECT" | list)" \
  "$(div "$p2p_bytes" "$size")" "$(div "$direct_bytes" "$size")" "$(div "$ideal" 1)" >"$OUT/data.json"
if "$ROOT/scripts/bench-chart.sh" swarm "$OUT/data.json" "$OUT/chart.svg"; then
  echo "chart: $OUT/chart.svg"
else
  echo "bench-swarm: warning: the chart was not drawn (table above and in $OUT/results.md)" >&2
fi
echo "results: $OUT/results.md"
