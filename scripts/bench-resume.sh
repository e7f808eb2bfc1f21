#!/usr/bin/env bash
# Resume after a crash, at full size: a daemon killed (SIGKILL) mid back-to-source and started again on
# the same store should fetch only the pieces it had not stored. nginx in its own namespace behind a tbf
# link (Range served, as every LFS store and registry does), one single-node daemon in a node namespace.
# Each round: a direct GET of a fresh object (the baseline time), then a fetch of it through the daemon,
# which is killed once AT percent of the object has left the origin's link (tc's byte count), started
# again, and asked again. Prints, per round and as medians: what the origin sent over both attempts as a
# multiple of the object (nginx's body_bytes_sent, partial answers included; 1.00x is every byte once,
# a restart from scratch would be 1 + AT/100), and the second attempt's time beside the direct GET's.
# The object through the restarted daemon is checked against its sha256.
#
#   sudo scripts/bench-resume.sh [-r ROUNDS=3] [-s SIZE_MIB=1024] [--rate 1gbit] [--at 50] [--connections 4]
#
# Needs root (ip netns, tc), nginx (Debian nginx-light), curl, a release build (SHOAL_BIN: another
# build). Namespaces and processes are removed on exit, even when interrupted.
set -euo pipefail

ROUNDS=3
SIZE_MIB=1024
RATE=1gbit
AT=50
CONNS=4
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    -s) SIZE_MIB=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --at) AT=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    *) echo "usage: $0 [-r ROUNDS] [-s SIZE_MIB] [--rate RATE] [--at PERCENT] [--connections N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-resume: needs root (ip netns, tc)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "bench-resume: needs nginx (apt-get install nginx-light)" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -q
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
WORK=$(mktemp -d /var/tmp/shoal-bench-resume.XXXXXX)
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"

P=shr$$                     # namespace prefix, unique per run
NET=10.216.0                # addresses exist only inside this run's namespaces
netns_pair "$RATE"

chmod 755 "$WORK"
mkdir -p "$WORK/www"
origin_nginx "$NET.1:8080" "log_format bytes '\$uri \$status \$body_bytes_sent'; access_log $WORK/nginx-access.log bytes;"
ORIGIN="http://$NET.1:8080"
SIZE=$((SIZE_MIB << 20))

declare -A PROXY
CONF="engine: {origin_connections: $CONNS}"
node_daemon resume 10 "$CONF"
DAEMON=${PIDS[-1]}

# Bytes the origin's side of the link has sent so far (tc counts every packet, headers included).
link_sent() { tc -n "$P-origin" -s qdisc show dev "o$P" | awk '/Sent/ {print $2; exit}'; }
# Body bytes nginx sent for URI $1, answers cut short included (logged when their connection closed).
origin_body() { awk -v u="/$1" '$1 == u {s += $3} END {printf "%.0f\n", s}' "$WORK/nginx-access.log"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

echo "== $ROUNDS rounds, $SIZE_MIB MiB over $RATE; the daemon is killed at $AT% (origin_connections $CONNS)"
for r in $(seq "$ROUNDS"); do
  oid=$(make_obj "$SIZE_MIB")
  t=$(in_node curl -sS --max-time 600 --noproxy '*' -o /dev/null -w '%{time_total}' "$ORIGIN/$oid")
  echo "$t" >>"$WORK/direct.s"
  # Let the direct GET's entry reach the log before the daemon's are counted.
  sleep 0.5
  direct=$(origin_body "$oid")

  s0=$(link_sent)
  in_node curl -sS --max-time 600 --noproxy '' -x "http://${PROXY[resume]}" -o /dev/null "$ORIGIN/$oid" 2>/dev/null &
  first=$!
  # Bounded: the whole object at 1 Mbit/s would be far past this.
  deadline=$((SECONDS + 300))
  while [ $(($(link_sent) - s0)) -lt $((SIZE / 100 * AT)) ]; do
    [ $SECONDS -lt $deadline ] || { echo "bench-resume: the first attempt stalled" >&2; exit 1; }
    sleep 0.02
  done
  # Killed and reaped in one quiet group: the shell would otherwise report the kill on stderr.
  { kill -9 "$DAEMON"; wait "$DAEMON"; } 2>/dev/null || true
  killed_at=$(($(link_sent) - s0))
  if wait "$first"; then echo "bench-resume: the first client's download looked whole after the kill" >&2; exit 1; fi
  node_daemon resume 10 "$CONF"
  DAEMON=${PIDS[-1]}

  t0=$(date +%s%N)
  in_node curl -sS -f --max-time 600 --noproxy '' -x "http://${PROXY[resume]}" -o "$WORK/got" "$ORIGIN/$oid"
  t1=$(date +%s%N)
  [ "$(sha256sum "$WORK/got" | cut -d' ' -f1)" = "$oid" ] || { echo "bench-resume: wrong bytes after the restart" >&2; exit 1; }
  rm -f "$WORK/got" "$WORK/www/$oid"
  sleep 0.5
  both=$(($(origin_body "$oid") - direct))
  ratio=$(awk -v b="$both" -v s="$SIZE" 'BEGIN { printf "%.4f", b / s }')
  echo "$ratio" >>"$WORK/ratio"
  secs "$t0" "$t1" >>"$WORK/second.s"
  awk -v r="$r" -v k="$killed_at" -v s="$SIZE" -v x="$ratio" -v w="$both" -v t2="$(secs "$t0" "$t1")" -v d="$t" \
    'BEGIN { printf "  round %s: killed at %.1f%% on the link; origin sent %.4fx the object over both attempts (%.1f MiB more than once); second attempt %.2f s, direct GET %.2f s\n", r, 100 * k / s, x, (w - s) / 1048576, t2, d }'
done

echo
echo "| resume after SIGKILL at $AT%, ${SIZE_MIB} MiB over $RATE ($ROUNDS rounds, median) | Shoal | baseline, same run | ratio |"
echo "|---|---|---|---|"
awk -v x="$(median <"$WORK/ratio")" 'BEGIN { printf "| origin bytes over both attempts | %.4fx the object | each byte once: 1.0000x | %.4fx |\n", x, x }'
awk -v a="$(median <"$WORK/second.s")" -v d="$(median <"$WORK/direct.s")" -v f="$AT" \
  'BEGIN { printf "| second attempt, restarted daemon | %.2f s | direct GET of the whole object %.2f s | %.2fx (the rest is %d%%) |\n", a, d, a / d, 100 - f }'
