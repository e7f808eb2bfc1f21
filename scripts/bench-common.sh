# Shared by the benchmark scripts (sourced, not run): the process list and the clean-up every script
# installs, and the small helpers they all use. The sourcing script sets WORK (its scratch directory)
# first and appends every background PID it starts to PIDS.
# shellcheck shell=bash

PIDS=()
# Stops every started process (TERM, then KILL after up to 10 s), keeps the logs when
# SHOAL_BENCH_KEEP_LOGS names a directory, and removes WORK. Runs on exit, including after INT/TERM.
bench_cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || true; fi; done
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill -9 "$p" 2>/dev/null || true; fi; done
  if [ -n "${SHOAL_BENCH_KEEP_LOGS:-}" ]; then mkdir -p "$SHOAL_BENCH_KEEP_LOGS"; cp "$WORK"/*.log "$SHOAL_BENCH_KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
# The median; of an even count, the mean of the middle two (it was the lower one until 2026-12-07, so a
# two-round figure was the better round, and one slow round in two was hidden).
median() { sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else if (NR) print (a[NR/2] + a[NR/2+1]) / 2 }'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# Two hosts for an origin-to-node benchmark: namespaces "$P-origin" ($NET.1) and "$P-node" ($NET.2), joined
# by one veth pair shaped by tc tbf at RATE ($1, default 1gbit) in both directions. The sourcing script
# sets P (a prefix unique per run) and NET (a /24 that exists only inside these namespaces) first; the
# namespaces, and whatever still runs in them, go with the clean-up.
netns_pair() {
  local rate=${1:-1gbit} side
  netns_cleanup() {
    bench_cleanup
    local ns
    for ns in "$P-origin" "$P-node"; do
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    done
  }
  trap netns_cleanup EXIT
  ip netns add "$P-origin"
  ip netns add "$P-node"
  ip link add "o$P" netns "$P-origin" type veth peer name "n$P" netns "$P-node"
  for side in "origin o$P 1" "node n$P 2"; do
    set -- $side
    ip -n "$P-$1" addr add "$NET.$3/24" dev "$2"
    ip -n "$P-$1" link set "$2" up
    ip -n "$P-$1" link set lo up
    tc -n "$P-$1" qdisc add dev "$2" root tbf rate "$rate" burst 256kb latency 50ms
  done
}
in_node() { ip netns exec "$P-node" "$@"; }

# serve_nginx NS LISTEN [HTTP_DIRECTIVES] [SERVER_DIRECTIVES]: nginx serving $WORK/www on LISTEN (one
# worker, sendfile; no access log unless HTTP_DIRECTIVES names one), in namespace NS, or on this host when
# NS is empty. Returns once its pid file is written and its worker runs, up to 5 s; fails if not. The
# worker's pid is then in NGX_WORKER (its CPU is what the benchmarks charge to nginx).
serve_nginx() {
  local ns=$1
  shift
  cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 256; }
http {
    sendfile on;
    ${2:-access_log off;}
    server {
        listen $1;
        root $WORK/www;
        ${3:-}
    }
}
EOF
  if [ -n "$ns" ]; then
    ip netns exec "$ns" nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/nginx-start.log" &
  else
    nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/nginx-start.log" &
  fi
  PIDS+=($!)
  local i
  for i in $(seq 50); do
    if [ -s "$WORK/nginx.pid" ]; then
      NGX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1 || true)
      [ -n "$NGX_WORKER" ] && return 0
    fi
    sleep 0.1
  done
  echo "nginx did not start: $(cat "$WORK/nginx-start.log" "$WORK/nginx-error.log" 2>/dev/null)" >&2
  return 1
}
# origin_nginx LISTEN [HTTP_DIRECTIVES] [SERVER_DIRECTIVES]: serve_nginx in namespace "$P-origin".
origin_nginx() { serve_nginx "$P-origin" "$@"; }

# relay_floor NS LISTEN ORIGIN: the bare verifying relay (examples/relay_floor.rs, built by the caller)
# answering GETs on LISTEN from ORIGIN, in namespace NS or on this host when NS is empty. Its pid (the
# relay itself, for its CPU) goes to RELAY_PID, its stderr to $WORK/relay.log.
relay_floor() {
  local pre=()
  [ -n "$1" ] && pre=(ip netns exec "$1")
  "${pre[@]}" "$ROOT/target/release/examples/relay_floor" "$2" "$3" 2>"$WORK/relay.log" >/dev/null &
  PIDS+=($!)
  RELAY_PID=$!
}
# relay_stalls: the results line counting the relay's reads that gave up their receive mark.
relay_stalls() {
  echo "Relay reads that gave up their receive mark after a 50 ms wait (a relay that stalled is no floor): $(grep -c 'mark dropped' "$WORK/relay.log" || true)."
}

# start_daemon NAME IP [DAEMON_ARGS...]: a daemon on this host with its data in $WORK/data-NAME and its proxy,
# upload and metrics listeners on free ports of IP, the extra arguments after them; the build is $BIN, or
# $DAEMON_BIN when set (`DAEMON_BIN=... start_daemon ...` for one call). Sets NAME_PID, NAME_PROXY and
# NAME_METRICS once it has logged "daemon started" (up to 20 s; the script fails otherwise).
start_daemon() {
  local name=$1 ip=$2 pp up mp i
  pp=$(free_port "$ip"); up=$(free_port "$ip"); mp=$(free_port "$ip")
  SHOAL_LOG=info "${DAEMON_BIN:-$BIN}" daemon --data-dir "$WORK/data-$name" --proxy-addr "$ip:$pp" \
    --upload-addr "$ip:$up" --metrics-addr "$ip:$mp" "${@:3}" 2>"$WORK/daemon-$name.log" >/dev/null &
  PIDS+=($!)
  printf -v "${name}_PID" '%s' "$!"
  for i in $(seq 200); do
    grep -q "daemon started" "$WORK/daemon-$name.log" 2>/dev/null && break
    if [ "$i" = 200 ]; then
      echo "$(basename "$0" .sh): daemon $name did not start" >&2; tail -n 5 "$WORK/daemon-$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  printf -v "${name}_PROXY" '%s' "$ip:$pp"
  printf -v "${name}_METRICS" '%s' "$ip:$mp"
}

# Starts a single-node daemon in "$P-node" as LABEL ($1) on 127.0.0.OCTET ($2) with the config YAML ($3);
# its proxy address goes to PROXY[LABEL] (the caller declares `declare -A PROXY`), its log to WORK.
node_daemon() {
  local ip=127.0.0.$2
  PROXY[$1]="$ip:65001"
  printf '%s\n' "$3" >"$WORK/$1.yaml"
  ip netns exec "$P-node" "$BIN" daemon --workers 1 --config "$WORK/$1.yaml" --proxy-addr "${PROXY[$1]}" \
      --upload-addr "$ip:65002" --metrics-addr "$ip:65003" --data-dir "$WORK/$1" 2>"$WORK/daemon-$1.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q "daemon started" "$WORK/daemon-$1.log" 2>/dev/null && break; sleep 0.1; done
}

# make_obj MIB: a copy of a random base file of MIB MiB as $WORK/www/<sha256>, with its own random first
# 4 KiB (a distinct sha256); prints the sha256. The base is made once per size and kept until the clean-up.
make_obj() {
  [ -f "$WORK/base-$1" ] || head -c "$(($1 << 20))" /dev/urandom >"$WORK/base-$1"
  cp "$WORK/base-$1" "$WORK/obj"
  dd if=/dev/urandom of="$WORK/obj" bs=4096 count=1 conv=notrunc status=none
  local oid; oid=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
  mv "$WORK/obj" "$WORK/www/$oid"
  chmod 644 "$WORK/www/$oid"
  echo "$oid"
}

# Hosts on one switch: bridge_switch makes a bridge in namespace "$P-sw"; bridge_host NAME OCTET makes
# namespace "$P-NAME" joined to it at $NET.OCTET (eth0, unshaped: callers add their tc qdiscs). The
# sourcing script sets P and NET and removes the "$P-*" namespaces in its clean-up.
bridge_switch() {
  ip netns add "$P-sw"
  ip -n "$P-sw" link add br0 type bridge
  ip -n "$P-sw" link set br0 up
}
bridge_host() {
  local ns="$P-$1"
  ip netns add "$ns"
  ip link add "v$P$2" type veth peer name eth0 netns "$ns"
  ip link set "v$P$2" netns "$P-sw"
  ip -n "$P-sw" link set "v$P$2" master br0 up
  ip -n "$ns" addr add "$NET.$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# A swarm on that switch (scripts/bench-swarm.sh, scripts/faults-net.sh): each member runs in its own
# namespace "$P-NAME". in_ns NAME CMD... runs CMD there; bg_ns NAME CMD... starts it in the background and
# records its PID ($! is the process itself: ip execs it, so it can be killed by PID).
in_ns() { local ns="$P-$1"; shift; ip netns exec "$ns" "$@"; }
bg_ns() { local ns="$P-$1"; shift; ip netns exec "$ns" "$@" & PIDS+=($!); }
# swarm_host NAME OCTET RATE: bridge_host, with its egress limited to RATE by tc tbf.
swarm_host() {
  bridge_host "$1" "$2"
  tc -n "$P-$1" qdisc add dev eth0 root tbf rate "$3" burst 256kb latency 50ms
}
# swarm_daemon NAME OCTET [ARGS...]: a node daemon in "$P-NAME" whose upload server listens on $NET.OCTET,
# joined to the scheduler at $SCHED (default $NET.3:8002); log in $WORK/NAME.log. BIN, NET and WORK are set
# by the caller; so is the cluster secret (SHOAL_CLUSTER_SECRET_FILE).
swarm_daemon() {
  bg_ns "$1" "$BIN" daemon --data-dir "$WORK/$1" --workers 1 --scheduler "${SCHED:-$NET.3:8002}" \
    --proxy-addr 127.0.0.1:65001 --upload-addr "$NET.$2:65002" --metrics-addr 127.0.0.1:65003 "${@:3}" \
    2>"$WORK/$1.log" >/dev/null
}
# swarm_wait_started COUNT: up to 10 s for COUNT daemon logs in WORK to say "daemon started".
swarm_wait_started() {
  local ready=0
  for _ in $(seq 1 100); do
    ready=$({ grep -l "daemon started" "$WORK"/*.log 2>/dev/null || true; } | wc -l)
    [ "$ready" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "swarm: $ready of $1 daemons started" >&2
  return 1
}
# Stops every started process, then whatever still runs inside this run's "$P-*" namespaces (children of
# killed shells included), and deletes those namespaces; keeps the logs as bench_cleanup does, removes WORK.
swarm_cleanup() {
  local p ns
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill -9 "$p" 2>/dev/null || true; fi; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -n "${SHOAL_BENCH_KEEP_LOGS:-}" ]; then mkdir -p "$SHOAL_BENCH_KEEP_LOGS"; cp "$WORK"/*.log "$SHOAL_BENCH_KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
