#!/usr/bin/env bash
# Two daemons, X and Y, fetching cold objects from nginx on loopback in interleaved rounds (X first in odd
# rounds, Y first in even ones), with the bare verifying relay (examples/relay_floor.rs) beside them. For
# a change whose effect is smaller than this VM's run-to-run spread: the same machine hour runs both sides.
# On this 2-vCPU VM one configuration measured 1.10-1.47 s per cold GiB across runs; interleaved, two
# daemons of one build (an A/A run, 6 rounds) differed by 1.07x in time and 1.09x in machine CPU, so a
# smaller difference here is noise.
#
# Per fetch: seconds, the whole machine's busy CPU seconds (every process: nginx, curl, the kernel's
# softirqs, the daemon), the daemon's own CPU seconds, and the disk's writes (from /sys/block/DEV/stat).
# A daemon whose own CPU equals the relay's but whose time does not is waiting, not working.
#
#   scripts/bench-ab.sh [-s SIZE_MIB=1024] [-r ROUNDS=6] [-o OUTDIR]
#     X_BIN, Y_BIN   the builds (default: this checkout's release build for both)
#     X_YAML, Y_YAML each daemon's config file text (default: none), e.g. Y_YAML=$'engine:\n  origin_connections: 1'
#
# Needs nginx (installed with apt-get when missing, as root), curl, python3, a release build. Listens on
# 127.0.0.8x only; every process is stopped and every file removed on exit, even when interrupted. Needs
# about 3 × SIZE of disk under /var/tmp. Writes results.md to OUTDIR (default /var/tmp/shoal-bench/bench-ab).
set -euo pipefail

SIZE_MIB=1024
ROUNDS=6
OUT=/var/tmp/shoal-bench/bench-ab
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZE_MIB=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-s SIZE_MIB] [-r ROUNDS] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "bench-ab: nginx missing (apt-get install nginx-light, as root)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release -q
cargo build --release -q --example relay_floor
X_BIN=${X_BIN:-$ROOT/target/release/shoal}
Y_BIN=${Y_BIN:-$ROOT/target/release/shoal}
mkdir -p "$OUT"

WORK=$(mktemp -d /var/tmp/shoal-bench-ab.XXXXXX)
"$X_BIN" secret generate >"$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
TCK=$(getconf CLK_TCK)
DISK=$(basename "$(df --output=source "$WORK" | tail -1)")
[ -r "/sys/block/$DISK/stat" ] || DISK=""

chmod 755 "$WORK"
mkdir -p "$WORK/www"
NGX=127.0.0.80:$(free_port 127.0.0.80)
serve_nginx "" "$NGX" "access_log off; tcp_nopush on;"
RELAY=127.0.0.83:$(free_port 127.0.0.83)
relay_floor "" "$RELAY" "$NGX"

X_PID=""; Y_PID=""; X_PROXY=""; Y_PROXY=""
printf '%s\n' "${X_YAML:-workers: 1}" >"$WORK/X.yaml"
printf '%s\n' "${Y_YAML:-workers: 1}" >"$WORK/Y.yaml"
DAEMON_BIN=$X_BIN start_daemon X 127.0.0.81 --workers 1 --config "$WORK/X.yaml"
DAEMON_BIN=$Y_BIN start_daemon Y 127.0.0.82 --workers 1 --config "$WORK/Y.yaml"

machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
disk_writes() { if [ -n "$DISK" ]; then awk '{ print $5, $8 }' "/sys/block/$DISK/stat"; else echo "0 0"; fi; }
# fetch LABEL PID OID [PROXY]: appends "label seconds machine_cpu_s process_cpu_s writes write_ms" to $WORK/res
fetch() {
  local px=(--noproxy '*') url="http://$NGX/$3" m0 c0 d0 t m1 c1 d1
  if [ -n "${4:-}" ]; then px=(--noproxy '' -x "http://$4"); else url="http://$RELAY/$3"; fi
  m0=$(machine_ticks); c0=$(cpu_ticks "$2"); d0=$(disk_writes)
  t=$(timeout 600 curl -sS -f "${px[@]}" -o /dev/null -w '%{time_total}' "$url") \
    || { echo "bench-ab: $1 GET failed" >&2; exit 1; }
  m1=$(machine_ticks); c1=$(cpu_ticks "$2"); d1=$(disk_writes)
  awk -v l="$1" -v t="$t" -v m=$((m1 - m0)) -v c=$((c1 - c0)) -v k="$TCK" -v d0="$d0" -v d1="$d1" -v s="$SIZE_MIB" 'BEGIN {
    split(d0, a, " "); split(d1, b, " "); g = s / 1024
    printf "%s %.3f %.2f %.2f %d %d\n", l, t, m / k / g, c / k / g, b[1] - a[1], b[2] - a[2] }' | tee -a "$WORK/res"
}

echo "== warming up X and Y (each measures its hash rate on its first download)"
oid=$(make_obj "$SIZE_MIB")
fetch warm "$X_PID" "$oid" "$X_PROXY" >/dev/null
fetch warm "$Y_PID" "$oid" "$Y_PROXY" >/dev/null
rm -f "$WORK/www/$oid"
echo "== $ROUNDS rounds of $SIZE_MIB MiB: X, Y and the relay, each on its own object"
for r in $(seq "$ROUNDS"); do
  o1=$(make_obj "$SIZE_MIB"); o2=$(make_obj "$SIZE_MIB")
  cat "$WORK/www/$o1" "$WORK/www/$o2" >/dev/null   # the origin's copies in the page cache
  sync; sleep 1
  if [ $((r % 2)) = 1 ]; then
    fetch X "$X_PID" "$o1" "$X_PROXY"; sync; sleep 1; fetch Y "$Y_PID" "$o2" "$Y_PROXY"
  else
    fetch Y "$Y_PID" "$o1" "$Y_PROXY"; sync; sleep 1; fetch X "$X_PID" "$o2" "$X_PROXY"
  fi
  sync; sleep 1
  fetch relay "$RELAY_PID" "$o1"
  rm -f "$WORK/www/$o1" "$WORK/www/$o2"
done

med() { awk -v l="$1" -v k="$2" '$1 == l { print $k }' "$WORK/res" | median; }
{
  echo
  echo "X: ${X_BIN}${X_YAML:+ with $(printf '%s' "$X_YAML" | tr '\n' ' ')}"
  echo "Y: ${Y_BIN}${Y_YAML:+ with $(printf '%s' "$Y_YAML" | tr '\n' ' ')}"
  echo
  echo "| cold $SIZE_MIB MiB on loopback, median of $ROUNDS | seconds | ÷ relay | machine CPU s/GiB | process CPU s/GiB | disk writes (ms writing) |"
  echo "|---|---|---|---|---|---|"
  rl=$(med relay 2)
  for l in X Y relay; do
    awk -v l="$l" -v t="$(med "$l" 2)" -v rl="$rl" -v m="$(med "$l" 3)" -v c="$(med "$l" 4)" -v w="$(med "$l" 5)" -v wm="$(med "$l" 6)" \
      'BEGIN { printf "| %s | %.3f | %.2f× | %.2f | %.2f | %d (%d) |\n", l, t, t / rl, m, c, w, wm }'
  done
  echo
  echo "Y ÷ X: time $(awk -v a="$(med Y 2)" -v b="$(med X 2)" 'BEGIN { printf "%.3f", a / b }')×, machine CPU $(awk -v a="$(med Y 3)" -v b="$(med X 3)" 'BEGIN { printf "%.3f", a / b }')×."
  echo "Per fetch: $(awk '{ printf "%s=%.2f ", $1, $2 }' "$WORK/res")"
} | tee "$OUT/results.md"
echo "results: $OUT/results.md"
