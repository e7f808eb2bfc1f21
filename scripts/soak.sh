#!/usr/bin/env bash
# Soak: one daemon under a mixed load for MINUTES through CONNS connections (wrk), with GC evicting under a
# small quota and a SIGHUP every minute. nginx is the origin. The mix, per request: 55 % hits on 8 cached
# 1 MiB objects named by their sha256 (Git LFS style), 15 % Range requests on them (206 expected), 5 % cold
# misses on URLs never asked before (a rule makes them tasks; 256 KiB each, so the store keeps filling and
# GC keeps evicting), 25 % small pass-through requests.
#
# Every 5 s: the daemon's RSS and RssAnon, open descriptors (and how many are sockets: the rest are the
# files of cached tasks, bounded by the quota), threads and responses per second (from its
# /metrics). After the load, 60 s more of samples show what an idle daemon gives back. At the end every
# task the daemon holds complete is read back through the proxy and its sha256 compared with the origin's
# file; every hit object too. Writes samples.csv, soak.svg and results.md to OUTDIR.
#
#   scripts/soak.sh [-m MINUTES=10] [-c CONNS=1000] [-o OUTDIR=/var/tmp/shoal-bench/soak]
#
# Needs nginx, wrk and python3 (nginx and wrk installed with apt-get when missing, as root). Listens on
# 127.0.0.8x only; every process is stopped and every file removed on exit (the results stay). Exits
# non-zero when an object read back is wrong or the daemon died; error counts are figures to report.
set -euo pipefail

MINUTES=10
CONNS=1000
OUT=/var/tmp/shoal-bench/soak
while [ $# -gt 0 ]; do
  case "$1" in
    -m) MINUTES=$2; shift 2 ;;
    -c) CONNS=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-m MINUTES] [-c CONNS] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for tool in nginx:nginx-light wrk:wrk; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "soak: ${tool%%:*} missing (apt-get install ${tool##*:}, as root)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${tool##*:}" >/dev/null
  fi
done
cargo build --release -q
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/shoal-soak.XXXXXX)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
ulimit -n $((CONNS * 4 + 4096)) 2>/dev/null || true
chmod 755 "$WORK"
mkdir -p "$WORK/www"
OIDS=()
for _ in $(seq 8); do
  head -c $((1 << 20)) /dev/urandom >"$WORK/obj"
  oid=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
  mv "$WORK/obj" "$WORK/www/$oid"
  OIDS+=("$oid")
