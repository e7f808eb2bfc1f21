#!/usr/bin/env bash
# A cold download from an origin that caps each connection's rate (as S3, GCS, CDNs and Git LFS storage
# do): nginx with `limit_rate` in its own namespace behind a 1 Gbit tbf link, and a node namespace with
# two single-node daemons, one allowed several ranged connections per download (the default,
# engine.origin_connections 4) and one held to a single GET (origin_connections 1). Each round fetches a
# fresh object three ways, interleaved: a direct GET (curl), through each daemon. Prints per-way medians in
# seconds and each as a ratio to the direct GET, as markdown.
#
#   sudo scripts/bench-origin-cap.sh [-r ROUNDS=3] [-s SIZE_MIB=256] [--cap 10m] [--connections 4]
#
# Needs root (ip netns, tc), nginx (Debian nginx-light), curl, a release build. Namespaces and processes
# are removed on exit, even when interrupted.
set -euo pipefail

ROUNDS=3
SIZE_MIB=256
CAP=10m
CONNS=4
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    -s) SIZE_MIB=$2; shift 2 ;;
    --cap) CAP=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    *) echo "usage: $0 [-r ROUNDS] [-s SIZE_MIB] [--cap RATE] [--connections N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-origin-cap: needs root (ip netns, tc)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "bench-origin-cap: needs nginx (apt-get install nginx-light)" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -q
BIN=$ROOT/target/release/shoal
WORK=$(mktemp -d /var/tmp/shoal-bench-cap.XXXXXX)
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"

P=shc$$                     # namespace prefix, unique per run
NET=10.215.0                # addresses exist only inside this run's namespaces
netns_pair 1gbit

echo "== origin: nginx, limit_rate $CAP per connection; $ROUNDS rounds x 3 objects of $SIZE_MIB MiB"
chmod 755 "$WORK"
mkdir -p "$WORK/www"
for i in $(seq $((ROUNDS * 3))); do
  head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/obj"
  oid=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
  mv "$WORK/obj" "$WORK/www/$oid"
  chmod 644 "$WORK/www/$oid"
  echo "$oid" >>"$WORK/oids"
done
origin_nginx "$NET.1:8080" "" "limit_rate $CAP;"
ORIGIN="http://$NET.1:8080"

declare -A PROXY
node_daemon ranged 10 "engine: {origin_connections: $CONNS}"
node_daemon single 11 "engine: {origin_connections: 1}"

timed() { # $1 label, $2 oid, then curl args: appends seconds to $WORK/$1.s after checking the sha256
  local label=$1 oid=$2; shift 2
  local t got
  t=$(in_node curl -sS --noproxy '' -o "$WORK/got" -w '%{time_total}' "$@" "$ORIGIN/$oid")
  got=$(sha256sum "$WORK/got" | cut -d' ' -f1)
  [ "$got" = "$oid" ] || { echo "$label: wrong bytes" >&2; exit 1; }
  echo "$t" >>"$WORK/$label.s"
  printf '  %-8s %7.2f s\n' "$label" "$t"
}
mapfile -t OIDS <"$WORK/oids"
for r in $(seq 0 $((ROUNDS - 1))); do
  echo "round $((r + 1))"
  timed direct "${OIDS[$((r * 3))]}"
  timed ranged "${OIDS[$((r * 3 + 1))]}" -x "http://${PROXY[ranged]}"
  timed single "${OIDS[$((r * 3 + 2))]}" -x "http://${PROXY[single]}"
done

echo
echo "| cold ${SIZE_MIB} MiB, origin capped at $CAP per connection | median (s) | vs direct GET |"
echo "|---|---|---|"
base=$(median <"$WORK/direct.s")
for l in direct ranged single; do
  m=$(median <"$WORK/$l.s")
  awk -v l="$l" -v m="$m" -v b="$base" 'BEGIN { printf "| %s | %.2f | %.2fx |\n", l, m, m / b }'
done
echo
echo "ranged: through Shoal, origin_connections $CONNS; single: through Shoal, one GET (origin_connections 1)."
