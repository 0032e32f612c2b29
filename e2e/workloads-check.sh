#!/usr/bin/env bash
# The examples as a user applies them, on the real node (issue 17, item 5 — a check script, not
# yet part of e2e/test.sh): brings up the control plane and a node with cluster DNS (e2e/node.sh),
# imports images of nginx and curl built from Debian's packages (e2e/workload-images.sh), installs
# the operator with the chart (its image from e2e/image.sh; the chart's own authority off, so that
# manifests/examples/authority.yaml is the one), then applies manifests/examples/authority.yaml,
# identities.yaml and workloads.yaml exactly as shipped but for the two image names, and checks:
#   - both Deployments Available: nginx serving TLS on 8443 with `ssl_verify_client on`, as user
#     101 on a read-only root filesystem;
#   - the client's log shows `hello, verified client (serial ...)` calls to https://web.demo.svc:8443/,
#     and the serial nginx saw is the client Secret's certificate's;
#   - those names resolve through the cluster DNS (CoreDNS logged the client pod's queries for
#     web.demo.svc.cluster.local), and a name outside the cluster is refused, not forwarded;
#   - a call without a client certificate, and one with a certificate the authority did not sign,
#     are refused by nginx (400), from a pod that trusts the bundle as the client does.
# Takes everything down at the end (MTLS_E2E_KEEP=1 keeps it). Prints timings.
#
# The operator's image: `e2e/image.sh import` (a cargo release build), or with
# MTLS_E2E_OPERATOR_BINARY=PATH an already built release binary wrapped as it is (image.sh package).
# Uses MTLS_E2E_DIR / MTLS_E2E_API_PORT / MTLS_E2E_ETCD_PORT like cluster.sh (the cluster of that
# directory must not be running). Exits non-zero on the first failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
export MTLS_E2E_DIR=${MTLS_E2E_DIR:-$repo/target/e2e-cluster}
export PATH="$("$here/build-k8s.sh" node):$("$here/build-helm.sh"):$PATH"
export KUBECONFIG="$MTLS_E2E_DIR/kubeconfig"
check_name=workloads-check
# shellcheck source=e2e/checks.sh
. "$here/checks.sh"

require_cluster_down
work=$(mktemp -d)
finish() {
  local rc=$?
  if [ $rc != 0 ]; then
    kubectl get pods -A -o wide >&2 2>/dev/null || true
    kubectl -n demo describe pods >&2 2>/dev/null | tail -40 || true
  fi
  if [ "${MTLS_E2E_KEEP:-}" != 1 ]; then
    "$here/node.sh" down >/dev/null 2>&1 || true
    "$here/cluster.sh" down >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  [ $rc = 0 ] && log "$passed passed, 0 failed" || log "failed after $passed passed"
}
trap finish EXIT
t0=$(now)

t=$(now)
"$here/node.sh" up
ok "control plane and node (with cluster DNS) up in $(since "$t") s"

t=$(now)
"$here/workload-images.sh" import > "$work/images"
nginx_image=$(awk '$1 ~ /\/nginx:/ {print $1}' "$work/images")
curl_image=$(awk '$1 ~ /\/curl:/ {print $1}' "$work/images")
[ -n "$nginx_image" ] && [ -n "$curl_image" ] || fail "no nginx or curl image: $(cat "$work/images")"
ok "workload images $nginx_image and $curl_image built (or cached) and imported in $(since "$t") s"

t=$(now)
if [ -n "${MTLS_E2E_OPERATOR_BINARY:-}" ]; then
  archive=$("$here/image.sh" package "$MTLS_E2E_OPERATOR_BINARY")
  "$here/image.sh" check
  "$here/node.sh" import "$archive"
else
  "$here/image.sh" import >/dev/null
fi
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
helm install mtls-operator charts/mtls-operator -n mtls-system --create-namespace \
  --set image.repository=localhost/mtls-operator --set "image.tag=$version" --set image.pullPolicy=Never \
  --set authority.create=false --wait --timeout 180s >/dev/null || fail "helm install did not become ready"
ok "operator image imported and the chart installed (2 replicas Ready) in $(since "$t") s"

# The examples as shipped, the two image names aside.
"$here/workload-images.sh" workloads > "$work/workloads.yaml"
changed=$(diff manifests/examples/workloads.yaml "$work/workloads.yaml" | grep -c '^>' || true)
[ "$changed" = 2 ] || fail "expected the two image lines of workloads.yaml substituted, $changed lines differ"
t=$(now)
kubectl apply -f manifests/examples/authority.yaml >/dev/null
kubectl apply -f manifests/examples/identities.yaml -f "$work/workloads.yaml" >/dev/null
kubectl wait --for=condition=Ready -n demo mtlsidentity/web mtlsidentity/client --timeout=60s >/dev/null ||
  fail "the identities are not Ready"
issued_s=$(since "$t")
kubectl -n demo wait --for=condition=Available deployment/web deployment/client --timeout=120s >/dev/null ||
  fail "the Deployments did not become Available"
ok "examples applied: identities Ready in $issued_s s, Deployments web and client Available in $(since "$t") s"
kubectl -n demo get pods -o wide >&2

# Verified calls in the client's log (the first may fail while nginx starts).
verified() { kubectl -n demo logs deploy/client 2>/dev/null | grep -c '^hello, verified client (serial ' || true; }
two_verified() { [ "$(verified)" -ge 2 ]; }
until_true 60 two_verified || { kubectl -n demo logs deploy/client --tail=20 >&2; fail "no verified calls in the client's log"; }
log "client log:"; kubectl -n demo logs deploy/client --tail=3 | sed 's/^/  client: /' >&2
# nginx's $ssl_client_serial is the client certificate's serial, in hex.
serial=$(kubectl -n demo get secret client-mtls -o jsonpath='{.data.tls\.crt}' | base64 -d | openssl x509 -noout -serial | cut -d= -f2)
kubectl -n demo logs deploy/client | grep -qi "^hello, verified client (serial $serial)" ||
  fail "the serial nginx verified is not the client Secret's ($serial)"
