#!/usr/bin/env bash
# A cached object through the Shoal proxy (complete local hit) vs nginx (sendfile on) serving the same
# bytes, both to curl, in the same run. Prints MB/s per run and server CPU seconds per GiB (utime+stime
# of the serving process from /proc, so curl's own CPU is not counted).
#
# Usage: scripts/bench-proxy-hit.sh [SIZE_MIB=1024] [RUNS=3]
# Needs: nginx (Debian package nginx-light or nginx), curl, a release build (cargo build --release).
# Everything listens on 127.0.0.5x; every process it starts is stopped on exit.
# Server CPU for shoal is the whole daemon process (scheduler client, GC included); for nginx its worker.
# curl is the bottleneck for MB/s on small machines: compare CPU per GiB first.
#
# Figures, 2026-11-28, this 2-vCPU VM, 1 GiB, 4 runs each, load average ~2 (other engineers' builds idle):
#   nginx sendfile 1952-2124 MB/s, 0.50-0.53 s CPU/GiB; shoal zero-copy 1807-1897 MB/s, 0.56-0.57 s/GiB;
#   shoal via hyper (--proxy-zero-copy false) 2020-2069 MB/s, 0.51-0.52 s/GiB.
# On loopback the sender's CPU includes most of the TCP stack for both ends, so sendfile saves little here;
# under heavy load (average 7-11) the CPU split was unstable (nginx 0.10-0.12, zero-copy 0.06-0.25, hyper
# 0.46-0.63 s/GiB). Re-measure on a real NIC before drawing conclusions.
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=${SHOAL:-$ROOT/target/release/shoal}
TMP=$(mktemp -d /tmp/shoal-bench-hit.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -f "$TMP/nginx.pid" ]; then kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true; fi
    sleep 0.2
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

echo "== making a ${SIZE_MIB} MiB object"
# nginx workers run unprivileged: the directory and object must be world-readable.
chmod 755 "$TMP"
mkdir -p "$TMP/www"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$TMP/obj"
OID=$(sha256sum "$TMP/obj" | cut -d' ' -f1)
mv "$TMP/obj" "$TMP/www/$OID"
chmod 644 "$TMP/www/$OID"

NGX_IP=127.0.0.50
NGX_PORT=$(free_port $NGX_IP)
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen $NGX_IP:$NGX_PORT;
        root $TMP/www;
    }
}
EOF
nginx -c "$TMP/nginx.conf" -p "$TMP" &
PIDS+=($!)
sleep 0.5
NGX_WORKER=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -1)
URL="http://$NGX_IP:$NGX_PORT/$OID"

start_daemon() { # $1 = zero-copy true|false
    local ip=127.0.0.51 pp up mp
    pp=$(free_port $ip); up=$(free_port $ip); mp=$(free_port $ip)
    PROXY="$ip:$pp"
    SHOAL_LOG=info,shoal=debug "$SHOAL" daemon --workers 1 --proxy-addr "$PROXY" --upload-addr "$ip:$up" \
        --metrics-addr "$ip:$mp" --data-dir "$TMP/shoal" --proxy-zero-copy "$1" 2>"$TMP/daemon-$1.log" &
    DAEMON=$!
    PIDS+=("$DAEMON")
    for _ in $(seq 100); do grep -q "daemon started" "$TMP/daemon-$1.log" 2>/dev/null && break; sleep 0.1; done
}

source_of() { curl -sS --noproxy '' -x "http://$PROXY" -o /dev/null -D - "$URL" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-shoal-source" {print $2}'; }

run() { # $1 label, $2 pid to charge, then curl args
    local label=$1 pid=$2; shift 2
    local c0 c1 speed
    c0=$(cpu_ticks "$pid")
    speed=$(curl -sS --noproxy '' -o /dev/null -w '%{speed_download}' "$@")
    c1=$(cpu_ticks "$pid")
    awk -v l="$label" -v s="$speed" -v c=$((c1 - c0)) -v t="$tck" -v m="$SIZE_MIB" \
        'BEGIN { printf "%-22s %8.0f MB/s   server CPU %.3f s/GiB\n", l, s/1e6, c/t/(m/1024) }'
}

start_daemon true
echo "== filling the cache through the proxy (miss), then waiting for a local hit"
test "$(curl -sS --noproxy '' -o /dev/null -w '%{http_code}' "$URL")" = 200 || { echo "nginx does not serve the object"; exit 1; }
echo "first: $(source_of)"
for _ in $(seq 60); do [ "$(source_of)" = local ] && break; sleep 1; done
test "$(source_of)" = local || { echo "no local hit after 60 s"; exit 1; }
# Warm both files in the page cache once so neither side pays for disk reads.
cat "$TMP/www/$OID" >/dev/null
curl -sS --noproxy '' -o /dev/null "$URL"

echo "== $RUNS runs each, alternating"
for i in $(seq "$RUNS"); do
    run "nginx sendfile #$i" "$NGX_WORKER" "$URL"
    run "shoal zero-copy #$i" "$DAEMON" -x "http://$PROXY" "$URL"
done
echo "zero-copy hits logged: $(grep -c "zero-copy hit sent" "$TMP/daemon-true.log" || true)"
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true

start_daemon false
test "$(source_of)" = local || { echo "no local hit after restart"; exit 1; }
for i in $(seq "$RUNS"); do
    run "shoal via hyper #$i" "$DAEMON" -x "http://$PROXY" "$URL"
done
