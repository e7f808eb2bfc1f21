#!/usr/bin/env bash
# Shoal's proxy against plain HTTP from nginx (sendfile on) on one machine, every figure beside its baseline
# from the same run, in interleaved rounds (the baseline goes first in odd rounds, second in even ones):
#   (a) local hit: a cached object through daemon A's proxy vs the same bytes from nginx: MB/s and server
#       CPU seconds per GiB (utime+stime deltas of the serving process from /proc/PID/stat)
#   (b) remote-peer hit: through daemon B's proxy, B taking the pieces from A (same standalone scheduler),
#       vs a direct GET from nginx; goal ≤ 2.5× the direct time
#   (c) cold: through daemon A's proxy with nothing cached (A fetches from nginx) vs a direct GET from
#       nginx; goal ≤ 2.5× the direct time, and time to first byte within 10 ms of direct
#       Unshaped loopback is a CPU stress on two shared cores: a verified download pays a sha256 pass that
#       nginx does not, hence 2.5× here; the link-limited goals (cold ≤ 1.05×, remote-peer ≤ 1.1×) are
#       scripts/bench-link.sh's, on shaped links. Beside it, the same object through a bare verifying relay
#       (examples/relay_floor.rs: receive, sha256 on a second thread, send; no pieces, no disk): its time
#       and CPU are what any program in A's place must spend, so A ÷ relay is A's own overhead.
#   (d) memory: daemon C's anonymous RSS (RssAnon from /proc/PID/status, peak of 20 samples/s) while it
#       serves CONC concurrent downloads, cold (every object from nginx) and then as local hits; goal ≤ 64 MiB
# Every round uses its own object, so each cold fetch and each remote-peer hit starts from empty caches.
#
#   scripts/bench-local.sh [-s SIZE_MIB=1024] [-r ROUNDS=3] [-c CONC=8] [--rss-size MIB=SIZE] [-o OUTDIR]
#
# Needs nginx (installed with apt-get when missing, as root), curl, python3, a release build. Listens on
# 127.0.0.6x only; every process is stopped and every file removed on exit, even when interrupted. Needs
# about (ROUNDS + CONC) × SIZE × 3 of disk under /var/tmp. Exits non-zero only if the set-up fails: a
# missed goal is a figure to report. Writes results.md, data.json and chart.svg to OUTDIR
# (default /var/tmp/shoal-bench/bench-local). On loopback the sender's CPU includes most of the TCP stack
# of both ends, and curl is often the limit for MB/s: compare CPU per GiB first.
set -euo pipefail

SIZE_MIB=1024
ROUNDS=3
CONC=8
RSS_MIB=""
OUT=/var/tmp/shoal-bench/bench-local
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZE_MIB=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    -c) CONC=$2; shift 2 ;;
    --rss-size) RSS_MIB=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-s SIZE_MIB] [-r ROUNDS] [-c CONC] [--rss-size MIB] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
RSS_MIB=${RSS_MIB:-$SIZE_MIB}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ! command -v nginx >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "bench-local: nginx missing (apt-get install nginx-light, as root)" >&2; exit 1; }
  echo "== installing nginx"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release -q
cargo build --release -q --example relay_floor
# SHOAL_BIN: another build of the daemon to measure (an older commit, for a before/after in one sitting).
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
mkdir -p "$OUT"

WORK=$(mktemp -d /var/tmp/shoal-bench-local.XXXXXX)
# One cluster secret for this run's scheduler and daemons (they read it from the environment).
"$BIN" secret generate > "$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

TCK=$(getconf CLK_TCK)
fmt() { awk -v x="$1" -v f="$2" 'BEGIN { printf f, x }'; }

