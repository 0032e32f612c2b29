#!/usr/bin/env bash
# Outages, over and over, on a loaded machine: proves the recovery bound of README's "Failures
# and recovery" (the operator ready again and caught up within 15 s of the API server's /readyz).
# Not part of the test suite (it takes long); run it after changing watches, readiness or retries.
#
#   e2e/outage-soak.sh [ROUNDS] [SECONDS...]     default: 20 rounds each of 3, 30 and 120 s
#
# Environment: MTLS_SOAK_BIN (an operator binary; default: a debug build), MTLS_SOAK_STOP=
# etcd|apiserver (what is stopped; default etcd), MTLS_SOAK_HOGS
# (CPU-bound busy loops running throughout; default 1), MTLS_SOAK_BOUND (seconds; default 15).
# Each round: 20 identities issued, the outage, then — as soon as the API server's /readyz says
# ok — 10 identities created in a new namespace and 3 Secrets deleted; the round's time is from
# the moment the API server has served those writes (after a long etcd outage that can be a minute
# after its /readyz; the lag is printed too) until the operator answers /readyz 200 with all 30
# identities Ready and every Secret back. Uses the control plane of e2e/cluster.sh (started if
# needed) and an operator process of its own; prints one line per round and a summary per outage
# length.
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
operator=${MTLS_SOAK_BIN:-}
if [ -z "$operator" ]; then
  cargo build --locked --quiet --bin mtls-operator
  operator=target/debug/mtls-operator
fi

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
"$operator" run --namespace mtls-system --listen "127.0.0.1:$port" > "$log" 2>&1 &
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
# Identities in $1 that the API server's watch cache holds.
cached() {
  kubectl get --raw "/apis/mtls.io/v1alpha1/namespaces/$1/mtlsidentities?resourceVersion=0" 2>/dev/null |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))' 2>/dev/null || echo 0
}
now() { date +%s.%N; }
el() { echo "$(now) - $t1" | bc; } # seconds since the round's writes were served
spread() { sort -n | awk '{v[NR]=$1} END {if (NR) printf "min %.1f s, median %.1f s, max %.1f s", v[1], v[int((NR+1)/2)], v[NR]}'; }

summary=()
total_failed=0
for d in "${durations[@]}"; do
  times=() lags=()
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
    # The API server's /readyz passing does not mean it serves every resource again: after a long
    # etcd outage each of its etcd connections reconnects on its own gRPC backoff, and writes on
    # the ones still backing off wait. These writes (a namespace, identities, Secrets) having
    # completed is when the API served what the operator needs; the bound counts from then.
    t1=$(now)
    api_lag=$(echo "$t1 - $t0" | bc)
    took="" t_ready="-" t_a="-" t_b="-" t_cache="-"
    while :; do
      # Milestones, to tell which part is slow, each stamped when its check has passed: the
      # operator ready, the deleted Secrets back, the new identities issued, and the API server's
      # watch cache showing the new identities (a list at resourceVersion=0 is served from that
      # cache: what every watch sees).
      [ "$t_ready" = - ] && opready && t_ready=$(el)
      [ "$t_a" = - ] && [ "$(issued "$a")" = 20 ] && t_a=$(el)
      [ "$t_b" = - ] && [ "$(issued "$b")" = 10 ] && t_b=$(el)
      [ "$t_cache" = - ] && [ "$(cached "$b")" = 10 ] && t_cache=$(el)
      if [ "$t_ready" != - ] && [ "$t_a" != - ] && [ "$t_b" != - ] && opready; then took=$(el); break; fi
      el=$(el)
      if [ "$(echo "$el > 120" | bc)" = 1 ]; then break; fi
      sleep 0.2
    done
    milestones=$(printf 'the API server took %.1f s to serve the writes; then: operator ready %.1f, Secrets back %.1f, new issued %.1f, in the API cache %.1f' \
      "$api_lag" "${t_ready/-/-1}" "${t_a/-/-1}" "${t_b/-/-1}" "${t_cache/-/-1}")
    if [ -z "$took" ]; then
      failed=$((failed + 1)); echo "outage ${d}s round $r: NOT converged after 120 s ($milestones)"
    else
      times+=("$took") lags+=("$api_lag")
      over=$(echo "$took > $bound" | bc)
      [ "$over" = 1 ] && failed=$((failed + 1))
      printf 'outage %ss round %s: ready and caught up %.1f s after the API served%s (%s)\n' "$d" "$r" "$took" \
        "$([ "$over" = 1 ] && echo " — OVER THE BOUND")" "$milestones"
    fi
    kubectl delete namespace "$a" "$b" --wait=false >/dev/null
  done
  stats="operator $(printf '%s\n' "${times[@]}" | spread); the API server's own lag after /readyz $(printf '%s\n' "${lags[@]}" | spread)"
  total_failed=$((total_failed + failed))
  summary+=("$stop down ${d} s: $((rounds - failed))/$rounds within ${bound} s; $stats")
done
echo "== summary ($(nproc) cores, $hogs CPU hog(s), $(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}"
[ "$total_failed" = 0 ]
