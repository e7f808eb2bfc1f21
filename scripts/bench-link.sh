#!/usr/bin/env bash
# Shoal on shaped links: is the link, not Shoal's CPU, what a client waits on? Four hosts in network
# namespaces joined by a bridge, every host's veth shaped with tc tbf at RATE in both directions:
#   origin (nginx, sendfile)   A (daemon + its clients)   B (daemon + its clients)   scheduler
# For each RATE and round, on a fresh object (so every fetch starts from empty caches), interleaved:
#   direct   curl in B's namespace straight from nginx (the baseline)
#   cold     curl in A's namespace through A's proxy: A fetches from nginx
#   relay    curl in A's namespace through examples/relay_floor.rs on A's loopback: a bare verifying relay
#            (receive, sha256 on a second thread, send; no pieces, no disk), the kernel-TCP floor
#   peer     curl in B's namespace through B's proxy: B takes the pieces from A (a remote-peer hit)
# and the CPU seconds per GiB of daemon A (cold; and as the parent of B) and daemon B (the child), beside
# the floor measured in the same run: one sha256 pass over 1 GiB in memory plus one copy of it
# (examples/cpu_floor.rs, the daemon's own sha256). A verified download cannot beat one core's sha256,
# so each time is also compared with max(direct, size / sha256 rate). A second table sets the daemons
# beside the relay (A's position: origin link in, a client on loopback out) and the parent beside nginx's
# worker serving the direct GET (sendfile from the page cache over the same link): what the daemons spend
# beyond what a program in their place must.
#
#   sudo scripts/bench-link.sh [-s SIZE_MIB=1024] [-r ROUNDS=2] [--rates "1gbit 4gbit 10gbit"] [-o OUTDIR]
#                              [--perf DIR]
#
# --perf DIR: `perf record -g` on daemon A during each cold fetch, on A and B during each remote-peer
# hit, and on the bare relay, one file per process, rate and round (DIR/cold_a-4gbit-r1.data, relay-…,
# peer_parent_a-…, peer_child_b-…);
# read them with `perf report -i FILE --no-children`. Sampling costs CPU: its rounds' times and CPU are
# not comparable with a run without it.
#
# Needs root (ip netns, tc), nginx (installed with apt-get when missing), curl, a release build, and about
# ROUNDS × rates × SIZE × 3 of disk under /var/tmp. Addresses exist only inside this run's namespaces;
# every process and namespace is removed on exit, even when interrupted. Exits non-zero only if the set-up
# fails: a missed goal is a figure to report. SHOAL_BIN=path measures another build of the daemon. Writes results.md to OUTDIR (default
# /var/tmp/shoal-bench/bench-link).
set -euo pipefail

SIZE_MIB=1024
ROUNDS=2
RATES="1gbit 4gbit 10gbit"
OUT=/var/tmp/shoal-bench/bench-link
PERF_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZE_MIB=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    *) echo "usage: $0 [-s SIZE_MIB] [-r ROUNDS] [--rates \"1gbit 4gbit\"] [-o OUTDIR] [--perf DIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-link: needs root (ip netns, tc)" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ! command -v nginx >/dev/null; then
  echo "== installing nginx"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release -q
cargo build --release -q --example cpu_floor --example relay_floor
# SHOAL_BIN: another build of the daemon to measure (an older commit, for a before/after in one sitting).
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
FLOOR_BIN=$ROOT/target/release/examples/cpu_floor
mkdir -p "$OUT"
if [ -n "$PERF_DIR" ]; then
  command -v perf >/dev/null || { echo "bench-link: --perf needs perf (apt-get install linux-perf)" >&2; exit 1; }
  mkdir -p "$PERF_DIR"
fi