echo "== making $ROUNDS objects of $SIZE_MIB MiB and $CONC of $RSS_MIB MiB"
# nginx workers run unprivileged: the directory and the objects must be world-readable.
chmod 755 "$WORK"
mkdir -p "$WORK/www"
OIDS=()
# One random file per size; each object a copy of it (make_obj, bench-common.sh).
for _ in $(seq "$ROUNDS"); do OIDS+=("$(make_obj "$SIZE_MIB")"); done
RSS_OIDS=()
for _ in $(seq "$CONC"); do RSS_OIDS+=("$(make_obj "$RSS_MIB")"); done
rm -f "$WORK"/base-*

NGX_IP=127.0.0.60
NGX_PORT=$(free_port $NGX_IP)
serve_nginx "" "$NGX_IP:$NGX_PORT" \
  "log_format bytes '\$request_uri \$status \$body_bytes_sent'; access_log $WORK/nginx-access.log bytes; tcp_nopush on;"
ORIGIN="http://$NGX_IP:$NGX_PORT"
RELAY_IP=127.0.0.65
RELAY_PORT=$(free_port $RELAY_IP)
relay_floor "" "$RELAY_IP:$RELAY_PORT" "$NGX_IP:$NGX_PORT"
origin_bytes() { awk '{s+=$3} END {printf "%.0f\n", s}' "$WORK/nginx-access.log"; }

SCHED_IP=127.0.0.63
SP=$(free_port $SCHED_IP)
SCHED=$SCHED_IP:$SP
"$BIN" scheduler --listen "$SCHED" 2>"$WORK/scheduler.log" >/dev/null &
PIDS+=($!)
a_PID=""; b_PID=""; c_PID=""; a_PROXY=""; b_PROXY=""; c_PROXY=""; c_METRICS=""
start_daemon a 127.0.0.61 --scheduler "$SCHED"
start_daemon b 127.0.0.62 --scheduler "$SCHED"

