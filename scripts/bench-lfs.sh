#!/usr/bin/env bash
# The seed article's four Git LFS scenarios, with the real git + git-lfs clients and a real Git LFS server
# (giftless under gunicorn, local storage: it streams chunked, without Content-Length, and ignores Range):
#   direct   git-lfs straight from giftless, no proxy (the baseline of every round)
#   cold     through daemon A's proxy, every cache empty (A goes to the origin)
#   peer     through daemon B's proxy (own process, data dir and 127.0.0.x address, same standalone
#            scheduler): B takes A's pieces
#   local    through daemon A's proxy again, a fresh clone: A's cache
# and the same three with `shoal lfs agent` (git-lfs's standalone transfer agent; no http.proxy, no URL
# rewriting) against fresh daemons: acold, apeer, alocal.
# Each is a `git clone` (default; LFS files checked out by the smudge filter) or `git lfs pull` in a
# pointer-only clone (--op pull), of a repository whose LFS files have the given sizes. git-lfs runs with
# its default transfer settings (lfs.concurrenttransfers 8, basic adapter). Every round starts fresh
# daemons and scheduler with empty data dirs and runs all four in turn (direct first in odd rounds, last
# in even ones); the table gives median seconds and the median of the per-round ratios to direct.
# A "no transfer" row times the same operation with every object already in git-lfs's store
# (lfs.storage): git-lfs's own floor (hashing, writing the working tree) that no proxy can go under.
#
#   scripts/bench-lfs.sh [-s 64,256,16] [-r ROUNDS] [--op clone|pull] [-o OUTDIR]
#
# Needs git, git-lfs, curl and giftless (scripts/install-test-deps.sh installs them, as root) and a release
# build. Listens on 127.0.0.2 (giftless, as lfs-origin.test) and 127.0.0.8x only; every process is stopped
# and every file removed on exit, even when interrupted. Exits non-zero only if the set-up fails: a missed
# goal is a figure to report. Writes results.md, data.json and chart.svg to OUTDIR
# (default /var/tmp/shoal-bench/bench-lfs).
set -euo pipefail

SIZES=64,256,16
ROUNDS=3
OP=clone
OUT=/var/tmp/shoal-bench/bench-lfs
while [ $# -gt 0 ]; do
  case "$1" in
    -s) SIZES=$2; shift 2 ;;
    -r) ROUNDS=$2; shift 2 ;;
    --op) OP=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [-s MIB,MIB,...] [-r ROUNDS] [--op clone|pull] [-o OUTDIR]" >&2; exit 2 ;;
  esac
done
case "$OP" in clone|pull) ;; *) echo "bench-lfs: --op clone|pull" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=/opt/shoal-test-tools
if ! command -v git-lfs >/dev/null || [ ! -x "$TOOLS/giftless-venv/bin/gunicorn" ] || ! getent hosts lfs-origin.test >/dev/null; then
  echo "== installing test dependencies (git-lfs, giftless, lfs-origin.test)"
  scripts/install-test-deps.sh
fi
cargo build --release -q
BIN=$ROOT/target/release/shoal
mkdir -p "$OUT"

WORK=$(mktemp -d /var/tmp/shoal-bench-lfs.XXXXXX)
# One cluster secret for this run's scheduler and daemons (they read it from the environment).
"$BIN" secret generate > "$WORK/cluster.secret"
export SHOAL_CLUSTER_SECRET_FILE=$WORK/cluster.secret
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
wait_port() { # ip port what: up to 30 s
  local i
  for i in $(seq 300); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    [ "$i" = 300 ] || sleep 0.1
  done
  echo "bench-lfs: $3 did not listen on $1:$2" >&2; exit 1
}

# git with a private global config (git lfs install done in it), no system config and no proxy variables.
export HOME=$WORK/home GIT_CONFIG_GLOBAL=$WORK/home/.gitconfig GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
mkdir -p "$HOME"
printf '[user]\n\tname = Shoal Bench\n\temail = bench@shoal.invalid\n' >"$GIT_CONFIG_GLOBAL"
git lfs install --skip-repo >/dev/null

