#!/usr/bin/env bash
# Installs the tools the test suite uses, on a fresh Debian machine, as root. Idempotent and quiet when
# everything is already there.
set -euo pipefail

need=()
command -v mount >/dev/null || need+=(mount)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-test-deps: cargo not found (the Rust toolchain comes with the machine)" >&2
  exit 1
fi