# get LABEL URL [PROXY] -> appends "label seconds ttfb_s MB/s source" to $WORK/gets; prints seconds
get() {
  local label=$1 url=$2 proxy=${3:-} px=(--noproxy '*') out
  [ -n "$proxy" ] && px=(--noproxy '' -x "http://$proxy")
  out=$(timeout 600 curl -sS -f "${px[@]}" -o /dev/null \
    -w '%{time_total} %{time_starttransfer} %{speed_download} %header{x-shoal-source}\n' "$url") \
    || { echo "bench-local: GET $url ${proxy:+through $proxy }failed" >&2; exit 1; }
  local t ttfb speed src
  read -r t ttfb speed src <<<"$out"
  echo "$label $t $ttfb $(awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1e6 }') ${src:--}" >>"$WORK/gets"
  echo "$t"
}
# serve LABEL PID URL [PROXY]: a GET, charging the CPU of PID; appends "label cpu_s_per_GiB" to $WORK/cpu
serve() {
  local c0 c1
  c0=$(cpu_ticks "$2")
  get "$1" "$3" "${4:-}" >/dev/null
  c1=$(cpu_ticks "$2")
  awk -v l="$1" -v c=$((c1 - c0)) -v t="$TCK" -v m="$SIZE_MIB" 'BEGIN { printf "%s %.4f\n", l, c / t / (m / 1024) }' >>"$WORK/cpu"
}
# charged LABEL PID TICKS_BEFORE: appends "label cpu_s_per_GiB" (CPU PID used since TICKS_BEFORE) to $WORK/cpu
charged() {
  awk -v l="$1" -v c=$(($(cpu_ticks "$2") - $3)) -v t="$TCK" -v m="$SIZE_MIB" 'BEGIN { printf "%s %.4f\n", l, c / t / (m / 1024) }' >>"$WORK/cpu"
}
cold() { local a0; a0=$(cpu_ticks "$a_PID"); get c_cold "$1" "$a_PROXY" >/dev/null; charged c_cold_a "$a_PID" "$a0"; }
peer() {
  local a0 b0; a0=$(cpu_ticks "$a_PID"); b0=$(cpu_ticks "$b_PID")
  get b_peer "$1" "$b_PROXY" >/dev/null
  charged b_peer_a "$a_PID" "$a0"; charged b_peer_b "$b_PID" "$b0"
}
source_of() { curl -sS --noproxy '' -x "http://$1" -o /dev/null -D - "$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-shoal-source" {print $2}'; }
wait_local() { # proxy url: until the daemon answers it as a complete local hit (up to 60 s)
  local i
  for i in $(seq 120); do
    [ "$(source_of "$1" "$2")" = local ] && return 0
    [ "$i" = 120 ] || sleep 0.5
  done
  echo "bench-local: no local hit for $2 after 60 s" >&2; exit 1
}
: >"$WORK/gets"; : >"$WORK/cpu"

echo "== $ROUNDS rounds, $SIZE_MIB MiB: cold (c), remote-peer hit (b), local hit (a), each beside nginx"
for r in $(seq "$ROUNDS"); do
  url="$ORIGIN/${OIDS[$((r - 1))]}"
  cat "$WORK/www/${OIDS[$((r - 1))]}" >/dev/null  # the origin's file in the page cache for both sides
  get warm "$url" >/dev/null
  ob0=$(origin_bytes)
  relay_url="http://$RELAY_IP:$RELAY_PORT/${OIDS[$((r - 1))]}"
  if [ $((r % 2)) = 1 ]; then
    get c_direct "$url" >/dev/null; serve c_relay "$RELAY_PID" "$relay_url"; cold "$url"
  else
    cold "$url"; serve c_relay "$RELAY_PID" "$relay_url"; get c_direct "$url" >/dev/null
  fi
  wait_local "$a_PROXY" "$url"
  ob1=$(origin_bytes)
  if [ $((r % 2)) = 1 ]; then
    get b_direct "$url" >/dev/null; peer "$url"
  else
    peer "$url"; get b_direct "$url" >/dev/null
  fi
  ob2=$(origin_bytes)
  echo "origin_bytes_cold $(( (ob1 - ob0) - 2 * (SIZE_MIB << 20) ))" >>"$WORK/obytes"  # minus the direct GET and the relay's
  echo "origin_bytes_peer $(( (ob2 - ob1) - (SIZE_MIB << 20) ))" >>"$WORK/obytes"
  get warm "$url" "$a_PROXY" >/dev/null  # the cache file in the page cache too
  if [ $((r % 2)) = 1 ]; then
    serve a_nginx "$NGX_WORKER" "$url"; serve a_local "$a_PID" "$url" "$a_PROXY"
  else
    serve a_local "$a_PID" "$url" "$a_PROXY"; serve a_nginx "$NGX_WORKER" "$url"
  fi
  grep -v '^warm ' "$WORK/gets" | tail -n 7 | awk -v r="$r" '{printf "  round %s %-9s %7.3f s  ttfb %6.1f ms  %6.0f MB/s  source %s\n", r, $1, $2, $3 * 1000, $4, $5}'
done

echo "== memory: daemon C serving $CONC concurrent downloads of $RSS_MIB MiB, cold then local hits"
start_daemon c 127.0.0.64
rss_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# What C's memory is, from its /metrics (MiB): allocator in use / kept free; piece buffers held / busy / idle.
mem_parts() {
  curl -s --noproxy '*' "http://$c_METRICS/metrics" | awk '
    /^shoal_heap_bytes\{state="in_use"\}/ {u = $NF} /^shoal_heap_bytes\{state="free"\}/ {f = $NF}
    /^shoal_piece_buffer_bytes\{state="held"\}/ {h = $NF} /^shoal_piece_buffer_bytes\{state="busy"\}/ {b = $NF}
    /^shoal_piece_buffer_bytes\{state="idle"\}/ {i = $NF}
    END {m = 1048576; printf "heap=%.0f+%.0f,pieces=%.0f/%.0f/%.0f", u / m, f / m, h / m, b / m, i / m}'
}
# concurrent LABEL: CONC GETs at once through C while sampling its RssAnon; appends "label peak_kib
# samples wall_s cpu_s_per_gib" (C's utime+stime over the bytes served)
concurrent() {
  local pids=() i oid peak=0 v n=0 c0 t0 parts="-"
  c0=$(cpu_ticks "$c_PID"); t0=$(date +%s.%N)
  for oid in "${RSS_OIDS[@]}"; do
    timeout 900 curl -sS -f --noproxy '' -x "http://$c_PROXY" -o /dev/null "$ORIGIN/$oid" 2>>"$WORK/conc.err" &
    pids+=($!); PIDS+=($!)
  done
  # 20 samples/s while any download runs, bounded by the curls' own 900 s timeout.
  for i in $(seq 18000); do
    v=$(rss_kib "$c_PID"); if [ "$v" -gt "$peak" ]; then peak=$v; parts=$(mem_parts); fi
    n=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done
    [ "$n" = 0 ] && break
    sleep 0.05
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "bench-local: a concurrent download failed: $(tail -n1 "$WORK/conc.err")" >&2; exit 1; }; done
  local c1 t1
  c1=$(cpu_ticks "$c_PID"); t1=$(date +%s.%N)
  echo "$1 $peak $i $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
    "$(awk -v c=$((c1 - c0)) -v t="$TCK" -v g="$(awk -v n="$CONC" -v m="$RSS_MIB" 'BEGIN { print n * m / 1024 }')" 'BEGIN { printf "%.3f", c / t / g }')" \
    "$parts" >>"$WORK/rss"
}
: >"$WORK/rss"
base_rss=$(rss_kib "$c_PID")
concurrent d_cold
for oid in "${RSS_OIDS[@]}"; do wait_local "$c_PROXY" "$ORIGIN/$oid"; done
concurrent d_hit
awk -v b="$base_rss" '{printf "  %-7s peak RssAnon %.1f MiB (%s samples; idle before: %.1f MiB), %s s, CPU %s s/GiB; at the peak, MiB: %s\n", $1, $2/1024, $3, b/1024, $4, $5, $6}' "$WORK/rss"