echo "== giftless on lfs-origin.test (127.0.0.2)"
GPORT=$(free_port 127.0.0.2)
mkdir -p "$WORK/lfs-storage"
# Action JWTs must outlive the advertised expires_in (900 s), or downloads get 401s.
cat >"$WORK/giftless.yaml" <<EOF
AUTH_PROVIDERS:
  - giftless.auth.allow_anon:read_write
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options:
        path: $WORK/lfs-storage
      action_lifetime: 900
PRE_AUTHORIZED_ACTION_PROVIDER:
  factory: giftless.auth.jwt:factory
  options:
    algorithm: HS256
    private_key: shoal-bench-key
    default_lifetime: 900
EOF
# One gunicorn worker per file, so git-lfs's concurrent downloads are served concurrently.
NFILES=$(echo "$SIZES" | tr ',' '\n' | grep -c .)
(cd "$WORK" && exec env GIFTLESS_CONFIG_FILE="$WORK/giftless.yaml" "$TOOLS/giftless-venv/bin/gunicorn" \
  --no-control-socket -w "$((NFILES + 1))" -b "127.0.0.2:$GPORT" --access-logfile "$WORK/giftless-access.log" \
  giftless.wsgi_entrypoint:app >"$WORK/giftless.log" 2>&1) &
PIDS+=($!)
wait_port 127.0.0.2 "$GPORT" giftless
origin_gets() { grep -c '"GET [^"]*/objects/storage/' "$WORK/giftless-access.log" || true; }

