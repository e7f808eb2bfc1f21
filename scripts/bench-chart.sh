#!/usr/bin/env bash
# Draws one benchmark chart with matplotlib in a venv it creates on first use (SHOAL_BENCH_VENV, default
# /opt/shoal-bench-venv; apt-get install python3-venv when the venv module is missing and we are root).
#
#   scripts/bench-chart.sh lfs|local|swarm DATA.json OUT.svg
#
# The benchmark scripts call it after printing their table and only warn when it fails.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 lfs|local|swarm DATA.json OUT.svg" >&2; exit 2; }
VENV=${SHOAL_BENCH_VENV:-/opt/shoal-bench-venv}
HERE=$(cd "$(dirname "$0")" && pwd)

if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "bench-chart: python3-venv missing (needs root to install)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq python3-venv >/dev/null
  fi
  timeout 60 python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
fi
timeout 120 "$VENV/bin/python" "$HERE/bench_chart.py" "$1" "$2" "$3"
