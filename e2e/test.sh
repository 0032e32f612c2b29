#!/usr/bin/env bash
# The whole test suite: packaging checks (e2e/check-chart.sh), unit tests (including the CRD
# drift check) and the end-to-end tests against a real control plane and a real node, which
# this script brings up first and takes down afterwards; then the check scripts that install
# for real on a node of their own: the chart (e2e/helm-check.sh), the example workloads
# (e2e/workloads-check.sh) and the node's own bring-up and clean teardown (e2e/node-check.sh).
#
# The node's kubelet syncs mounted Secrets every 10 s here (upstream's default is 1m), so that
# the rotations on real pods (e2e/tests/node.rs) take minutes, not a quarter of an hour; run
# `MTLS_E2E_KUBELET_SYNC=1m e2e/node.sh up && cargo test --test e2e_node` for the defaults.
#
# A control plane + node that is already running (e2e/node.sh up) is reused and left running,
# and the check scripts are skipped then (they need the machine's only node to themselves):
# arguments go to `cargo test` (a filter, say).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { printf '[test] %s (%d s)\n' "$*" $((SECONDS - t0)) >&2; }
# Packaging first (fast once helm is cached): helm lint, chart/CRD/manifest drift, hadolint.
e2e/check-chart.sh
bin=$(e2e/build-k8s.sh node)
export PATH="$bin:$PATH"
step "release build and images (e2e/image.sh build)"
e2e/image.sh build >/dev/null
e2e/image.sh check
started=0
if ! e2e/node.sh status 2>/dev/null; then
  step "control plane and node up"
  MTLS_E2E_KUBELET_SYNC=${MTLS_E2E_KUBELET_SYNC:-10s} e2e/node.sh up
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then e2e/cluster.sh down; fi; }
trap cleanup EXIT
e2e/image.sh import >/dev/null
# The alerting end-to-end test runs a real Prometheus (built with promtool by check-chart.sh).
MTLS_E2E_PROMETHEUS_BIN=$(e2e/build-prometheus.sh)
export MTLS_E2E_PROMETHEUS_BIN
export MTLS_E2E_KUBECONFIG="${MTLS_E2E_DIR:-$PWD/target/e2e-cluster}/kubeconfig"
step "cargo test"
cargo test --locked --lib --bins --tests -- "$@"
if [ "$started" = 1 ]; then
  e2e/cluster.sh down
  started=0
  for check in helm-check workloads-check node-check; do
    step "e2e/$check.sh"
    "e2e/$check.sh"
  done
fi
step "all passed"