echo "== publishing a repository with LFS files of $SIZES MiB"
git init -q -b main "$WORK/src"
(
  cd "$WORK/src"
  git lfs track '*.bin' >/dev/null
  printf '[lfs]\n\turl = http://lfs-origin.test:%s/shoal/bench\n' "$GPORT" >.lfsconfig
  i=0
  for mib in $(echo "$SIZES" | tr ',' ' '); do
    i=$((i + 1))
    head -c "$((mib << 20))" /dev/urandom >"file$i-${mib}MiB.bin"
  done
  sha256sum ./*.bin >"$WORK/expected.sha256"
  git add -A && git commit -q -m "LFS objects"
  git init -q --bare -b main "$WORK/repo.git"
  git remote add origin "$WORK/repo.git"
  timeout 600 git push -q origin main
)
rm -rf "$WORK/src"
TOTAL_MIB=$(echo "$SIZES" | tr ',' '\n' | awk '{s+=$1} END {print s}')

# Daemons and scheduler, fresh each round.
SCHED_IP=127.0.0.82; A_IP=127.0.0.80; B_IP=127.0.0.81
a_PROXY=""; b_PROXY=""
stop() { # pid: SIGTERM, then wait (bounded)
  kill "$1" 2>/dev/null || true
  timeout 20 tail --pid="$1" -f /dev/null 2>/dev/null || kill -9 "$1" 2>/dev/null || true
}
fresh_cluster() {
  if [ -n "${a_PID:-}" ]; then stop "$a_PID"; fi
  if [ -n "${b_PID:-}" ]; then stop "$b_PID"; fi
  if [ -n "${S_PID:-}" ]; then stop "$S_PID"; fi
  PIDS=("${PIDS[0]}")  # giftless stays; the others were stopped above
  rm -rf "$WORK/data-a" "$WORK/data-b"
  local sp; sp=$(free_port $SCHED_IP)
  SCHED=$SCHED_IP:$sp
  "$BIN" scheduler --listen "$SCHED" 2>"$WORK/scheduler.log" >/dev/null &
  S_PID=$!; PIDS+=("$S_PID")
  wait_port $SCHED_IP "$sp" scheduler
  start_daemon a $A_IP --scheduler "$SCHED"
  start_daemon b $B_IP --scheduler "$SCHED"
}

# The timed operation: a clone (LFS files smudged) or an LFS pull into a pointer-only clone.
# fetch DEST [PROXY [agent]]
fetch() {
  local dest=$1 proxy=${2:-} mode=${3:-proxy} cfg=(-c lfs.concurrenttransfers=8)
  if [ "$mode" = agent ]; then
    export SHOAL_DAEMON=$proxy
    cfg+=(-c lfs.standalonetransferagent=shoal -c "lfs.customtransfer.shoal.path=$BIN")
    cfg+=(-c "lfs.customtransfer.shoal.args=lfs agent" -c lfs.customtransfer.shoal.concurrent=true)
  elif [ -n "$proxy" ]; then
    cfg+=(-c "http.proxy=http://$proxy" -c lfs.transfer.enablehrefrewrite=true)
  fi
  if [ "$OP" = pull ]; then
    GIT_LFS_SKIP_SMUDGE=1 git clone -q "file://$WORK/repo.git" "$dest"
    local t0; t0=$(now)
    (cd "$dest" && timeout 900 git "${cfg[@]}" lfs pull)
    secs "$t0" "$(now)"
  else
    local t0; t0=$(now)
    timeout 900 git "${cfg[@]}" clone -q "file://$WORK/repo.git" "$dest"
    secs "$t0" "$(now)"
  fi
}
check() { (cd "$1" && sha256sum --quiet -c "$WORK/expected.sha256") || { echo "bench-lfs: $2: files differ" >&2; exit 1; }; }

SCEN=(direct cold peer local acold apeer alocal floor)
declare -A T GETS
HANDOFF=""
run() { # scenario round
  local s=$1 r=$2 dest="$WORK/clone-$1" g0 t
  rm -rf "$dest"
  g0=$(origin_gets)
  case "$s" in
    direct) t=$(fetch "$dest") ;;
    cold|local) t=$(fetch "$dest" "$a_PROXY") ;;
    peer) t=$(fetch "$dest" "$b_PROXY") ;;
    acold|alocal) t=$(fetch "$dest" "$a_PROXY" agent) ;;
    apeer) t=$(fetch "$dest" "$b_PROXY" agent) ;;
  esac
  check "$dest" "$s"
  T[$s]+="$t "
  GETS[$s]+="$(($(origin_gets) - g0)) "
  printf '  round %s %-6s %8.3f s  origin object GETs %s\n' "$r" "$s" "$t" "$(($(origin_gets) - g0))"
  if [ "$s" = alocal ]; then
    # git-lfs's floor: the same operation with every object already in the LFS store (lfs.storage points
    # at this clone's), so nothing is transferred: hashing and writing the working tree remain.
    local fl="$WORK/clone-floor"
    rm -rf "$fl"
    if [ "$OP" = pull ]; then
      GIT_LFS_SKIP_SMUDGE=1 git clone -q "file://$WORK/repo.git" "$fl"
      local t0; t0=$(now)
      (cd "$fl" && timeout 300 git -c "lfs.storage=$dest/.git/lfs" lfs pull)
    else
      local t0; t0=$(now)
      timeout 300 git -c "lfs.storage=$dest/.git/lfs" clone -q "file://$WORK/repo.git" "$fl"
    fi
    t=$(secs "$t0" "$(now)")
    check "$fl" floor
    # What git-lfs's custom-agent protocol adds at least: the agent hands over a file (one copy, a real
    # write on file systems without reflinks) and git-lfs hashes it before keeping it.
    local h0 f; h0=$(now)
    for f in "$fl"/*.bin; do cp "$f" "$WORK/handoff.tmp" && sha256sum "$WORK/handoff.tmp" >/dev/null && rm -f "$WORK/handoff.tmp"; done
    HANDOFF+="$(secs "$h0" "$(now)") "
    rm -rf "$fl"
    T[floor]+="$t "
    GETS[floor]+="$(($(origin_gets) - g0)) "
    printf '  round %s %-6s %8.3f s  (objects already in lfs.storage, no transfer)\n' "$r" floor "$t"
  fi
  rm -rf "$dest"
}

echo "== $ROUNDS rounds of direct / cold / peer / local (proxy, then agent), $OP, ${TOTAL_MIB} MiB in $NFILES LFS files"
for r in $(seq "$ROUNDS"); do
  fresh_cluster
  if [ $((r % 2)) = 1 ]; then run direct "$r"; fi
  run cold "$r"
  run peer "$r"
  run local "$r"
  fresh_cluster
  run acold "$r"
  run apeer "$r"
  run alocal "$r"
  if [ $((r % 2)) = 0 ]; then run direct "$r"; fi
done

# Median seconds and median per-round ratio to direct.
read -ra D <<<"${T[direct]}"
declare -A MED RATIO
for s in "${SCEN[@]}"; do
  read -ra X <<<"${T[$s]}"
  MED[$s]=$(printf '%s\n' "${X[@]}" | median)
  RATIO[$s]=$(for i in "${!X[@]}"; do awk -v x="${X[$i]}" -v d="${D[$i]}" 'BEGIN { printf "%.4f\n", x / d }'; done | median)
done
declare -A GOAL=([direct]="" [cold]=1.05 [peer]=0.3 [local]=0.25 [acold]=1.05 [apeer]=0.3 [alocal]=0.25 [floor]="")
declare -A LABEL=(
  [direct]="direct from giftless (no proxy)"
  [cold]="cold: through the P2P proxy, empty caches"
  [peer]="hit in a remote peer's cache (B gets A's pieces)"
  [local]="hit in the local cache (same daemon, fresh clone)"
  [acold]="agent, cold (shoal lfs agent, no proxy set-up)"
  [apeer]="agent, hit in a remote peer's cache"
  [alocal]="agent, hit in the local cache"
  [floor]="no transfer: objects already in the LFS store (git-lfs floor)"
)
{
  echo
  echo "| git $OP, LFS files $SIZES MiB ($TOTAL_MIB MiB), median of $ROUNDS interleaved rounds | seconds | MB/s | ratio to direct (median per round) | goal | origin object GETs per round |"
  echo "|---|---|---|---|---|---|"
  for s in "${SCEN[@]}"; do
    goal=${GOAL[$s]}
    verdict=""
    if [ -n "$goal" ]; then
      verdict=$(awk -v r="${RATIO[$s]}" -v g="$goal" 'BEGIN { print (r <= g ? "≤ " g "× met" : "≤ " g "× missed") }')
    fi
    printf '| %s | %.2f | %.0f | %.2f× | %s | %s |\n' "${LABEL[$s]}" "${MED[$s]}" \
      "$(awk -v m="$TOTAL_MIB" -v t="${MED[$s]}" 'BEGIN { print m * 1048576 / t / 1e6 }')" "${RATIO[$s]}" "$verdict" "${GETS[$s]% }"
  done
  read -ra F <<<"${T[floor]}"
  for s in local alocal; do
    read -ra X <<<"${T[$s]}"
    fr=$(for i in "${!X[@]}"; do awk -v x="${X[$i]}" -v f="${F[$i]}" 'BEGIN { printf "%.4f\n", x / f }'; done | median)
    printf '\n%s vs the git-lfs floor (median per round): %.2f× (goal: agent within 1.05×)\n' "$s" "$fr"
  done
  read -ra H <<<"$HANDOFF"
  read -ra X <<<"${T[alocal]}"
  hr=$(for i in "${!X[@]}"; do awk -v x="${X[$i]}" -v f="${F[$i]}" -v h="${H[$i]}" 'BEGIN { printf "%.4f\n", x / (f + h) }'; done | median)
  printf '\nalocal vs the floor plus the hand-over (one copy + one sha256 of the objects: %s s per round): %.2f×\n' "${HANDOFF% }" "$hr"
  echo
  echo "Per-round seconds: $(for s in "${SCEN[@]}"; do printf '%s [%s] ' "$s" "${T[$s]% }"; done)"
} | tee "$OUT/results.md"

{
  printf '{"title": "git %s of %s MiB of LFS files, median of %s rounds (2-vCPU VM)", "scenarios": [' "$OP" "$TOTAL_MIB" "$ROUNDS"
  sep=""
  for s in "${SCEN[@]}"; do
    g=${GOAL[$s]:-null}
    printf '%s{"name": "%s", "seconds": %s, "ratio": %s, "goal": %s}' "$sep" "$s" "${MED[$s]}" "${RATIO[$s]}" "$g"
    sep=", "
  done
  printf ']}\n'
} >"$OUT/data.json"
if "$ROOT/scripts/bench-chart.sh" lfs "$OUT/data.json" "$OUT/chart.svg"; then
  echo "chart: $OUT/chart.svg"
else
  echo "bench-lfs: warning: the chart was not drawn (table above and in $OUT/results.md)" >&2
fi
echo "results: $OUT/results.md"
