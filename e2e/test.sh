#!/usr/bin/env bash
# The whole test suite: packaging checks (e2e/check-chart.sh), unit tests (including the CRD
# drift check) and the end-to-end tests,
# against a real control plane this script brings up first and takes down afterwards. A control
# plane that is already running (e2e/cluster.sh up) is reused and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
# Packaging first (fast once helm is cached): helm lint, chart/CRD/manifest drift, hadolint.
e2e/check-chart.sh
bin=$(e2e/build-k8s.sh)
export PATH="$bin:$PATH"
started=0
if ! e2e/cluster.sh status 2>/dev/null; then
  e2e/cluster.sh up
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then e2e/cluster.sh down; fi; }
trap cleanup EXIT
export MTLS_E2E_KUBECONFIG="${MTLS_E2E_DIR:-$PWD/target/e2e-cluster}/kubeconfig"
cargo test --locked --lib --bins --tests -- "$@"
