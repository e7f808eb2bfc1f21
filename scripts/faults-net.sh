#!/usr/bin/env bash
# Network-fault matrix (issue 16, part 2): a scheduler, a seed and PEERS peers, each a `shoal` process in its
# own network namespace on one bridge, and an origin (nginx: Content-Length and Range) in its own namespace.
# Every scenario ends with each client holding the exact object (sha256 compared here, not only by shoal) or
# a clean failure (non-zero exit); a success with wrong bytes is CORRUPT and a client past its bound is HANG,
# and either fails the scenario. Prints a markdown table (scenario, outcome, time, ratio vs clean, bound).
#
#   sudo flock /tmp/shoal-heavy.lock scripts/faults-net.sh [-n PEERS] [-s SIZE_MIB] [--only 1,2,...] [-o OUTDIR]
#
# Scenarios (PEERS peers, objects of SIZE_MIB, default 8 and 4 MiB; each object is new, so every scenario
# starts cold):
#   0 clean      the swarm fetches one object on clean links (the baseline of scenario 1);
#   1 lossy      30 % loss and 200 ms delay on every packet entering a seed or peer from another seed or
#                peer (so 400 ms RTT between two peers); the swarm completes; ratio = time / clean time;
#   1b           the same on every packet entering a seed or peer, the origin's included (no clean path
#                to escape to);
#   2 partition  seed and peer links limited to 40 Mbit/s so the download lasts; once the child has received
#                SIZE_MIB/2 MiB,
#                every packet between it and the other peers and the seed is dropped (100 % loss, both
#                ways); the child must finish from the origin or other parents within the stall bound;
#   3 scheduler  the scheduler is killed (SIGKILL) with PEERS peers mid-swarm and restarted 3 s later; the
#                peers finish; the restarted scheduler shows every host re-registered, and a fresh node then
#                takes the object from the peers with no new origin download (the rebuilt task state);
#   4 flap       the origin's link is dropped (iptables DROP both ways) 2 s of every 4 s while the seed and
#                peers fetch from it (origin egress limited to 40 Mbit/s, 8×SIZE_MIB object); a client that
#                failed (cleanly) asks once more after the flapping, and must then get the object;
#   5 disk full  a seed whose data dir is a small tmpfs; while peers read object F from it, the rest of the
#                tmpfs is filled by another process; F is still served whole and not evicted while in use,
#                and a new object asked of that seed's proxy fails with an HTTP error (not a hang or a
#                truncated 200);
#   6 clock      a daemon under libfaketime (FAKETIME_TIMESTAMP_FILE, rewritten at runtime; the monotonic
#                clock is left alone, as a real clock step leaves it), TTL 1h, GC every second: its wall
#                clock is stepped +2 days and back -2 days while one task is being read and others sit
#                idle; no task it read moments before the step is evicted, and the read completes.
#
# Delay without sch_netem: tools/netdelay (a separate crate, built here, never part of the shoal binary)
# takes an NFQUEUE queue and holds each packet's verdict for the delay; iptables rules in each namespace
# drop a random 30 % (`statistic --mode random`) and queue the rest (`NFQUEUE --queue-bypass`, so traffic
# still flows if the delayer dies). 30 % loss with 400 ms RTT makes TCP very slow (SYN retries of 1 s, 3 s,
# RTO back-off), hence the small default object (4 MiB): on this machine scenario 1 took about a minute
# (its clients escape to the clean origin link) and 1b about 8 minutes; the rest take under 5 minutes.
#
# Bounds: each client gets 600 s in scenarios 1 and 1b, 180 s in 4, 120 s otherwise; the whole run is stopped by a
# watchdog after 40 min. Needs root (ip netns, tc, iptables, mount), nginx, curl, faketime (libfaketime).
# Namespaces, mounts and processes are removed on exit, even when interrupted. Exits non-zero if a scenario
# fails (CORRUPT, HANG, or its own check).
set -euo pipefail

