#!/usr/bin/env bash
# Does the daemon give memory back? One daemon on loopback, nginx as the origin; wrk holds CONNS
# connections through the proxy for SECS seconds, half the requests a cached 1 MiB object (a local hit),
# half a small file that passes through to the origin. The daemon's RssAnon (from /proc/PID/status) is
# sampled 10 times a second: before, its peak during the run, and 10 s after the run ended, beside the
# nginx worker's own RssAnon for the same requests made directly (the baseline).
#
#   scripts/bench-rss.sh [-c CONNS=1000] [-d SECS=60] [-o OUTDIR]
#
# Needs nginx and wrk (installed with apt-get when missing, as root), curl, a release build. Listens on
# 127.0.0.7x only; every process is stopped and every file removed on exit. Writes results.md to OUTDIR
# (default /var/tmp/shoal-bench/bench-rss). Goal (issue 13): back under 128 MiB after the run.
set -euo pipefail

CONNS=1000
SECS=60
OUT=/var/tmp/shoal-bench/bench-rss
while [ $# -gt 0 ]; do
  case "$1" in
    -c) CONNS=$2; shift 2 ;;
    -d) SECS=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-c CONNS] [-d SECS] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for tool in nginx:nginx-light wrk:wrk; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "bench-rss: ${tool%%:*} missing (apt-get install ${tool##*:}, as root)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${tool##*:}" >/dev/null
  fi
done
cargo build --release -q
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/shoal-bench-rss.XXXXXX)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
ulimit -n $((CONNS * 4 + 1024)) 2>/dev/null || true

chmod 755 "$WORK"
mkdir -p "$WORK/www"
head -c $((1 << 20)) /dev/urandom >"$WORK/obj"
OID=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
mv "$WORK/obj" "$WORK/www/$OID"
echo "pass-through" >"$WORK/www/small.txt"
chmod 644 "$WORK/www"/*

NGX=127.0.0.70:$(free_port 127.0.0.70)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
worker_rlimit_nofile $((CONNS * 4 + 1024));
events { worker_connections $((CONNS * 2 + 256)); }
http { access_log off; sendfile on; keepalive_requests 100000; server { listen $NGX; root $WORK/www; } }
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/nginx-start.log" &
PIDS+=($!)
for i in $(seq 100); do
  [ -s "$WORK/nginx.pid" ] && pgrep -P "$(cat "$WORK/nginx.pid")" >/dev/null && break
  [ "$i" = 100 ] && { echo "bench-rss: nginx did not start" >&2; exit 1; }
  sleep 0.1
done
NGX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1)

PROXY=127.0.0.71:$(free_port 127.0.0.71)
"$BIN" daemon --data-dir "$WORK/data" --proxy-addr "$PROXY" --upload-addr "127.0.0.71:$(free_port 127.0.0.71)" \
  --metrics-addr "127.0.0.71:$(free_port 127.0.0.71)" 2>"$WORK/daemon.log" >/dev/null &
PIDS+=($!)
DPID=$!
for i in $(seq 100); do grep -q "daemon started" "$WORK/daemon.log" 2>/dev/null && break; sleep 0.1; done
HIT="http://$NGX/$OID"
PASS="http://$NGX/small.txt"
curl -sS -f --noproxy '' -x "http://$PROXY" -o /dev/null "$HIT"   # the object is now cached
for i in $(seq 50); do
  src=$(curl -sS --noproxy '' -x "http://$PROXY" -o /dev/null -D - "$HIT" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-shoal-source" {print $2}')
  [ "$src" = local ] && break
  sleep 0.2
done

# Absolute-form targets through the proxy, alternating a hit and a pass-through on every connection.
cat >"$WORK/mixed.lua" <<EOF
local n = 0
request = function()
  n = n + 1
  local url = (n % 2 == 0) and "$HIT" or "$PASS"
  return wrk.format("GET", url, { ["Host"] = "$NGX" })
end
EOF
# The same paths straight from nginx, for the baseline.
cat >"$WORK/direct.lua" <<EOF
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", (n % 2 == 0) and "/$OID" or "/small.txt")
end
EOF
rss_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# run LABEL PID TARGET SCRIPT: wrk for SECS while sampling PID; appends "label before peak after reqs/s"
run() {
  local before peak=0 v after wpid rate
  before=$(rss_kib "$2")
  wrk -t 2 -c "$CONNS" -d "${SECS}s" --timeout 30s -s "$4" "$3" >"$WORK/wrk-$1.log" 2>&1 &
  wpid=$!
  PIDS+=($wpid)
  # Bounded by wrk's own duration (plus its timeout).
  for _ in $(seq $(((SECS + 60) * 10))); do
    v=$(rss_kib "$2"); [ "$v" -gt "$peak" ] && peak=$v
    kill -0 "$wpid" 2>/dev/null || break
    sleep 0.1
  done
  wait "$wpid" || { echo "bench-rss: wrk failed: $(tail -n 3 "$WORK/wrk-$1.log")" >&2; exit 1; }
  sleep 10
  after=$(rss_kib "$2")
  rate=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk-$1.log")
  echo "$1 $before $peak $after $rate $(grep -c 'Non-2xx\|Socket errors' "$WORK/wrk-$1.log" || true)" >>"$WORK/rss"
}
: >"$WORK/rss"
echo "== $CONNS connections for $SECS s: direct from nginx, then through Shoal's proxy (half hits, half pass-through)"
run nginx "$NGX_WORKER" "http://$NGX" "$WORK/direct.lua"
run shoal "$DPID" "http://$PROXY" "$WORK/mixed.lua"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
{
  echo
  echo "| $CONNS connections, $SECS s, 1 MiB hits and small pass-throughs | RssAnon before | peak | 10 s after | requests/s | wrk errors lines |"
  echo "|---|---|---|---|---|---|"
  while read -r l b p a r e; do
    echo "| $l | $(mib "$b") MiB | $(mib "$p") MiB | $(mib "$a") MiB | $r | $e |"
  done <"$WORK/rss"
  echo
  echo "Goal: Shoal back under 128 MiB after the run. nginx serves the same paths directly (the baseline)."
} | tee "$OUT/results.md"
echo "results: $OUT/results.md"
