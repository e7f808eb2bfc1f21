#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (as root), then runs every test.
# Usage: scripts/test.sh            (CI calls exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/install-helm-deps.sh

echo "== cargo fmt --check, cargo clippy (warnings are errors)"
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings

# Release mode: the storage and crash tests move tens of MiB per case and the kill -9 test times writes.
echo "== cargo test (all engines are exercised inside each storage test)"
cargo test --release --all-targets --no-fail-fast

# The daemon must also come up on the sync engine alone, as it does where seccomp blocks io_uring.
echo "== cargo test, io engine forced to sync by the environment"
SHOAL_IO_ENGINE=sync cargo test --release --test daemon --no-fail-fast

# Every parser of outside bytes under libFuzzer for 30 s, two at a time, on the stable toolchain: a crash
# fails the suite. The long runs (10 M executions each) are scripts/fuzz.sh's, reported in docs/reliability.md.
echo "== fuzz: every target for 30 s"
scripts/fuzz.sh -t 30 -n