# ---- the table
col() { awk -v l="$1" -v k="$2" '$1 == l {print $k}' "$3"; }
med() { col "$1" "$2" "$3" | median; }
# median over rounds of the per-round ratio label1/label2 of column k
ratio() { paste <(col "$1" "$3" "$WORK/$4") <(col "$2" "$3" "$WORK/$4") | awk '$2 > 0 {printf "%.4f\n", $1 / $2}' | median; }
x() { if [ -n "$1" ]; then fmt "$1" '%.2f×'; else echo "n/a"; fi; }  # a ratio, or n/a (too small to measure)
SZ="$SIZE_MIB MiB"
a_mbs=$(med a_local 4 "$WORK/gets"); n_mbs=$(med a_nginx 4 "$WORK/gets")
a_cpu=$(med a_local 2 "$WORK/cpu"); n_cpu=$(med a_nginx 2 "$WORK/cpu")
b_t=$(med b_peer 2 "$WORK/gets"); bd_t=$(med b_direct 2 "$WORK/gets")
c_t=$(med c_cold 2 "$WORK/gets"); cd_t=$(med c_direct 2 "$WORK/gets")
c_fb=$(med c_cold 3 "$WORK/gets" | awk '{print $1 * 1000}'); cd_fb=$(med c_direct 3 "$WORK/gets" | awk '{print $1 * 1000}')
a_rt=$(ratio a_local a_nginx 4 gets); a_cr=$(ratio a_local a_nginx 2 cpu)
b_r=$(ratio b_peer b_direct 2 gets); c_r=$(ratio c_cold c_direct 2 gets)
rl_t=$(med c_relay 2 "$WORK/gets"); rl_r=$(ratio c_relay c_direct 2 gets); c_rl=$(ratio c_cold c_relay 2 gets)
rl_cpu=$(med c_relay 2 "$WORK/cpu"); ca_rl=$(ratio c_cold_a c_relay 2 cpu); bb_rl=$(ratio b_peer_b c_relay 2 cpu)
fb_d=$(paste <(col c_cold 3 "$WORK/gets") <(col c_direct 3 "$WORK/gets") | awk '{printf "%.2f\n", ($1 - $2) * 1000}' | median)
rss_cold=$(awk '$1 == "d_cold" {printf "%.1f", $2/1024}' "$WORK/rss"); rss_hit=$(awk '$1 == "d_hit" {printf "%.1f", $2/1024}' "$WORK/rss")
ob_cold=$(col origin_bytes_cold 2 "$WORK/obytes" | median); ob_peer=$(col origin_bytes_peer 2 "$WORK/obytes" | median)
srcs() { col "$1" 5 "$WORK/gets" | sort | uniq -c | awk '{printf "%s%s×%s", (NR > 1 ? ", " : ""), $1, $2}'; }
met() { awk -v r="$1" -v g="$2" 'BEGIN { print (r <= g ? "met" : "missed") }'; }
{
  echo
  echo "| $SZ objects, median of $ROUNDS interleaved rounds | Shoal | baseline, same run | ratio (median per round) | goal |"
  echo "|---|---|---|---|---|"
  echo "| (a) local hit through the proxy, MB/s to curl | $(fmt "$a_mbs" %.0f) | nginx sendfile $(fmt "$n_mbs" %.0f) | $(x "$a_rt") | |"
  echo "| (a) local hit, server CPU s/GiB | $(fmt "$a_cpu" %.3f) | nginx worker $(fmt "$n_cpu" %.3f) | $(x "$a_cr") | |"
  echo "| (b) remote-peer hit (B's proxy, pieces from A), seconds | $(fmt "$b_t" %.3f) | direct GET from nginx $(fmt "$bd_t" %.3f) | $(x "$b_r") | ≤ 2.5× $(met "$b_r" 2.5) |"
  echo "| (c) cold through the proxy (A fetches from nginx), seconds | $(fmt "$c_t" %.3f) | direct GET from nginx $(fmt "$cd_t" %.3f) | $(x "$c_r") | ≤ 2.5× $(met "$c_r" 2.5) |"
  echo "| (c) cold, daemon A CPU s/GiB (fetch, crc32c, sha256, store, stream) | $(fmt "$(med c_cold_a 2 "$WORK/cpu")" %.3f) | | | |"
  echo "| (c) a bare verifying relay in A's place (examples/relay_floor.rs), seconds | $(fmt "$rl_t" %.3f) | direct GET from nginx $(fmt "$cd_t" %.3f) | $(x "$rl_r") | |"
  echo "| (c) cold through A ÷ the relay: seconds; CPU s/GiB, A cold and B child ÷ the relay's $(fmt "$rl_cpu" %.3f) | | | $(x "$c_rl"); $(x "$ca_rl") and $(x "$bb_rl") | |"
  echo "| (b) remote-peer hit, CPU s/GiB: daemon B (download, verify, store, stream) / daemon A (upload) | $(fmt "$(med b_peer_b 2 "$WORK/cpu")" %.3f) / $(fmt "$(med b_peer_a 2 "$WORK/cpu")" %.3f) | | | |"
  echo "| (c) cold, time to first byte, ms | $(fmt "$c_fb" '%.1f') | direct $(fmt "$cd_fb" '%.1f') | +$(fmt "$fb_d" '%.1f') ms | ≤ +10 ms $(met "$fb_d" 10) |"
  echo "| (d) peak RssAnon, $CONC concurrent cold downloads of $RSS_MIB MiB, MiB | $rss_cold | idle $(fmt "$base_rss" '%.0f' | awk '{printf "%.1f", $1/1024}') | | ≤ 64 MiB $(met "$rss_cold" 64) |"
  echo "| (d) peak RssAnon, $CONC concurrent local hits of $RSS_MIB MiB, MiB | $rss_hit | | | ≤ 64 MiB $(met "$rss_hit" 64) |"
  echo "| (d) $CONC concurrent cold downloads: seconds, daemon C CPU s/GiB | $(col d_cold 4 "$WORK/rss") s, $(col d_cold 5 "$WORK/rss") | | | |"
  echo "| (d) at the cold peak, MiB: allocator in use + kept free, piece buffers held / busy / idle | $(col d_cold 6 "$WORK/rss" | tr ',' ' ') | | | |"
  echo
  echo "Served from (x-shoal-source): cold $(srcs c_cold); B $(srcs b_peer); local $(srcs a_local)." \
    "Origin bytes beyond the direct GET, median per round: cold $ob_cold, remote-peer hit $ob_peer."
  relay_stalls
  echo "Per-round seconds: cold [$(col c_cold 2 "$WORK/gets" | xargs)] relay [$(col c_relay 2 "$WORK/gets" | xargs)] direct [$(col c_direct 2 "$WORK/gets" | xargs)];" \
    "peer [$(col b_peer 2 "$WORK/gets" | xargs)] direct [$(col b_direct 2 "$WORK/gets" | xargs)]."
} | tee "$OUT/results.md"

