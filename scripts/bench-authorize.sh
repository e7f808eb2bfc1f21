#!/usr/bin/env bash
# What the authorization probe costs a cache hit: time to first byte of a cached object through a Shoal
# daemon, for a public object (no probe: the unauthenticated path) beside the same object asked with
# credentials — the origin's yes remembered (engine.authorize_ttl), asked with HEAD every time (a token),
# and asked with a one-byte GET every time (a signed URL) — plus a direct GET from the origin, all
# interleaved round by round in one run. The origin sits in its own namespace across a veth link shaped by
# tc tbf (1 Gbit), and answers every request after --rtt-ms: this kernel has no netem, so the origin adds
# the round trip itself. A probe then costs what it would on a network (one round trip plus the origin's
# own work), not a loopback hop.
# Prints per-case medians in ms and each as a ratio to the public hit, as markdown.
#
#   sudo scripts/bench-authorize.sh [-r ROUNDS=15] [--rtt-ms 10] [-s SIZE_KIB=1024]
#
# Needs root (ip netns, tc), python3 (the origin: http.server with per-token checks, HEAD and Range),
# curl, a release build. Namespaces and processes are removed on exit, even when interrupted.
set -euo pipefail

ROUNDS=15
RTT_MS=10
SIZE_KIB=1024
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    --rtt-ms) RTT_MS=$2; shift 2 ;;
    -s) SIZE_KIB=$2; shift 2 ;;
    *) echo "usage: $0 [-r ROUNDS] [--rtt-ms MS] [-s SIZE_KIB]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-authorize: needs root (ip netns, tc)" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -q
BIN=$ROOT/target/release/shoal
WORK=$(mktemp -d /var/tmp/shoal-bench-authz.XXXXXX)
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"

P=sha$$                     # namespace prefix, unique per run
NET=10.214.0                # addresses exist only inside this run's namespaces
netns_pair 1gbit

echo "== origin: ${SIZE_KIB} KiB objects, public and per-token, ${RTT_MS} ms round trip"
mkdir -p "$WORK/www"
head -c "$((SIZE_KIB << 10))" /dev/urandom >"$WORK/obj"
OID=$(sha256sum "$WORK/obj" | cut -d' ' -f1)
mv "$WORK/obj" "$WORK/www/$OID"
cat >"$WORK/origin.py" <<'EOF'
# Serves WWW/<oid> at /public/<oid> to anyone and at /private/<oid> to token A only (?token=,
# ?X-Amz-Signature= or Authorization: Bearer); HEAD and single ranges supported. Every answer waits
# DELAY ms first: the network round trip a probe or a fetch pays.
import http.server, os, sys, time, urllib.parse
WWW, DELAY = sys.argv[3], float(sys.argv[4]) / 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, body):
        time.sleep(DELAY)
        u = urllib.parse.urlsplit(self.path)
        kind, _, name = u.path.strip("/").partition("/")
        q = urllib.parse.parse_qs(u.query)
        tok = (q.get("token") or q.get("X-Amz-Signature") or [None])[0]
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "): tok = auth[7:]
        path = os.path.join(WWW, os.path.basename(name))
        if kind not in ("public", "private") or not os.path.exists(path):
            return self.status(404)
        if kind == "private" and tok != "A":
            return self.status(403 if tok else 401)
        data = open(path, "rb").read()
        code, rng = 200, self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            s, _, e = rng[6:].partition("-")
            s, e = int(s), min(int(e) if e else len(data) - 1, len(data) - 1)
            code, part = 206, data[s:e + 1]
        else:
            part = data
        self.send_response(code)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206: self.send_header("Content-Range", f"bytes {s}-{e}/{len(data)}")
        self.end_headers()
        if body: self.wfile.write(part)
    def status(self, code):
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self): self.answer(True)
    def do_HEAD(self): self.answer(False)
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
EOF
ip netns exec "$P-origin" python3 "$WORK/origin.py" "$NET.1" 8080 "$WORK/www" "$RTT_MS" 2>"$WORK/origin.log" &
PIDS+=($!)
ORIGIN="http://$NET.1:8080"
for _ in $(seq 50); do in_node curl -s -o /dev/null "$ORIGIN/public/$OID" && break; sleep 0.1; done

# Two single-node daemons in the node namespace: default authorize_ttl (60s) and 0s (ask every time).
declare -A PROXY
node_daemon remember 10 "engine: {authorize_ttl: 60s}"
node_daemon ask 11 "engine: {authorize_ttl: 0s}"

ttfb() { # $1 label, then curl args: appends the time to first byte (ms) to $WORK/$1.ms
  local label=$1; shift
  local out code t
  out=$(in_node curl -sS --noproxy '' -o /dev/null -w '%{http_code} %{time_starttransfer}' "$@")
  code=${out%% *}; t=${out#* }
  [ "$code" = 200 ] || { echo "$label: HTTP $code" >&2; exit 1; }
  awk -v t="$t" 'BEGIN { printf "%.2f\n", t * 1000 }' >>"$WORK/$label.ms"
}
via() { echo "-x http://${PROXY[$1]}"; }
pub="$ORIGIN/public/$OID"; tok="$ORIGIN/private/$OID?token=A"
signed() { echo "$ORIGIN/private/$OID?X-Amz-Signature=A&X-Amz-Date=$RANDOM"; }

echo "== filling both caches (misses), then $ROUNDS interleaved rounds"
for d in remember ask; do
  # shellcheck disable=SC2046
  for u in "$pub" "$tok"; do in_node curl -sS --noproxy '' $(via $d) -o /dev/null "$u"; done
done
for _ in $(seq "$ROUNDS"); do
  ttfb direct "$tok"
  # shellcheck disable=SC2046
  {
    ttfb public-hit $(via remember) "$pub"
    ttfb remembered $(via remember) "$tok"
    ttfb head-probe $(via ask) "$tok"
    ttfb get-probe $(via ask) "$(signed)"
  }
done

echo
echo "| hit of a ${SIZE_KIB} KiB object, ${RTT_MS} ms RTT to the origin | TTFB median (ms) | vs public hit |"
echo "|---|---|---|"
base=$(median <"$WORK/public-hit.ms")
for l in public-hit remembered head-probe get-probe direct; do
  m=$(median <"$WORK/$l.ms")
  awk -v l="$l" -v m="$m" -v b="$base" 'BEGIN { printf "| %s | %.2f | %.2fx |\n", l, m, (b > 0 ? m / b : 0) }'
done
echo
echo "direct: a GET straight from the origin (what a miss costs at least). head-probe / get-probe: the"
echo "origin asked on every hit (authorize_ttl 0s); remembered: its yes reused within authorize_ttl."