done
head -c $((256 << 10)) /dev/urandom >"$WORK/www/cold.bin"
COLD_SHA=$(sha256sum "$WORK/www/cold.bin" | cut -d' ' -f1)
echo "pass-through" >"$WORK/www/small.txt"
chmod 644 "$WORK/www"/*

NGX=127.0.0.80:$(free_port 127.0.0.80)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
worker_rlimit_nofile $((CONNS * 4 + 1024));
events { worker_connections $((CONNS * 2 + 256)); }
http {
  access_log off; sendfile on; keepalive_requests 1000000;
  server {
    listen $NGX; root $WORK/www;
    # Every /cold/<name> is the same bytes under a URL nobody asked for before: a new task each time.
    location /cold/ { try_files /cold.bin =404; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/nginx-start.log" &
PIDS+=($!)
for i in $(seq 100); do
  [ -s "$WORK/nginx.pid" ] && pgrep -P "$(cat "$WORK/nginx.pid")" >/dev/null && break
  [ "$i" = 100 ] && { echo "soak: nginx did not start" >&2; exit 1; }
  sleep 0.1
done

cat >"$WORK/shoal.yaml" <<EOF
proxy:
  rules:
    - regex: '/cold/'
storage:
  quota: 64MiB
  gc_interval: 2s
EOF
PROXY=127.0.0.81:$(free_port 127.0.0.81)
METRICS=127.0.0.81:$(free_port 127.0.0.81)
"$BIN" daemon --config "$WORK/shoal.yaml" --data-dir "$WORK/data" --proxy-addr "$PROXY" \
  --upload-addr "127.0.0.81:$(free_port 127.0.0.81)" --metrics-addr "$METRICS" 2>"$WORK/daemon.log" >/dev/null &
PIDS+=($!)
DPID=$!
for i in $(seq 100); do grep -q "daemon started" "$WORK/daemon.log" 2>/dev/null && break; sleep 0.1; done
for oid in "${OIDS[@]}"; do curl -sS -f --noproxy '' -x "http://$PROXY" -o /dev/null "http://$NGX/$oid"; done

lua_list=$(printf '"%s",' "${OIDS[@]}")
cat >"$WORK/mix.lua" <<EOF
local oids = { ${lua_list%,} }
local counter = 0
local tid = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
  math.randomseed(tid * 7919 + os.time())
end
request = function()
  counter = counter + 1
  local r = math.random(100)
  local h = { ["Host"] = "$NGX" }
  if r <= 55 then
    return wrk.format("GET", "http://$NGX/" .. oids[math.random(#oids)], h)
  elseif r <= 70 then
    local a = math.random(0, 1048575)
    local b = math.min(1048575, a + math.random(0, 262143))
    h["Range"] = "bytes=" .. a .. "-" .. b
    return wrk.format("GET", "http://$NGX/" .. oids[math.random(#oids)], h)
  elseif r <= 75 then
    return wrk.format("GET", "http://$NGX/cold/" .. tid .. "-" .. counter, h)
  else
    return wrk.format("GET", "http://$NGX/small.txt", h)
  end
end
EOF

# Responses so far, then the allocator's live and free-but-kept bytes and the piece buffers (KiB), comma-separated.
scrape() {
  curl -s --noproxy '' "http://$METRICS/metrics" | awk '
    /^shoal_proxy_responses_total/ {r += $NF}
    /^shoal_heap_bytes\{state="in_use"\}/ {u = $NF}
    /^shoal_heap_bytes\{state="free"\}/ {f = $NF}
    /^shoal_piece_buffer_bytes/ {b += $NF}
    END {printf "%d,%d,%d,%d\n", r, u / 1024, f / 1024, b / 1024}'
}
status_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sample() {
  local now r
  now=$(date +%s.%N); r=$(scrape)
  local socks
  # Descriptors open and close while find walks them: a vanished entry is not an error here.
  socks=$(find "/proc/$DPID/fd" -lname 'socket:*' 2>/dev/null | wc -l || true)
  echo "$(echo "$now - $T0" | bc),$(status_kib "$DPID" VmRSS),$(status_kib "$DPID" RssAnon),$(ls "/proc/$DPID/fd" 2>/dev/null | wc -l || true),$socks,$(status_kib "$DPID" Threads),$r,$1" >>"$OUT/samples.csv"
}
echo "seconds,rss_kib,anon_kib,fds,sockets,threads,responses,heap_in_use_kib,heap_free_kib,piece_buffer_kib,phase" >"$OUT/samples.csv"
T0=$(date +%s.%N)
sample idle
SECS=$((MINUTES * 60))
wrk -t 2 -c "$CONNS" -d "${SECS}s" --timeout 30s -s "$WORK/mix.lua" "http://$PROXY" >"$WORK/wrk.log" 2>&1 &
WPID=$!
PIDS+=($WPID)
# Bounded: at most the run plus wrk's timeout, one sample per 5 s, one SIGHUP per 60 s.
for i in $(seq $(((SECS + 60) / 5))); do
  sleep 5
  kill -0 "$WPID" 2>/dev/null || break
  kill -0 "$DPID" 2>/dev/null || { echo "soak: the daemon died" >&2; exit 1; }
  sample load
  [ $((i % 12)) = 0 ] && kill -HUP "$DPID"
done
wait "$WPID" || true
for _ in $(seq 12); do sleep 5; sample after; done
# Where the idle daemon's anonymous memory is: its 20 largest mappings by Anonymous KiB.
awk '/^[0-9a-f]+-[0-9a-f]+ / {m = $1 " " $6} /^Anonymous:/ && $2 > 0 {print $2, m}' "/proc/$DPID/smaps" |
  sort -rn | head -20 >"$OUT/smaps-after.txt" || true

# Every complete task read back through the proxy, against the origin's bytes.
curl -s --noproxy '' "http://$METRICS/tasks" >"$WORK/tasks.json"
python3 - "$WORK/tasks.json" "$COLD_SHA" >"$WORK/urls" <<'EOF'
import json, sys
tasks, cold = json.load(open(sys.argv[1])), sys.argv[2]
for t in tasks:
    if t["state"] != "complete":
        continue
    name = t["url"].rsplit("/", 1)[-1]
    print(t["url"], cold if "/cold/" in t["url"] else name)
EOF
for oid in "${OIDS[@]}"; do echo "http://$NGX/$oid $oid"; done >>"$WORK/urls"
verified=0 wrong=0
while read -r url want; do
  got=$(curl -sS -f --noproxy '' -x "http://$PROXY" "$url" | sha256sum | cut -d' ' -f1) || got=failed
  if [ "$got" = "$want" ]; then verified=$((verified + 1)); else wrong=$((wrong + 1)); echo "WRONG: $url" >&2; fi
done <"$WORK/urls"

reloads=$(grep -c "SIGHUP: rules and limits reloaded" "$WORK/daemon.log" || true)
evictions=$(curl -s --noproxy '' "http://$METRICS/metrics" | awk '/^shoal_storage_evictions_total/ {s += $NF} END {print s + 0}')
statuses=$(curl -s --noproxy '' "http://$METRICS/metrics" | grep '^shoal_proxy_responses_total' | tr '\n' ' ')
python3 "$ROOT/scripts/soak_chart.py" "$OUT/samples.csv" "$OUT/soak.svg" "soak: $CONNS connections, $MINUTES min"
python3 - "$OUT/samples.csv" "$WORK/wrk.log" "$verified" "$wrong" "$reloads" "$evictions" "$statuses" \
  "$CONNS" "$MINUTES" >"$OUT/results.md" <<'EOF'
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
wrk = open(sys.argv[2]).read()
verified, wrong, reloads, evictions, statuses, conns, minutes = sys.argv[3:10]
mib = lambda kib: f"{int(kib) / 1024:.1f}"
load = [r for r in rows if r["phase"] == "load"]
first, last = rows[0], rows[-1]
mid = load[len(load) // 2] if load else first
end_load = load[-1] if load else first
def num(pat):
    m = re.search(pat, wrk)
    return m.group(1) if m else "0"
requests, rate = num(r"(\d+) requests in"), num(r"Requests/sec:\s+([\d.]+)")
non2xx = num(r"Non-2xx or 3xx responses: (\d+)")
m = re.search(r"Socket errors: (.*)", wrk)
sockerr = m.group(1) if m else "none"
print(f"| {conns} connections, {minutes} min | start | middle of the load | end of the load | peak | 60 s after |")
print("|---|---|---|---|---|---|")
for key, name in (("rss_kib", "RSS MiB"), ("anon_kib", "RssAnon MiB"), ("heap_in_use_kib", "heap in use MiB"),
                  ("heap_free_kib", "heap freed, kept MiB"), ("piece_buffer_kib", "piece buffers MiB")):
    peak = max(int(r[key]) for r in rows)
    print(f"| {name} | {mib(first[key])} | {mib(mid[key])} | {mib(end_load[key])} | {mib(peak)} | {mib(last[key])} |")
for key in ("fds", "sockets", "threads"):
    print(f"| {key} | {first[key]} | {mid[key]} | {end_load[key]} | {max(int(r[key]) for r in rows)} | {last[key]} |")
print()
print(f"- requests: {requests}, {rate} per second (wrk)")
print(f"- wrk non-2xx responses: {non2xx}; socket errors: {sockerr}")
print(f"- the daemon's responses by status: {statuses}")
print(f"- SIGHUP reloads logged: {reloads}; GC evictions: {evictions}")
print(f"- objects read back through the proxy and checked against the origin: {verified} exact, {wrong} wrong")
EOF
cat "$OUT/results.md"
echo "chart: $OUT/soak.svg"
[ "$wrong" = 0 ]
