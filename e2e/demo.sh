#!/usr/bin/env bash
# The main job, on a local cluster with a real node: bring up the control plane and the node
# (e2e/node.sh: kubelet + containerd, cluster DNS), build the operator's image and the workloads'
# images here (no registry), install the operator with its Helm chart, apply the examples as
# shipped (authority, identities, and the nginx + curl workloads with only their image names
# substituted), and show the client pod's calls: mutual TLS with the Secrets the operator wrote.
# Everything keeps running; `e2e/cluster.sh env` prints how to reach it, `e2e/cluster.sh down`
# stops it all. The first run builds the binaries and images (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
export MTLS_E2E_DIR=${MTLS_E2E_DIR:-$PWD/target/e2e-cluster}
export PATH="$(e2e/build-k8s.sh node):$(e2e/build-helm.sh):$PATH"
export KUBECONFIG="$MTLS_E2E_DIR/kubeconfig"
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)

echo "==> control plane and node"
e2e/node.sh up
echo "==> images: the operator (release build), nginx and curl (from Debian's packages)"
e2e/image.sh import >/dev/null
e2e/workload-images.sh import

echo "==> helm install mtls-operator (the examples bring their own authority)"
helm upgrade --install mtls-operator charts/mtls-operator -n mtls-system --create-namespace \
  --set image.repository=localhost/mtls-operator --set "image.tag=$version" --set image.pullPolicy=Never \
  --set authority.create=false --wait --timeout 180s
kubectl -n mtls-system get pods -o wide

echo "==> the examples: authority, identities, workloads"
kubectl apply -f manifests/examples/authority.yaml -f manifests/examples/identities.yaml
e2e/workload-images.sh workloads | kubectl apply -f -   # workloads.yaml with the images built here
kubectl wait --for=condition=Ready mtlsauthority/default --timeout=60s
kubectl wait --for=condition=Ready -n demo mtlsidentity/web mtlsidentity/client --timeout=60s
kubectl -n demo wait --for=condition=Available deployment/web deployment/client --timeout=120s
kubectl get mtlsauthorities,mtlsidentities -A -o wide
echo "==> the trust bundle ConfigMap, published in every namespace"
kubectl get configmap -A -l mtls.io/authority=default,'!mtls.io/bundle-history'
kubectl -n demo get pods -o wide

echo "==> the client pod calls https://web.demo.svc:8443/ every 10 s with its certificate; nginx verifies it"
verified() { kubectl -n demo logs deploy/client 2>/dev/null | grep -c '^hello, verified client' || true; }
for _ in $(seq 60); do [ "$(verified)" -ge 2 ] && break; sleep 1; done
kubectl -n demo logs deploy/client --tail=3
[ "$(verified)" -ge 2 ] || { echo "no verified calls in the client's log" >&2; exit 1; }
serial=$(kubectl -n demo get secret client-mtls -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -serial)
echo "the client's certificate, from the Secret demo/client-mtls the operator wrote: $serial"
echo
echo "Everything keeps running. Reach it with: eval \"\$(e2e/cluster.sh env)\"; then kubectl -n demo logs deploy/client -f"
echo "Stop everything: e2e/cluster.sh down"