{
  printf '{"title": "bench-local: %s, median of %s rounds (2-vCPU VM)", "groups": [\n' "$SZ" "$ROUNDS"
  printf '{"name": "(a) local hit, MB/s", "unit": "MB/s", "bars": [{"name": "nginx sendfile", "value": %s}, {"name": "Shoal local hit", "value": %s}]},\n' "$n_mbs" "$a_mbs"
  printf '{"name": "(a) local hit, server CPU", "unit": "s/GiB", "bars": [{"name": "nginx sendfile", "value": %s}, {"name": "Shoal local hit", "value": %s}]},\n' "$n_cpu" "$a_cpu"
  printf '{"name": "(b) remote-peer hit", "unit": "seconds", "goal": %s, "goal_label": "2.5× direct", "bars": [{"name": "direct nginx", "value": %s}, {"name": "Shoal peer hit", "value": %s}]},\n' \
    "$(awk -v d="$bd_t" 'BEGIN {print d * 2.5}')" "$bd_t" "$b_t"
  printf '{"name": "(c) cold", "unit": "seconds", "goal": %s, "goal_label": "2.5× direct", "bars": [{"name": "direct nginx", "value": %s}, {"name": "Shoal cold", "value": %s}]},\n' \
    "$(awk -v d="$cd_t" 'BEGIN {print d * 2.5}')" "$cd_t" "$c_t"
  printf '{"name": "(c) time to first byte", "unit": "ms", "goal": %s, "goal_label": "direct + 10 ms", "bars": [{"name": "direct nginx", "value": %s}, {"name": "Shoal cold", "value": %s}]},\n' \
    "$(awk -v d="$cd_fb" 'BEGIN {print d + 10}')" "$cd_fb" "$c_fb"
  printf '{"name": "(d) peak RssAnon, %s downloads", "unit": "MiB", "goal": 64, "goal_label": "64 MiB", "bars": [{"name": "Shoal cold", "value": %s}, {"name": "Shoal local hits", "value": %s}]}\n' \
    "$CONC" "$rss_cold" "$rss_hit"
  printf ']}\n'
} >"$OUT/data.json"
if "$ROOT/scripts/bench-chart.sh" local "$OUT/data.json" "$OUT/chart.svg"; then
  echo "chart: $OUT/chart.svg"
else
  echo "bench-local: warning: the chart was not drawn (table above and in $OUT/results.md)" >&2
fi
echo "results: $OUT/results.md"
