#!/usr/bin/env bash
# Outages, over and over, on a loaded machine: proves the recovery bound of README's "Failures
# and recovery" (the operator ready again and caught up within 15 s of the API server's /readyz).
# Not part of the test suite (it takes long); run it after changing watches, readiness or retries.
#
#   e2e/outage-soak.sh [ROUNDS] [SECONDS...]     default: 20 rounds each of 3, 30 and 120 s
#
# Environment: MTLS_SOAK_STOP=etcd|apiserver (what is stopped; default etcd), MTLS_SOAK_HOGS
# (CPU-bound busy loops running throughout; default 1), MTLS_SOAK_BOUND (seconds; default 15).
# Each round: 20 identities issued, the outage, then — as soon as the API server's /readyz says
# ok — 10 identities created in a new namespace and 3 Secrets deleted; the round's time is from
# that /readyz until the operator answers /readyz 200 with all 30 identities Ready and every
# Secret back. Uses the control plane of e2e/cluster.sh (started if needed) and an operator
# process of its own; prints one line per round and a summary per outage length.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
rounds=${1:-20}
shift || true
durations=("$@")
[ ${#durations[@]} -gt 0 ] || durations=(3 30 120)
stop=${MTLS_SOAK_STOP:-etcd}
hogs=${MTLS_SOAK_HOGS:-1}
bound=${MTLS_SOAK_BOUND:-15}
export PATH="$("$here/build-k8s.sh"):$PATH"
dir=${MTLS_E2E_DIR:-$repo/target/e2e-cluster}
"$here/cluster.sh" status 2>/dev/null || "$here/cluster.sh" up
export KUBECONFIG="$dir/kubeconfig"
cargo build --locked --quiet --bin mtls-operator

run=soak-$(printf '%04x' $((RANDOM)))
port=$((20000 + RANDOM % 10000))
log="$dir/operator-$run.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$here/cluster.sh" start-apiserver >/dev/null 2>&1 || true
  kubectl delete mtlsauthority "$run" --wait=false >/dev/null 2>&1 || true
  kubectl delete ns -l "mtls-soak=$run" --wait=false >/dev/null 2>&1 || true
  kubectl delete secret -n mtls-system -l "mtls.io/authority=$run" >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/mtlsauthorities.mtls.io crd/mtlsidentities.mtls.io --timeout=60s >/dev/null
kubectl create namespace mtls-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: mtls.io/v1alpha1
kind: MtlsAuthority
metadata: {name: $run}
spec:
  trustBundle: {configMapName: $run-bundle, namespaceSelector: {matchLabels: {mtls-soak: $run}}}
EOF
target/debug/mtls-operator run --namespace mtls-system --listen "127.0.0.1:$port" > "$log" 2>&1 &
pids+=($!)
opready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/readyz")" = 200 ]; }
apiready() {
  curl -s --max-time 1 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "https://127.0.0.1:${MTLS_E2E_API_PORT:-16443}/readyz" 2>/dev/null | grep -qx ok
}
until opready; do sleep 0.2; done
for _ in $(seq "$hogs"); do (while :; do :; done) & pids+=($!); done
echo "operator log: $log; $hogs CPU hog(s); stopping $stop; bound ${bound}s"

identities() { # namespace from to
  for i in $(seq "$2" $(($3 - 1))); do
    printf -- '---\napiVersion: mtls.io/v1alpha1\nkind: MtlsIdentity\nmetadata: {name: id-%s, namespace: %s}\nspec: {authorityRef: %s}\n' "$i" "$1" "$run"
  done | kubectl apply -f - >/dev/null
}
namespace() { kubectl create namespace "$1" >/dev/null && kubectl label namespace "$1" "mtls-soak=$run" >/dev/null; }
# Identities Ready in $1 whose Secret exists.
issued() {
  local ready secrets
  ready=$(kubectl get mtlsid -n "$1" -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '=True$' || true)
  secrets=$(kubectl get secret -n "$1" -l app.kubernetes.io/managed-by=mtls-operator -o name | wc -l)
  echo $((ready < secrets ? ready : secrets))
}
now() { date +%s.%N; }

summary=()
total_failed=0
for d in "${durations[@]}"; do
  times=()
  failed=0
  for r in $(seq "$rounds"); do
    a="$run-$d-$r-a" b="$run-$d-$r-b"
    namespace "$a"
    identities "$a" 0 20
    until [ "$(issued "$a")" = 20 ]; do sleep 0.5; done
    "$here/cluster.sh" "stop-$stop" >/dev/null 2>&1
    sleep "$d"
    "$here/cluster.sh" "start-$stop" >/dev/null 2>&1
    until apiready; do sleep 0.1; done
    t0=$(now)
    namespace "$b"
    identities "$b" 0 10
    kubectl delete secret -n "$a" id-0-mtls id-1-mtls id-2-mtls >/dev/null
    took=""
    while :; do
      el=$(echo "$(now) - $t0" | bc)
      if opready && [ "$(issued "$a")" = 20 ] && [ "$(issued "$b")" = 10 ]; then took=$el; break; fi
      if [ "$(echo "$el > 120" | bc)" = 1 ]; then break; fi
      sleep 0.2
    done
    if [ -z "$took" ]; then
      failed=$((failed + 1)); echo "outage ${d}s round $r: NOT converged after 120 s"
    else
      times+=("$took")
      over=$(echo "$took > $bound" | bc)
      [ "$over" = 1 ] && failed=$((failed + 1))
      printf 'outage %ss round %s: ready and caught up %.1f s after the API server%s\n' "$d" "$r" "$took" \
        "$([ "$over" = 1 ] && echo " — OVER THE BOUND")"
    fi
    kubectl delete namespace "$a" "$b" --wait=false >/dev/null
  done
  stats=$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {if (NR) printf "min %.1f s, median %.1f s, max %.1f s", v[1], v[int((NR+1)/2)], v[NR]}')
  total_failed=$((total_failed + failed))
  summary+=("$stop down ${d} s: $((rounds - failed))/$rounds within ${bound} s; $stats")
done
echo "== summary ($(nproc) cores, $hogs CPU hog(s), $(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}"
[ "$total_failed" = 0 ]