P=shl$$                      # namespace prefix, unique per run
NET=10.214.0                 # addresses exist only inside this run's namespaces
WORK=$(mktemp -d /var/tmp/shoal-link.XXXXXX)
"$BIN" secret generate >"$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
link_cleanup() {
  bench_cleanup
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap link_cleanup EXIT
TCK=$(getconf CLK_TCK)

bridge_switch
host() { # host NAME OCTET: a namespace on the bridge at $NET.OCTET, shaped later by set_rate
  bridge_host "$1" "$2"
  HOSTS+=("$1:$2")
}
# Both directions of every host's link: the host's egress (eth0) and its ingress (the bridge port's egress).
set_rate() {
  local h name octet op
  for h in "${HOSTS[@]}"; do
    name=${h%%:*}; octet=${h##*:}
    op=add; tc -n "$P-$name" qdisc show dev eth0 | grep -q tbf && op=change
    tc -n "$P-$name" qdisc "$op" dev eth0 root tbf rate "$1" burst 1mb latency 50ms
    tc -n "$P-sw" qdisc "$op" dev "v$P$octet" root tbf rate "$1" burst 1mb latency 50ms
  done
}
HOSTS=()
host origin 2
host sched 3
host a 4
host b 5

echo "== making $ROUNDS objects per rate of $SIZE_MIB MiB"
chmod 755 "$WORK"
mkdir -p "$WORK/www"

origin_nginx "$NET.2:8080" "access_log off; tcp_nopush on;"
in_ns sched "$BIN" scheduler --listen "$NET.3:8002" 2>"$WORK/sched.log" >/dev/null &
PIDS+=($!)
daemon() { # daemon NAME OCTET: proxy on the namespace's loopback, uploads on its link address
  # Not through in_ns: $! must be the daemon itself (ip netns exec execs it) for its CPU to be read.
  ip netns exec "$P-$1" "$BIN" daemon --data-dir "$WORK/data-$1" --workers 1 --scheduler "$NET.3:8002" \
    --proxy-addr 127.0.0.1:65001 --upload-addr "$NET.$2:65002" --metrics-addr 127.0.0.1:65003 \
    2>"$WORK/daemon-$1.log" >/dev/null &
  PIDS+=($!)
  printf -v "${1}_PID" '%s' "$!"
}
a_PID=""; b_PID=""
daemon a 4
daemon b 5
# The bare relay beside daemon A: the same links, the same client on loopback.
relay_floor "$P-a" 127.0.0.1:65009 "$NET.2:8080"
for i in $(seq 100); do
  n=$({ grep -l "daemon started" "$WORK"/daemon-*.log 2>/dev/null || true; } | wc -l)
  [ "$n" -ge 2 ] && break
  [ "$i" = 100 ] && { echo "bench-link: daemons did not start" >&2; tail -n 5 "$WORK"/daemon-*.log >&2; exit 1; }
  sleep 0.1
done
for i in $(seq 50); do in_ns b curl -s -o /dev/null "http://$NET.2:8080/" && break; sleep 0.1; done

machine_ticks() { # "busy idle" clock ticks of the whole machine (every process, every core) so far
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}
get() { # get NS LABEL URL [proxy]: appends "label rate seconds machine-busy-%" to $WORK/gets
  local px=(--noproxy '*') t m0 m1
  [ -n "${4:-}" ] && px=(--noproxy '' -x "http://$4")
  m0=$(machine_ticks)
  t=$(in_ns "$1" timeout 900 curl -sS -f "${px[@]}" -o /dev/null -w '%{time_total}' "$3") \
    || { echo "bench-link: $2 GET failed" >&2; exit 1; }
  m1=$(machine_ticks)
  # How busy both cores were during the fetch: near 100% means the shared CPU, not the link or a
  # pipeline stall, is what the fetch waited on.
  echo "$2 $RATE $t $(echo "$m0 $m1" | awk '{ b = $3 - $1; i = $4 - $2; printf "%.0f", (b + i > 0) ? 100 * b / (b + i) : 0 }')" \
    >>"$WORK/gets"
}
charged() { # LABEL PID TICKS_BEFORE: appends "label rate cpu_s_per_GiB"
  awk -v l="$1" -v r="$RATE" -v c=$(($(cpu_ticks "$2") - $3)) -v t="$TCK" -v m="$SIZE_MIB" \
    'BEGIN { printf "%s %s %.4f\n", l, r, c / t / (m / 1024) }' >>"$WORK/cpu"
}
RECORDERS=()
profile() { # profile LABEL PID: with --perf, samples PID until unprofile
  [ -n "$PERF_DIR" ] || return 0
  perf record -q -F 999 -g -p "$2" -o "$PERF_DIR/$1-$RATE-r$r.data" >/dev/null 2>&1 &
  RECORDERS+=($!); PIDS+=($!)
  sleep 0.5   # perf attaches to every thread before the fetch starts
}
unprofile() {
  [ ${#RECORDERS[@]} -gt 0 ] || return 0
  kill -INT "${RECORDERS[@]}" 2>/dev/null || true
  wait "${RECORDERS[@]}" 2>/dev/null || true
  RECORDERS=()
}
direct() { # the baseline GET, and the CPU nginx's worker spends sending it (the parent's baseline)
  local n0; n0=$(cpu_ticks "$NGX_WORKER")
  get b direct "$1"; charged direct_nginx "$NGX_WORKER" "$n0"
}
relay() { # relay OID: the object through the bare relay in A's namespace (not through A: its cache stays cold)
  local r0; profile relay "$RELAY_PID"; r0=$(cpu_ticks "$RELAY_PID")
  get a relay "http://127.0.0.1:65009/$1"; charged relay "$RELAY_PID" "$r0"; unprofile
}
cold() {
  local a0; profile cold_a "$a_PID"; a0=$(cpu_ticks "$a_PID")
  get a cold "$1" 127.0.0.1:65001; charged cold_a "$a_PID" "$a0"; unprofile
}
peer() {
  local a0 b0; profile peer_parent_a "$a_PID"; profile peer_child_b "$b_PID"
  a0=$(cpu_ticks "$a_PID"); b0=$(cpu_ticks "$b_PID")
  get b peer "$1" 127.0.0.1:65001
  charged peer_parent_a "$a_PID" "$a0"; charged peer_child_b "$b_PID" "$b0"; unprofile
}
wait_complete() { # oid: until A's /tasks lists it complete (up to 60 s), without reading it through A
  local i
  for i in $(seq 120); do
    in_ns a curl -sS http://127.0.0.1:65003/tasks | python3 -c '
import json, sys
sys.exit(0 if any(t["url"].endswith(sys.argv[1]) and t["state"] == "complete" for t in json.load(sys.stdin)) else 1)' "$1" \
      && return 0
    sleep 0.5
  done
  echo "bench-link: A never completed $1" >&2; exit 1
}
: >"$WORK/gets"; : >"$WORK/cpu"; : >"$WORK/floor"

for RATE in $RATES; do
  set_rate "$RATE"
  echo "== $RATE: $ROUNDS rounds of $SIZE_MIB MiB, direct / cold through A / remote-peer hit through B"
  for r in $(seq "$ROUNDS"); do
    oid=$(make_obj "$SIZE_MIB")
    url="http://$NET.2:8080/$oid"
    cat "$WORK/www/$oid" >/dev/null   # the origin's copy in the page cache for every fetch
    if [ $((r % 2)) = 1 ]; then direct "$url"; relay "$oid"; cold "$url"
    else cold "$url"; relay "$oid"; direct "$url"; fi
    wait_complete "$oid"
    peer "$url"
    "$FLOOR_BIN" "$SIZE_MIB" >>"$WORK/floor"
    rm -f "$WORK/www/$oid"
    grep " $RATE " "$WORK/gets" | tail -n 4 | awk -v r="$r" '{printf "  round %s %-7s %7.3f s, machine %3s%% busy\n", r, $1, $3, $4}'
  done
done

# ---- the table
med() { awk -v l="$1" -v r="$2" -v k="$3" '$1 == l && $2 == r {print $k}' "$4" | median; }
fmt() { awk -v x="$1" -v f="$2" 'BEGIN { printf f, x }'; }
floor=$(awk '{print $3}' "$WORK/floor" | median)
sha_rate=$(awk '{print $4}' "$WORK/floor" | median)
hash_bound=$(awk -v m="$SIZE_MIB" -v r="$sha_rate" 'BEGIN { print m * 1048576 / (r * 1e9) }')
{
  echo
  echo "CPU floor (same run, median): $(fmt "$floor" %.3f) s per GiB (sha256 at $(fmt "$sha_rate" %.2f) GB/s on one core + one memcpy);"
  echo "a verified $SIZE_MIB MiB download cannot take less than $(fmt "$hash_bound" %.2f) s here."
  echo
  echo "| link, $SIZE_MIB MiB, median of $ROUNDS | direct GET (s) | cold through A (s, × bound) | remote-peer hit through B (s, × bound) | CPU s/GiB: A cold / B child / A parent | × floor (A cold / B child) |"
  echo "|---|---|---|---|---|---|"
  for RATE in $RATES; do
    d=$(med direct "$RATE" 3 "$WORK/gets"); c=$(med cold "$RATE" 3 "$WORK/gets"); p=$(med peer "$RATE" 3 "$WORK/gets")
    bound=$(awk -v d="$d" -v h="$hash_bound" 'BEGIN { print (d > h ? d : h) }')
    ca=$(med cold_a "$RATE" 3 "$WORK/cpu"); cb=$(med peer_child_b "$RATE" 3 "$WORK/cpu"); pa=$(med peer_parent_a "$RATE" 3 "$WORK/cpu")
    printf "| %s | %.3f | %.3f (%.2f×) | %.3f (%.2f×) | %.2f / %.2f / %.2f | %.2f× / %.2f× |\n" "$RATE" "$d" \
      "$c" "$(awk -v a="$c" -v b="$bound" 'BEGIN {print a / b}')" "$p" "$(awk -v a="$p" -v b="$bound" 'BEGIN {print a / b}')" \
      "$ca" "$cb" "$pa" "$(awk -v a="$ca" -v b="$floor" 'BEGIN {print a / b}')" "$(awk -v a="$cb" -v b="$floor" 'BEGIN {print a / b}')"
  done
  echo
  echo "× bound: the time over max(direct GET, size / one core's sha256). Goals: cold ≤ 1.05×, remote-peer ≤ 1.1×;"
  echo "CPU ≤ 1.3× the floor for A cold and B child, ≤ 0.3 s/GiB for A as the parent."
  echo
  echo "Beside what a program in the daemons' place must spend (same run): the bare verifying relay"
  echo "(examples/relay_floor.rs: the origin's bytes received, sha256'd and sent to curl on loopback) for A cold"
  echo "and B child, and nginx's worker sending the direct GET (sendfile, page cache) for A as the parent."
  echo
  echo "| link | relay (s, × direct) | cold through A ÷ relay (time) | CPU s/GiB: relay / nginx | A cold ÷ relay | B child ÷ relay | A parent ÷ nginx |"
  echo "|---|---|---|---|---|---|---|"
  for RATE in $RATES; do
    d=$(med direct "$RATE" 3 "$WORK/gets"); c=$(med cold "$RATE" 3 "$WORK/gets"); rl=$(med relay "$RATE" 3 "$WORK/gets")
    ca=$(med cold_a "$RATE" 3 "$WORK/cpu"); cb=$(med peer_child_b "$RATE" 3 "$WORK/cpu"); pa=$(med peer_parent_a "$RATE" 3 "$WORK/cpu")
    cr=$(med relay "$RATE" 3 "$WORK/cpu"); cn=$(med direct_nginx "$RATE" 3 "$WORK/cpu")
    awk -v R="$RATE" -v d="$d" -v c="$c" -v rl="$rl" -v ca="$ca" -v cb="$cb" -v pa="$pa" -v cr="$cr" -v cn="$cn" 'BEGIN {
      printf("| %s | %.3f (%.2f×) | %.2f× | %.2f / %.2f | %.2f× | %.2f× | %.2f× |\n", R, rl, rl / d, c / rl, cr, cn, ca / cr, cb / cr, (cn > 0 ? pa / cn : 0))
    }'
  done
  given_up() { in_ns "$1" curl -s --noproxy '*' http://127.0.0.1:65003/metrics | awk '/^shoal_receive_marks_given_up_total/ {print $2}'; }
  echo "Daemon reads that gave up their receive mark after a 25 ms wait (shoal_receive_marks_given_up_total): A $(given_up a || true), B $(given_up b || true)."
  relay_stalls
  echo "Per-round seconds: $(awk '{printf "%s@%s=%.2f ", $1, $2, $3}' "$WORK/gets")"
  echo "Per-round CPU s/GiB: $(awk '{printf "%s@%s=%.2f ", $1, $2, $3}' "$WORK/cpu")"
} | tee "$OUT/results.md"
echo "results: $OUT/results.md"
