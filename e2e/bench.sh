#!/usr/bin/env bash
# The issuance benchmark, reproducibly: builds the benchmark (release profile) and the operator,
# brings up a private local control plane (its own state directory and ports, so it never
# collides with the demo's or the test suite's), runs
#   cargo bench --bench issuance -- "$@"
# against it, and takes the control plane down again, whatever happens.
#
#   e2e/bench.sh                                  1000 identities, 10 namespaces, 32 creates in flight
#   e2e/bench.sh --identities 2000 --concurrency 64
#   MTLS_CONCURRENCY=64 e2e/bench.sh              operator settings go through its environment
#
# The output is also saved under target/bench-logs/, next to the operator's log.
#
# The scale benchmark (each part behind its own flag; see e2e/bench/issuance.rs):
#   e2e/bench.sh --identities 10000 --namespaces 100 --unrelated-secrets 50000 --idle 60 --rotation --ceiling \
#       --chart bench-results/scale-10000.png
# Profiling: MTLS_BENCH_CARGO_FLAGS=--no-default-features builds the operator with glibc's malloc
# instead of jemalloc, and MTLS_BENCH_WRAPPER="heaptrack -o target/bench-logs/heap" starts it under
# heaptrack (see BENCHMARKS.md, "Profiling the heap").
# MTLS_BENCH_KEEP_CLUSTER=1 leaves the control plane up afterwards, so that the next run reuses the
# unrelated Secrets instead of creating them again (e2e/cluster.sh down with the same
# MTLS_E2E_DIR takes it down).
set -euo pipefail
cd "$(dirname "$0")/.."

# Fixed on purpose: never the state directory or ports of e2e/test.sh or e2e/demo.sh.
export MTLS_E2E_DIR="$PWD/target/bench-cluster"
export MTLS_E2E_API_PORT=26443
export MTLS_E2E_ETCD_PORT=33790

bin=$(e2e/build-k8s.sh)
export PATH="$bin:$PATH"

# Compile first, so the control plane does not idle (or time out) during a cold release build.
cargo bench --locked ${MTLS_BENCH_CARGO_FLAGS:-} --bench issuance --no-run

down() {
  local rc=$?
  if [ -n "${MTLS_BENCH_KEEP_CLUSTER:-}" ]; then
    echo "MTLS_BENCH_KEEP_CLUSTER is set: the control plane stays up ($MTLS_E2E_DIR)" >&2
  else
    e2e/cluster.sh down || true
  fi
  exit "$rc"
}
trap down EXIT
e2e/cluster.sh up

export MTLS_E2E_KUBECONFIG="$MTLS_E2E_DIR/kubeconfig"
mkdir -p target/bench-logs
out="target/bench-logs/bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
cargo bench --locked ${MTLS_BENCH_CARGO_FLAGS:-} --bench issuance -- "$@" 2>&1 | tee "$out"
echo "saved to $out" >&2