N=8
SIZE_MIB=4
ONLY=0,1,1b,2,3,4,5,6
OUT=/var/tmp/shoal-bench/faults-net
TOTAL_BOUND=2400
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -s) SIZE_MIB=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-n PEERS] [-s SIZE_MIB] [--only 1,2,...] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "faults-net: needs root (ip netns, tc, iptables)" >&2; exit 1; }
FAKETIME_LIB=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n1 || true)
for t in nginx curl iptables; do command -v "$t" >/dev/null || { echo "faults-net: needs $t" >&2; exit 1; }; done
cd "$(dirname "$0")/.."
ROOT=$PWD
mkdir -p "$OUT"
cargo build --release -q
cargo build --release -q --manifest-path tools/netdelay/Cargo.toml
BIN=$ROOT/target/release/shoal
NETDELAY=$ROOT/tools/netdelay/target/release/netdelay

P=shf$$                      # namespace prefix, unique per run
NET=10.214.0                 # addresses exist only inside this run's namespaces
PEERNET=$NET.64/26           # the seeds and peers (.64-.127): the "peer links" scenario 1 impairs
WORK=$(mktemp -d /var/tmp/shoal-faults.XXXXXX)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
"$BIN" secret generate >"$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
MOUNTS=()
cleanup() {
  local m
  for m in "${MOUNTS[@]:-}"; do if [ -n "$m" ]; then umount -l "$m" 2>/dev/null || true; fi; done
  swarm_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The overall bound: the watchdog ends the script (its trap cleans up) if it is still running.
( sleep "$TOTAL_BOUND" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM
  wait $s && { echo "faults-net: overall bound of ${TOTAL_BOUND}s reached" >&2; kill -TERM $$; } ) &
PIDS+=($!)

log() { echo "[$(date +%T)] $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# --- the hosts -----------------------------------------------------------------------------------------
bridge_switch
swarm_host origin 2 10gbit
swarm_host sched 3 10gbit
swarm_host seed 64 10gbit
PEERS=()
for i in $(seq 1 "$N"); do swarm_host "peer$i" $((64 + i)) 10gbit; PEERS+=("peer$i"); done
swarm_host fresh 100 10gbit   # scenario 3's late-comer
swarm_host seed5 101 10gbit   # scenario 5's seed (tmpfs data dir)
swarm_host clock 102 10gbit   # scenario 6's daemon under libfaketime
octet() { case "$1" in seed) echo 64 ;; fresh) echo 100 ;; seed5) echo 101 ;; clock) echo 102 ;; peer*) echo $((64 + ${1#peer})) ;; esac; }

mkdir -p "$WORK/www" "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
master_process off;
user root root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/origin.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server { listen $NET.2:8080; root $WORK/www; }
}
EOF
bg_ns origin nginx -c "$WORK/nginx.conf" -e "$WORK/origin.log"
start_sched() { bg_ns sched "$BIN" scheduler --listen "$NET.3:8002" 2>>"$WORK/sched.log"; SCHED_PID=$!; }
start_sched
swarm_daemon seed 64 --seed
SEED_PID=$!
for p in "${PEERS[@]}"; do swarm_daemon "$p" "$(octet "$p")"; done
swarm_wait_started $((N + 1)) || { tail -n 5 "$WORK"/*.log >&2; exit 1; }
for _ in $(seq 1 50); do in_ns peer1 curl -s -o /dev/null "http://$NET.2:8080/" && break; sleep 0.1; done
origin_tx() { in_ns origin cat /sys/class/net/eth0/statistics/tx_bytes; }

# --- clients and verdicts ------------------------------------------------------------------------------
# fetch NODE OID BOUND TAG: one `shoal get` through NODE's daemon, bounded; writes "<verdict> <seconds> <end>" to
# $WORK/r-TAG-NODE. ok: exit 0 and the sha256 matches; fail: a non-zero exit with no output file (clean);
# CORRUPT: exit 0 with other bytes, or a failure that left a file behind; HANG: killed at the bound.
fetch() {
  local node=$1 oid=$2 bound=$3 tag=$4 out="$WORK/out-$4-$1" t0 rc=0 v
  rm -f "$out"
  t0=$(now)
  timeout -k 5 "$bound" ip netns exec "$P-$node" "$BIN" get "http://$NET.2:8080/$oid" --daemon 127.0.0.1:65001 \
      --digest "sha256:$oid" -O "$out" >/dev/null 2>"$WORK/get-$tag-$node.log" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then v=HANG
  elif [ "$rc" = 0 ]; then
    if [ "$(sha256sum "$out" 2>/dev/null | cut -d' ' -f1)" = "$oid" ]; then v=ok; else v=CORRUPT; fi
  elif [ -e "$out" ]; then v=CORRUPT
  else v=fail
  fi
  rm -f "$out"
  echo "$v $(secs "$t0" "$(now)") $(now)" >"$WORK/r-$tag-$node"
}
# fetch_all OID BOUND TAG NODE...: all at once; waits for every one.
fetch_all() {
  local oid=$1 bound=$2 tag=$3 pids=() n
  shift 3
  for n in "$@"; do fetch "$n" "$oid" "$bound" "$tag" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n" || true; done
}
# verdict TAG: "ok" if every client of TAG holds the object, "N ok, M fail" when some failed cleanly, and
# "CORRUPT"/"HANG" (a failed scenario) when any did; max_time TAG: the slowest client's seconds.
verdict() {
  local all; all=$(cat "$WORK"/r-"$1"-* | awk '{print $1}' | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')
  echo "$all"
}
# holds NODE OID...: how many of these objects NODE's daemon lists as complete (its /tasks, via shoal ls).
holds() {
  local node=$1; shift
  in_ns "$node" "$BIN" ls --json 2>/dev/null | python3 -c '
import json, sys
want = set(sys.argv[1:])
print(sum(1 for t in json.load(sys.stdin) if t.get("sha256") in want and t.get("state") == "complete"))' "$@" || echo "?"
}
# log_epoch FILE PATTERN: the time (epoch seconds) of FILE's first line matching PATTERN, empty if none.
log_epoch() {
  local l; l=$(grep -m1 -- "$2" "$1" 2>/dev/null | cut -d' ' -f1) || true
  if [ -n "$l" ]; then date -d "$l" +%s.%N; fi
}
max_time() { cat "$WORK"/r-"$1"-* | awk '$2 > m {m = $2} END {printf "%.1f", m}'; }
bad() { cat "$WORK"/r-"$1"-* | grep -qE '^(CORRUPT|HANG)'; }

ROWS=()
FAILED=0
# row SCENARIO OUTCOME TIME RATIO BOUND PASS(yes/no)
row() {
  ROWS+=("| $1 | $2 | $3 | $4 | $5 |")
  if [ "$6" != yes ]; then FAILED=1; log "scenario failed: $1: $2"; fi
  log "$1: $2 (${3}s)"
}
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
need_clean=$({ want 1 || want 1b; } && echo yes || echo no)

# --- 0: clean baseline ---------------------------------------------------------------------------------
CLEAN=
if want 0 || [ "$need_clean" = yes ]; then
  log "0: clean swarm, $N peers, $SIZE_MIB MiB"
  oid=$(make_obj "$SIZE_MIB")
  fetch_all "$oid" 120 s0 "${PEERS[@]}"
  CLEAN=$(max_time s0)
  pass=$(bad s0 && echo no || echo yes)
  row "0. clean swarm ($N peers, $SIZE_MIB MiB)" "$(verdict s0)" "$CLEAN" "1.00" "120 s" "$pass"
fi

# --- 1: 30 % loss, 200 ms delay on peer links -----------------------------------------------------------
impair() { # impair NODE FROM: drop 30 %, delay the rest 200 ms, for packets from FROM entering NODE
  in_ns "$1" iptables -A INPUT -s "$2" -m statistic --mode random --probability 0.3 -j DROP
  in_ns "$1" iptables -A INPUT -s "$2" -j NFQUEUE --queue-num 0 --queue-bypass
  bg_ns "$1" "$NETDELAY" 0 200 2>>"$WORK/netdelay.log"
  DELAYERS+=($!)
}
# lossy TAG FROM LABEL: scenario 1 with the impairment on packets from FROM.
lossy() {
  local tag=$1 from=$2 label=$3 n d t ratio pass tx0 obytes
  DELAYERS=()
  for n in seed "${PEERS[@]}"; do impair "$n" "$from"; done
  sleep 0.5
  oid=$(make_obj "$SIZE_MIB")
  tx0=$(origin_tx)
  fetch_all "$oid" 600 "$tag" "${PEERS[@]}"
  obytes=$(( $(origin_tx) - tx0 ))
  for n in seed "${PEERS[@]}"; do in_ns "$n" iptables -F INPUT; done
  for d in "${DELAYERS[@]}"; do kill "$d" 2>/dev/null || true; done
  t=$(max_time "$tag")
  ratio=$(awk -v a="$t" -v b="$CLEAN" 'BEGIN {printf "%.1f", a / b}')
  pass=$(bad "$tag" && echo no || echo yes)
  row "$label" "$(verdict "$tag"); origin sent $(awk -v b="$obytes" -v s="$((SIZE_MIB << 20))" 'BEGIN {printf "%.2f", b / s}') × the object" \
    "$t" "$ratio" "600 s" "$pass"
}
if want 1; then
  log "1: 30 % loss + 200 ms delay on every seed/peer ingress from another seed/peer"
  lossy s1 "$PEERNET" "1. 30 % loss + 200 ms delay on peer links"
fi
# 1b: the same impairment on the origin's packets too, so no client can escape to a clean path.
if want 1b; then
  log "1b: 30 % loss + 200 ms delay on every packet entering a seed or peer (origin's included)"
  lossy s1b "$NET.0/24" "1b. 30 % loss + 200 ms delay on every seed/peer link, origin's included"
fi

# Scenarios 2 and 3 need a download that lasts: seed and peer uplinks at 40 Mbit/s.
slow_links() {
  local n
  for n in seed "${PEERS[@]}"; do tc -n "$P-$n" qdisc change dev eth0 root tbf rate "$1" burst 256kb latency 50ms; done
}

# --- 2: partition between a child and its parents mid-download -----------------------------------------
STALL=10   # engine.parent_stall's default: a parent that sends nothing for this long is dropped
if want 2; then
  log "2: partition of peer1 from every other seed/peer mid-download"
  slow_links 40mbit
  oid=$(make_obj $((SIZE_MIB * 8)))
  fetch_all "$oid" 120 s2 "${PEERS[@]:1}" &
  others=$!
  # peer1 joins once the others are under way, so its parents are the seed and the other peers.
  sleep 1
  fetch peer1 "$oid" 120 s2 &
  child=$!
  # Once peer1 has received SIZE_MIB/2 MiB, cut it from every seed and peer (100 % loss, both ways).
  # (Task files are preallocated, so the child's received bytes are read off its link, not its disk.)
  rx0=$(in_ns peer1 cat /sys/class/net/eth0/statistics/rx_bytes)
  for _ in $(seq 1 100); do
    [ $(( $(in_ns peer1 cat /sys/class/net/eth0/statistics/rx_bytes) - rx0 )) -gt $((SIZE_MIB << 19)) ] && break
    sleep 0.1
  done
  cut_at=$(now)
  in_ns peer1 iptables -A INPUT -i eth0 -s "$PEERNET" -j DROP     # (its own traffic goes over lo)
  in_ns peer1 iptables -A OUTPUT -o eth0 -d "$PEERNET" -j DROP
  wait "$child" || true
  after=$(secs "$cut_at" "$(now)")
  wait "$others" || true
  in_ns peer1 iptables -F INPUT; in_ns peer1 iptables -F OUTPUT
  slow_links 10gbit
  bound=$((STALL * 3))
  v=$(cut -d' ' -f1 "$WORK/r-s2-peer1")
  pass=$( { bad s2 || [ "$v" != ok ] || awk -v a="$after" -v b="$bound" 'BEGIN {exit !(a > b)}'; } && echo no || echo yes)
  row "2. partition child/parents mid-download (child finished ${after}s after the cut)" \
    "$(verdict s2); child: $v" "$(max_time s2)" "" "child ≤ ${bound} s after the cut (3 × stall ${STALL} s)" "$pass"
fi

# --- 3: scheduler killed mid-swarm, restarted -------------------------------------------------------------
if want 3; then
  log "3: scheduler killed (SIGKILL) with $N peers mid-swarm, restarted 3 s later"
  slow_links 40mbit
  oid=$(make_obj $((SIZE_MIB * 8)))
  fetch_all "$oid" 120 s3 "${PEERS[@]}" &
  all=$!
  sleep 2
  kill -9 "$SCHED_PID"
  wait "$SCHED_PID" 2>/dev/null || true   # (reaped here: no "Killed" notice from the shell)
  echo "---- scheduler restarted ----" >>"$WORK/sched.log"
  sleep 3
  start_sched
  wait "$all" || true
  slow_links 10gbit
  # The restarted scheduler's view: every daemon registered again, with the tasks it re-announced.
  sleep 2
  regs=$(sed -n '/---- scheduler restarted ----/,$p' "$WORK/sched.log" | grep -c "host registered" || true)
  # A node that was never part of the swarm now takes the object: the restarted scheduler must know who
  # holds it (re-announced state), so the origin sends nothing new.
  swarm_daemon fresh 100
  for _ in $(seq 1 100); do grep -q "daemon started" "$WORK/fresh.log" 2>/dev/null && break; sleep 0.1; done
  tx0=$(origin_tx)
  fetch fresh "$oid" 120 s3fresh
  origin_new=$(( $(origin_tx) - tx0 ))
  src=$(grep -o 'source=[a-z]*' "$WORK/get-s3fresh-fresh.log" | tail -n1 || true)
  vf=$(cut -d' ' -f1 "$WORK/r-s3fresh-fresh")
  pass=$( { bad s3 || [ "$regs" -lt $((N + 1)) ] || [ "$vf" != ok ] || [ "$origin_new" -gt $((1 << 20)) ]; } && echo no || echo yes)
  row "3. scheduler SIGKILL mid-swarm + restart" \
    "$(verdict s3); $regs hosts re-registered; fresh node: $vf, $src, origin sent $((origin_new >> 10)) KiB" \
    "$(max_time s3)" "" "120 s per client" "$pass"
fi

# --- 4: origin link flapping during back-to-source ------------------------------------------------------
if want 4; then
  log "4: origin link down 2 s of every 4 s during back-to-source"
  tc -n "$P-origin" qdisc change dev eth0 root tbf rate 40mbit burst 256kb latency 50ms
  oid=$(make_obj $((SIZE_MIB * 8)))
  (
    for _ in $(seq 1 30); do   # at most 2 minutes of flapping
      in_ns origin iptables -A INPUT -j DROP; in_ns origin iptables -A OUTPUT -j DROP
      sleep 2
      in_ns origin iptables -F INPUT; in_ns origin iptables -F OUTPUT
      sleep 2
    done
  ) &
  flapper=$!
  PIDS+=($flapper)
  fetch_all "$oid" 180 s4 "${PEERS[@]}"
  kill "$flapper" 2>/dev/null || true
  wait "$flapper" 2>/dev/null || true
  in_ns origin iptables -F INPUT; in_ns origin iptables -F OUTPUT
  tc -n "$P-origin" qdisc change dev eth0 root tbf rate 10gbit burst 256kb latency 50ms
  # A client whose download failed cleanly asks again once the link is steady, as git-lfs or a package
  # manager would: it must then get the exact object.
  retry=()
  for p in "${PEERS[@]}"; do if [ "$(cut -d' ' -f1 "$WORK/r-s4-$p")" = fail ]; then retry+=("$p"); fi; done
  again=""
  if [ ${#retry[@]} -gt 0 ]; then
    fetch_all "$oid" 120 s4retry "${retry[@]}"
    again="; retried once on a steady link: $(verdict s4retry) in $(max_time s4retry) s"
    if bad s4retry; then FAILED=1; fi
  fi
  stalls=$(cat "$WORK"/seed.log "$WORK"/peer*.log | grep -c "origin body stalled" || true)
  pass=$(bad s4 && echo no || echo yes)
  row "4. origin link flapping (down 2 s / up 2 s) during back-to-source" \
    "$(verdict s4) ($stalls origin bodies stalled past the 30 s idle bound)$again" "$(max_time s4)" "" \
    "180 s per client (origin idle bound 30 s)" "$pass"
fi

# --- 5: a seed's disk fills up while peers read from it ---------------------------------------------------
if want 5; then
  log "5: seed data dir on a small tmpfs, filled while peers read from it"
  FS_MIB=$((SIZE_MIB * 8 + 8))
  mkdir -p "$WORK/seed5"
  mount -t tmpfs -o "size=${FS_MIB}m" tmpfs "$WORK/seed5"
  MOUNTS+=("$WORK/seed5")
  # Only this seed serves: the regular seed is stopped for the scenario; GC looks every second.
  kill "$SEED_PID" 2>/dev/null || true
  printf 'storage:\n  gc_interval: 1s\n' >"$WORK/seed5.yaml"
  swarm_daemon seed5 101 --seed --config "$WORK/seed5.yaml"
  for _ in $(seq 1 100); do grep -q "daemon started" "$WORK/seed5.log" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  oid=$(make_obj $((SIZE_MIB * 4)))
  fetch seed5 "$oid" 120 s5seed    # the seed holds F
  # 80 Mbit/s: the reads last a few seconds, yet each of the 8 children gets its first 4 MiB piece
  # within the 10 s stall bound (a slower shared uplink makes children drop the seed as stalled).
  tc -n "$P-seed5" qdisc change dev eth0 root tbf rate 80mbit burst 256kb latency 50ms
  fetch_all "$oid" 120 s5 "${PEERS[@]}" &
  readers=$!
  sleep 1
  # Another process fills the file system the seed's data dir lives on.
  dd if=/dev/zero of="$WORK/seed5/filler" bs=1M status=none 2>/dev/null || true
  df -k "$WORK/seed5" | tail -n1 >>"$WORK/seed5-df.log"
  # A new object asked of the full seed's proxy: an HTTP error with a reason, within the bound.
  oid2=$(make_obj $((SIZE_MIB * 2)))
  t_new=$(now)
  code=$(timeout 60 ip netns exec "$P-seed5" curl -s -o "$WORK/s5-new.body" -w '%{http_code}' \
      -x 127.0.0.1:65001 "http://$NET.2:8080/$oid2" || echo timeout)
  new_t=$(secs "$t_new" "$(now)")
  reason=$(head -c 200 "$WORK/s5-new.body" 2>/dev/null | tr -d '\n' || true)
  got=$(stat -c %s "$WORK/s5-new.body" 2>/dev/null || echo 0)
  wait "$readers" || true
  # Nothing evicted while in use: the seed's first GC eviction (it may evict F once F is idle, the file
  # system being over its high watermark) must come after the last reader ended, and every reader took F
  # whole from the swarm (no origin bytes).
  last_end=$(cat "$WORK"/r-s5-* | awk '$3 > m {m = $3} END {printf "%.3f", m}')
  ev=$(log_epoch "$WORK/seed5.log" "gc pass")
  if [ -z "$ev" ]; then evict="no GC eviction"
  elif awk -v e="$ev" -v l="$last_end" 'BEGIN {exit !(e < l - 1)}'; then evict="EVICTED DURING READS"
  else evict="first eviction $(secs "$last_end" "$ev") s after the last reader (F idle)"; fi
  from_origin=$(cat "$WORK"/peer*.log | grep "task complete task=$oid" | grep -vc "from_origin=0" || true)
  clean_new=no
  if [ "$code" != 200 ] && [ "$code" != timeout ]; then clean_new=yes; fi
  pass=$( { bad s5 || [ "$clean_new" != yes ] || [ "$evict" = "EVICTED DURING READS" ]; } && echo no || echo yes)
  row "5. seed disk full (tmpfs ${FS_MIB} MiB) while peers read" \
    "$(verdict s5) (readers with origin bytes: $from_origin); $evict; new task on the full seed: HTTP $code in ${new_t}s, $got bytes: \"${reason:0:90}\"" \
    "$(max_time s5)" "" "120 s per client, 60 s for the new task" "$pass"
  rm -f "$WORK/seed5/filler"
fi

# --- 6: clock steps on one node ---------------------------------------------------------------------------
if want 6; then
  if [ -z "$FAKETIME_LIB" ]; then
    row "6. clock steps (libfaketime)" "skipped: libfaketime not installed (scripts/install-test-deps.sh)" "" "" "" yes
  else
    log "6: clock steps +2 d and -2 d on one daemon (libfaketime), TTL 1 h, GC every second"
    echo "+0" >"$WORK/faketime"
    cat >"$WORK/faked-shoal" <<EOF
#!/bin/sh
LD_PRELOAD=$FAKETIME_LIB FAKETIME_TIMESTAMP_FILE=$WORK/faketime FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1 exec $BIN "\$@"
EOF
    chmod +x "$WORK/faked-shoal"
    printf 'storage:\n  ttl: 1h\n  gc_interval: 1s\n' >"$WORK/clock.yaml"
    BIN=$WORK/faked-shoal swarm_daemon clock 102 --config "$WORK/clock.yaml"
    for _ in $(seq 1 100); do grep -q "daemon started" "$WORK/clock.log" 2>/dev/null && break; sleep 0.1; done
    idle=$(make_obj "$SIZE_MIB")
    busy=$(make_obj $((SIZE_MIB * 4)))
    t0=$(now)
    fetch clock "$idle" 60 s6idle
    fetch clock "$busy" 60 s6busy
    # A slow reader keeps `busy` in use across both steps (about 16 s at 1 MiB/s for 16 MiB).
    ( timeout 120 ip netns exec "$P-clock" curl -s --limit-rate 1M -x 127.0.0.1:65001 \
        "http://$NET.2:8080/$busy" | sha256sum | cut -d' ' -f1 >"$WORK/s6-reader" ) &
    reader=$!
    sleep 2
    echo "+2d" >"$WORK/faketime"; sleep 4          # forward step: 2 days > TTL
    fetch clock "$idle" 60 s6idle2                   # read while the clock is ahead
    echo "-2d" >"$WORK/faketime"; sleep 4          # backward step
    fetch clock "$idle" 60 s6idle3                   # read while the clock is behind ...
    echo "+0" >"$WORK/faketime"; sleep 4           # ... then corrected: that read is 2 days "old"
    wait "$reader" || true
    expired=$(grep -c "ttl expired\|expired=" "$WORK/clock.log" || true)
    held=$(holds clock "$idle" "$busy")
    rd=$(cat "$WORK/s6-reader" 2>/dev/null || true)
    rv=$([ "$rd" = "$busy" ] && echo ok || echo "CORRUPT/failed")
    pass=$( { [ "$expired" != 0 ] || [ "$rv" != ok ] || [ "$held" != 2 ] || cat "$WORK"/r-s6* | grep -qv '^ok'; } && echo no || echo yes)
    row "6. clock steps +2 d / -2 d on one node (TTL 1 h)" \
      "reader across the steps: $rv; GC expirations: $expired; tasks still held: $held of 2" \
      "$(secs "$t0" "$(now)")" "" "TTL 1 h, 3 GC passes after each step" "$pass"
  fi
fi

{
  echo
  echo "| scenario | outcome | time (s, slowest client) | ratio vs clean | bound |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/results.md"
echo "results: $OUT/results.md"
exit "$FAILED"