ok "client log: $(verified) verified calls to https://web.demo.svc:8443/, nginx saw the client Secret's certificate (serial $serial)"
kubectl -n demo logs deploy/web --tail=2 | sed 's/^/  web: /' >&2
# The server as the example runs it: user 101, read-only root filesystem, only /tmp writable.
as=$(kubectl -n demo exec deploy/web -c nginx -- sh -c 'echo "$(id -u):$(id -g)"; touch /etc/nginx/x 2>/dev/null || echo read-only; touch /tmp/x && echo tmp-writable')
[ "$(echo $as)" = "101:101 read-only tmp-writable" ] || fail "nginx runs as: $as"
ok "nginx runs as 101:101 on a read-only root filesystem, only /tmp writable"

# The name went through the cluster DNS: CoreDNS logged the client pod's queries.
client_ip=$(kubectl -n demo get pods -l app=client -o jsonpath='{.items[0].status.podIP}')
web_ip=$(kubectl -n demo get service web -o jsonpath='{.spec.clusterIP}')
dns_log="$MTLS_E2E_DIR/node/coredns.log"
grep -E "^\[INFO\] $client_ip A web\.demo\.svc\.cluster\.local\. NOERROR" "$dns_log" | head -n 1 | sed 's/^/  coredns: /' >&2
grep -qE "^\[INFO\] $client_ip A web\.demo\.svc\.cluster\.local\. NOERROR" "$dns_log" ||
  fail "CoreDNS did not answer the client pod ($client_ip) for web.demo.svc.cluster.local (log $dns_log)"
ok "web.demo.svc resolved through the cluster DNS (kube-dns $(kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}'), CoreDNS) for the client pod $client_ip"

# Calls that must be refused: no client certificate, and one the authority did not sign; from a
# pod of the curl image that trusts the bundle as the client does (so the server is verified).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/rogue.key" \
  -out "$work/rogue.crt" -days 1 -subj "/CN=rogue" -addext "extendedKeyUsage=clientAuth" 2>/dev/null
kubectl -n demo create secret tls rogue --cert "$work/rogue.crt" --key "$work/rogue.key" >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: no-client-cert, namespace: demo}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 100, runAsGroup: 101, fsGroup: 101}
  containers:
  - name: curl
    image: $curl_image
    command: ["/bin/sh", "-c"]
    # (The image has the shell, coreutils and curl: the log is read on the host.)
    args:
    - |
      echo "resolved \$(curl -s -o /dev/null -w '%{remote_ip}' --max-time 5 --cacert /etc/mtls-bundle/ca.crt https://web.demo.svc:8443/)"
      echo "== without"
      curl -s --max-time 5 --cacert /etc/mtls-bundle/ca.crt -w '\nstatus=%{http_code}\n' https://web.demo.svc:8443/
      echo "== rogue"
      curl -s --max-time 5 --cacert /etc/mtls-bundle/ca.crt --cert /rogue/tls.crt --key /rogue/tls.key -w '\nstatus=%{http_code}\n' https://web.demo.svc:8443/
      echo "== outside"
      curl -s --max-time 5 -o /dev/null https://example.com/; echo "curl exit \$?"
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts:
    - {name: trust-bundle, mountPath: /etc/mtls-bundle, readOnly: true}
    - {name: rogue, mountPath: /rogue, readOnly: true}
  volumes:
  - {name: trust-bundle, configMap: {name: mtls-trust-bundle}}
  - {name: rogue, secret: {secretName: rogue, defaultMode: 0440}}
YAML
kubectl -n demo wait --for=jsonpath='{.status.phase}'=Succeeded pod/no-client-cert --timeout=60s >/dev/null ||
  { kubectl -n demo logs no-client-cert >&2 || true; fail "the no-client-cert pod did not succeed"; }
out=$(kubectl -n demo logs no-client-cert)
section() { # the page title, the status, curl's exit code of section $1 of the log
  awk -v s="$1" '/^== /{sec=$2; next} sec==s' <<<"$out" | grep -oE '<title>[^<]*</title>|^status=[0-9]+|^curl exit [0-9]+' | paste -sd' '
}
log "no-client-cert: resolved $(awk '$1=="resolved"{print $2}' <<<"$out"); without a certificate: $(section without); rogue certificate: $(section rogue); outside name: $(section outside)"
grep -qx "resolved $web_ip" <<<"$out" || fail "web.demo.svc did not resolve to the Service's clusterIP $web_ip"
[ "$(section without)" = "<title>400 No required SSL certificate was sent</title> status=400" ] ||
  fail "a call without a client certificate was not refused by nginx"
[ "$(section rogue)" = "<title>400 The SSL certificate error</title> status=400" ] ||
  fail "a call with a certificate the authority did not sign was not refused by nginx"
ok "nginx refuses a call without a client certificate and one with a certificate the authority did not sign (400)"
# Outside names: refused by the cluster DNS (it serves the cluster's zones only, no forward), so
# curl cannot resolve them (exit 6).
[ "$(section outside)" = "curl exit 6" ] || fail "a name outside the cluster resolved"
ok "a name outside the cluster (example.com) does not resolve: the cluster DNS refuses it, nothing is forwarded"

log "total $(since "$t0") s"
