#!/usr/bin/env bash
# A cached object through the Shoal proxy (complete local hit) beside nginx (sendfile on) serving the same
# bytes, both to curl, interleaved round by round in one run. Prints MB/s and server CPU seconds per GiB
# (utime+stime of the serving process from /proc, so curl's own CPU is not counted) per run, then the
# medians and Shoal's as a ratio to nginx's. (This script also decided that the proxy has one responder:
# a sendfile responder for local hits measured slower than hyper here; see docs/benchmarks.md.)
#
# Usage: scripts/bench-proxy-hit.sh [SIZE_MIB=1024] [RUNS=5]
# Needs: nginx (Debian package nginx-light or nginx), curl, a release build (cargo build --release).
# Everything listens on 127.0.0.50/51; every process it starts is stopped on exit.
# Server CPU for shoal is the whole daemon process (scheduler client, GC included); for nginx its worker.
# On loopback the sender's CPU includes most of the TCP stack of both ends, and curl is the limit for MB/s
# on small machines: compare CPU per GiB first, and re-measure on a real NIC before drawing conclusions.
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=${SHOAL:-$ROOT/target/release/shoal}
WORK=$(mktemp -d /tmp/shoal-bench-hit.XXXXXX)
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
tck=$(getconf CLK_TCK)

echo "== making a ${SIZE_MIB} MiB object"
# nginx workers run unprivileged: the directory and object must be world-readable.
chmod 755 "$WORK"
mkdir -p "$WORK/www"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/obj"
OID=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
mv "$WORK/obj" "$WORK/www/$OID"
chmod 644 "$WORK/www/$OID"

NGX_IP=127.0.0.50
NGX_PORT=$(free_port $NGX_IP)
serve_nginx "" "$NGX_IP:$NGX_PORT" "access_log off; tcp_nopush on;"
URL="http://$NGX_IP:$NGX_PORT/$OID"

declare -A PROXY DAEMON
start_daemon() { # $1 = label, $2 = ip
    local pp up mp
    pp=$(free_port "$2"); up=$(free_port "$2"); mp=$(free_port "$2")
    PROXY[$1]="$2:$pp"
    SHOAL_LOG=info,shoal=debug "$SHOAL" daemon --workers 1 --proxy-addr "${PROXY[$1]}" --upload-addr "$2:$up" \
        --metrics-addr "$2:$mp" --data-dir "$WORK/$1" 2>"$WORK/daemon-$1.log" &
    DAEMON[$1]=$!
    PIDS+=("$!")
    for _ in $(seq 100); do grep -q "daemon started" "$WORK/daemon-$1.log" 2>/dev/null && break; sleep 0.1; done
}

source_of() { # $1 = label
    curl -sS --noproxy '' -x "http://${PROXY[$1]}" -o /dev/null -D - "$URL" | tr -d '\r' |
        awk -F': ' 'tolower($1)=="x-shoal-source" {print $2}'
}

run() { # $1 label, $2 pid to charge, then curl args; appends "MB/s CPU" to $WORK/$1.runs
    local label=$1 pid=$2; shift 2
    local c0 c1 speed
    c0=$(cpu_ticks "$pid")
    speed=$(curl -sS --noproxy '' -o /dev/null -w '%{speed_download}' "$@")
    c1=$(cpu_ticks "$pid")
    awk -v s="$speed" -v c=$((c1 - c0)) -v t="$tck" -v m="$SIZE_MIB" \
        'BEGIN { printf "%.0f %.3f\n", s/1e6, c/t/(m/1024) }' | tee -a "$WORK/$label.runs" |
        awk -v l="$label" '{ printf "%-10s %8d MB/s   server CPU %.3f s/GiB\n", l, $1, $2 }'
}

test "$(curl -sS --noproxy '' -o /dev/null -w '%{http_code}' "$URL")" = 200 || { echo "nginx does not serve the object"; exit 1; }
start_daemon shoal 127.0.0.51
echo "== filling the cache through the proxy (miss), then waiting for a local hit"
echo "first: $(source_of shoal)"
for _ in $(seq 60); do [ "$(source_of shoal)" = local ] && break; sleep 1; done
test "$(source_of shoal)" = local || { echo "no local hit after 60 s"; exit 1; }
# Warm every file in the page cache once so no side pays for disk reads.
cat "$WORK/www/$OID" >/dev/null
curl -sS --noproxy '' -x "http://${PROXY[shoal]}" -o /dev/null "$URL"

echo "== $RUNS rounds, each: nginx, then shoal"
for _ in $(seq "$RUNS"); do
    run nginx "$NGX_WORKER" "$URL"
    run shoal "${DAEMON[shoal]}" -x "http://${PROXY[shoal]}" "$URL"
done

echo "== medians (ratio to nginx in the same run)"
med() { awk -v c="$2" '{print $c}' "$WORK/$1.runs" | median; }
nmbs=$(med nginx 1); ncpu=$(med nginx 2)
for l in nginx shoal; do
    awk -v l="$l" -v m="$(med "$l" 1)" -v c="$(med "$l" 2)" -v nm="$nmbs" -v nc="$ncpu" \
        'BEGIN { printf "%-10s %6d MB/s (%.2fx)   %.3f s/GiB (%.2fx)\n", l, m, m/nm, c, (nc > 0 ? c/nc : 0) }'
done
