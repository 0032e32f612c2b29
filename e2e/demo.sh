#!/usr/bin/env bash
# The main job, on a local control plane: bring it up, install the CRDs, start the operator,
# apply the example authority and identities, wait until they are Ready, and prove the issued
# files work with a real mutual-TLS handshake (openssl s_server / s_client).
# Stop everything with: e2e/cluster.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MTLS_E2E_DIR:-$PWD/target/e2e-cluster}
bin=$(e2e/build-k8s.sh)
export PATH="$bin:$PATH"
e2e/cluster.sh up
export KUBECONFIG="$dir/kubeconfig"

echo "==> building the operator"
cargo build --locked --quiet --bin mtls-operator
echo "==> installing the CRDs"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd/mtlsauthorities.mtls.io crd/mtlsidentities.mtls.io --timeout=60s
kubectl create namespace mtls-system --dry-run=client -o yaml | kubectl apply -f -

echo "==> starting the operator (log: $dir/operator.log)"
if [ -f "$dir/operator.pid" ] && kill -0 "$(cat "$dir/operator.pid")" 2>/dev/null; then
  kill "$(cat "$dir/operator.pid")"; sleep 1
fi
target/debug/mtls-operator run --namespace mtls-system --listen 127.0.0.1:18080 > "$dir/operator.log" 2>&1 &
echo $! > "$dir/operator.pid"
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:18080/readyz >/dev/null || { tail -20 "$dir/operator.log"; exit 1; }

echo "==> applying the examples"
kubectl apply -f manifests/examples/authority.yaml -f manifests/examples/identities.yaml
kubectl wait --for=condition=Ready mtlsauthority/default --timeout=60s
kubectl wait --for=condition=Ready -n demo mtlsidentity/web mtlsidentity/client --timeout=60s
kubectl get mtlsauthorities,mtlsidentities -A -o wide
echo "==> the trust bundle ConfigMap, published in every namespace"
kubectl get configmap -A -l mtls.io/authority=default,'!mtls.io/bundle-history'

echo "==> mutual TLS between demo/web and demo/client with the issued Secrets"
files=$(mktemp -d)
trap 'rm -rf "$files"; [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true' EXIT
for id in web client; do
  mkdir -p "$files/$id"
  for k in tls.crt tls.key ca.crt; do
    kubectl get secret -n demo "$id-mtls" -o "go-template={{index .data \"$k\" | base64decode}}" > "$files/$id/$k"
  done
done
openssl x509 -in "$files/web/tls.crt" -noout -subject -ext subjectAltName -enddate
port=18443
# s_server stops at end of its stdin: keep it open for as long as the demo needs.
openssl s_server -accept "127.0.0.1:$port" -Verify 2 -verify_return_error \
  -cert "$files/web/tls.crt" -key "$files/web/tls.key" -CAfile "$files/web/ca.crt" < <(sleep 30) > "$files/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
if ! out=$(echo "hello over mTLS" | openssl s_client -brief -connect "127.0.0.1:$port" -verify_return_error \
  -verify_hostname web.demo.svc -cert "$files/client/tls.crt" -key "$files/client/tls.key" \
  -CAfile "$files/client/ca.crt" 2>&1); then
  echo "mutual TLS handshake FAILED:"; echo "$out"; cat "$files/server.log"; exit 1
fi
echo "$out" | grep -E "Protocol version|Verification|Peer certificate"
sleep 0.5
grep -q "hello over mTLS" "$files/server.log" || { echo "server did not receive the message:"; cat "$files/server.log"; exit 1; }
echo "server (web) verified the client certificate: $(grep -m1 'depth=0' "$files/server.log")"
echo "server received: $(grep -m1 'hello over mTLS' "$files/server.log")"
echo
echo "The operator keeps running (log: $dir/operator.log). Try: kubectl get mtlsid -A; kubectl describe mtlsid -n demo web"
echo "Stop everything: e2e/cluster.sh down"
