#!/usr/bin/env bash
# Installs the tools the test suite uses, on a fresh Debian machine, as root. Idempotent and quick when
# everything is already there.
#   - curl, git, git-lfs, mount, tar, gzip, g++ (Debian packages)
#   - e2fsprogs (mkfs.ext4) and mount's losetup: the power-loss test puts ext4 on a loop device over its
#     own FUSE image (tests/power_loss.rs; needs /dev/fuse and loop devices, which the kernel provides)
#   - docker-registry (distribution 2.8), skopeo and containerd (Debian packages): a real registry and
#     real clients for the registry-mirror tests (tests/registry_mirror.rs; containerd runs as a test
#     process with its own root and socket, content only)
#   - giftless, a real Git LFS server, in a venv under /opt/shoal-test-tools (its wheel declares no
#     dependencies, so they are listed here; PyJWT 2.10+ answers 401 to every transfer)
#   - huggingface_hub, the real Hugging Face client, in a venv under /opt/shoal-test-tools (tests/hf_harness.rs
#     and the mirror tests run its hf_hub_download / snapshot_download against a local HF-like origin)
#   - libfaketime (Debian package): tests/clock_step.rs steps one daemon's wall clock, never the machine's
#   - an /etc/hosts name for the test LFS origin: git-lfs never proxies loopback literals or localhost
set -euo pipefail

TOOLS=/opt/shoal-test-tools
need=()
# jemalloc (the binary's allocator, built from source by tikv-jemalloc-sys) needs make beside the C compiler.
command -v make >/dev/null || need+=(make)
# libfuzzer-sys compiles libFuzzer (C++) for the suite's short fuzz run (scripts/fuzz.sh).
command -v c++ >/dev/null || need+=(g++)
command -v mount >/dev/null || need+=(mount)
command -v losetup >/dev/null || need+=(mount)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
command -v git-lfs >/dev/null || need+=(git-lfs)
command -v python3 >/dev/null || need+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v tar >/dev/null || need+=(tar)
command -v gzip >/dev/null || need+=(gzip)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v containerd >/dev/null || need+=(containerd)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)

as_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: need root for: $*" >&2
    exit 1
  fi
}

if [ ${#need[@]} -gt 0 ]; then
  as_root "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-test-deps: cargo not found (the Rust toolchain comes with the machine)" >&2
  exit 1
fi

venv=$TOOLS/giftless-venv
if [ ! -x "$venv/bin/gunicorn" ] || ! "$venv/bin/python" -c 'import giftless' 2>/dev/null; then
  mkdir -p "$TOOLS"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "giftless==0.6.2" "flask~=2.3" flask-marshmallow "marshmallow<4" webargs figcan pyyaml "PyJWT<2.10" \
    python-dateutil cryptography flask-classful werkzeug cachetools typing-extensions python-dotenv \
    importlib-metadata gunicorn
fi

hf_venv=$TOOLS/hf-venv
HF_HUB_VERSION=2.4.0
if ! "$hf_venv/bin/python" -c "import huggingface_hub, sys; sys.exit(huggingface_hub.__version__ != '$HF_HUB_VERSION')" \
  2>/dev/null; then
  mkdir -p "$TOOLS"
  python3 -m venv "$hf_venv"
  "$hf_venv/bin/pip" install -q --disable-pip-version-check "huggingface_hub==$HF_HUB_VERSION"
fi

if ! grep -qE '^127\.0\.0\.2[[:space:]]+lfs-origin\.test' /etc/hosts; then
  as_root "adding lfs-origin.test to /etc/hosts"
  echo "127.0.0.2 lfs-origin.test" >> /etc/hosts
fi
