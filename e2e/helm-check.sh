#!/usr/bin/env bash
# The chart installed for real (issue 17, part 4; run by e2e/test.sh):
# brings up the control plane and a real node (e2e/node.sh), builds the operator's image without
# Docker and imports it (e2e/image.sh import), then `helm install` with only the image values
# pointed at the local image, and checks, with the operator running in pods:
#   - both replicas Running and Ready through the chart's own probes, one holding the Lease;
#   - an identity is issued, and a pod mounting its Secret and the bundle ConfigMap (whole volumes)
#     sees tls.crt, tls.key, ca.crt and the bundle; the leader's /metrics, scraped from its pod;
#   - the leader pod deleted: a replica leads again within the Lease duration, nothing is lost
#     (the Secret keeps its serial) and a new identity is issued;
#   - `helm upgrade` with a changed value rolls the pods and re-issues nothing;
#   - `helm uninstall` keeps the CA Secrets (and the authority, resource-policy keep);
#   - then manifests/install.yaml, applied with only the image substituted, the same way: two
#     replicas Ready, one leading, the kept CA taken up (nothing re-issued), /metrics, failover.
# Then takes everything down. Uses MTLS_E2E_DIR / MTLS_E2E_API_PORT / MTLS_E2E_ETCD_PORT like
# cluster.sh (the cluster of that directory must not be running). Exits non-zero on the first failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
export MTLS_E2E_DIR=${MTLS_E2E_DIR:-$repo/target/e2e-cluster}
export PATH="$("$here/build-k8s.sh"):$("$here/build-helm.sh"):$PATH"
export KUBECONFIG="$MTLS_E2E_DIR/kubeconfig"
check_name=helm-check
# shellcheck source=e2e/checks.sh
. "$here/checks.sh"

require_cluster_down
ns=mtls-system
finish() {
  local rc=$?
  if [ $rc != 0 ] && [ -f "$KUBECONFIG" ]; then
    # What the next engineer needs to see why: the pods, the Lease, the operator's last log lines.
    { kubectl get deploy,rs,pods -n "$ns" -o wide; kubectl get lease -n "$ns" -o yaml
      for p in $(kubectl get pods -n "$ns" -o name); do echo "--- $p"; kubectl logs -n "$ns" "$p" --tail=30; done
    } 2>&1 | sed 's/^/  | /' >&2 || true
  fi
  if [ "${MTLS_E2E_KEEP:-}" != 1 ]; then
    "$here/node.sh" down >/dev/null 2>&1 || true
    "$here/cluster.sh" down >/dev/null 2>&1 || true
  fi
  [ $rc = 0 ] && log "$passed passed, 0 failed" || log "failed after $passed passed"
}
trap finish EXIT

"$here/node.sh" up
"$here/image.sh" import >/dev/null
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
image=(--set image.repository=localhost/mtls-operator --set "image.tag=$version" --set image.pullPolicy=Never)

holder() { kubectl get lease -n "$ns" mtls-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
# A pod of the current rollout holds the Lease: Running, not being deleted. (Between a leader's
# release on shutdown and a standby's next try the Lease is free for up to the retry period.)
led() {
  local h
  h=$(holder) && [ -n "$h" ] || return 1
  [ "$(kubectl get pod -n "$ns" "$h" -o jsonpath='{.status.phase}/{.metadata.deletionTimestamp}' 2>/dev/null)" = Running/ ]
}
# Two operator pods Running, one holding the Lease (sets $leader).
replicas_running() {
  local pods
  pods=$(kubectl get pods -n "$ns" -l app.kubernetes.io/name=mtls-operator --field-selector=status.phase=Running -o name | wc -l)
  [ "$pods" = 2 ] || fail "expected 2 operator pods Running, found $pods"
  until_true 30 led || fail "no running replica holds the Lease (holder: '$(holder)')"
  leader=$(holder)
}
identity() { printf 'apiVersion: mtls.io/v1alpha1\nkind: MtlsIdentity\nmetadata: {name: %s, namespace: shop}\nspec: {authorityRef: default}\n' "$1" | kubectl apply -f - >/dev/null; }
ready() { [ "$(kubectl get mtlsid -n shop "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; }
serial() { kubectl get mtlsid -n shop "$1" -o jsonpath='{.status.serialNumber}'; }
# /metrics of the leading pod, through the API server's pod proxy (the API server shares the pods'
# network namespace): up, and the issuance counted.
scrape_leader() {
  local metrics issued
  metrics=$(kubectl get --raw "/api/v1/namespaces/$ns/pods/$leader:8080/proxy/metrics") || fail "no /metrics from $leader"
  grep -qx 'mtls_operator_up 1' <<<"$metrics" || fail "the leader's /metrics does not say up 1"
  issued=$(awk '/^mtls_operator_issuances_total[{ ]/ {n += $NF} END {print n + 0}' <<<"$metrics")
  [ "$issued" -ge 1 ] || fail "the leader's /metrics counts no issuance"
  ok "/metrics scraped from the leading pod: mtls_operator_up 1, $issued issuance(s) counted, $(wc -l <<<"$metrics") lines"
}
# Leader failover: the leader pod deleted; a replica leads again within the Lease duration and
# issues identity $1; web keeps its serial.
fail_over() { # new-identity
  local duration t took
  duration=$(kubectl get lease -n "$ns" mtls-operator -o jsonpath='{.spec.leaseDurationSeconds}')
  t=$(now)
  kubectl delete pod -n "$ns" "$leader" --wait=false >/dev/null
  new_leader() { local h; h=$(holder); [ -n "$h" ] && [ "$h" != "$leader" ]; }
  until_true $((duration + 10)) new_leader || fail "no new leader within the lease duration ($duration s)"
  took=$(since "$t")
  identity "$1"
  until_true 30 ready "$1" || fail "identity $1 not issued after the failover"
  [ "$(serial web)" = "$web_serial" ] || fail "the failover re-issued web"
  ok "leader pod deleted: $(holder) leads after $took s (lease duration $duration s); web kept serial, $1 issued"
}

t=$(now)
helm install mtls-operator charts/mtls-operator -n "$ns" --create-namespace "${image[@]}" --wait --timeout 180s >/dev/null ||
  { kubectl get pods -n "$ns" -o wide >&2; fail "helm install did not become ready"; }
replicas_running
ok "helm install: 2 replicas Running and Ready in $(since "$t") s; $leader leads"

kubectl create namespace shop >/dev/null
until_true 60 kubectl get mtlsauthority default >/dev/null 2>&1 || fail "the chart's authority does not exist"
t=$(now)
identity web
until_true 30 ready web || fail "identity web not Ready: $(kubectl get mtlsid -n shop web -o yaml)"
ok "identity issued by the operator pods in $(since "$t") s"
web_serial=$(serial web)

scrape_leader

wait_default_serviceaccount shop
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: shop}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/mtls-e2e/busybox:1.35
    imagePullPolicy: Never
    command: ["sh", "-c", "ls /certs /bundle && grep -c 'BEGIN CERTIFICATE' /bundle/ca.crt && sleep 3600"]
    volumeMounts:
    - {name: certs, mountPath: /certs, readOnly: true}
    - {name: bundle, mountPath: /bundle, readOnly: true}
  volumes:
  - {name: certs, secret: {secretName: web-mtls}}
  - {name: bundle, configMap: {name: mtls-trust-bundle}}
YAML
kubectl wait --for=condition=Ready pod/reader -n shop --timeout=60s >/dev/null || fail "the reader pod is not Ready"
files=$(kubectl logs -n shop reader | tr '\n' ' ')
for f in tls.crt tls.key ca.crt version; do [[ " $files " == *" $f "* ]] || fail "the pod does not see $f: $files"; done
ok "a pod mounting the Secret and the bundle ConfigMap sees: $files"

fail_over api

# An upgrade with a changed value rolls the pods and re-issues nothing.
serials_before=$(kubectl get mtlsid -n shop -o jsonpath='{range .items[*]}{.metadata.name}={.status.serialNumber} {end}')
t=$(now)
helm upgrade mtls-operator charts/mtls-operator -n "$ns" "${image[@]}" --set operator.logFormat=text --wait --timeout 180s >/dev/null ||
  fail "helm upgrade did not become ready"
kubectl rollout status deployment/mtls-operator -n "$ns" --timeout=120s >/dev/null || fail "the rollout did not finish"
until_true 30 led || fail "no running replica leads after the upgrade (holder: '$(holder)')"
sleep 3
serials_after=$(kubectl get mtlsid -n shop -o jsonpath='{range .items[*]}{.metadata.name}={.status.serialNumber} {end}')
[ "$serials_before" = "$serials_after" ] || fail "the upgrade re-issued: $serials_before -> $serials_after"
ok "helm upgrade (logFormat changed) rolled the pods in $(since "$t") s and re-issued nothing"

# Uninstall keeps the CA Secrets.
cas_before=$(kubectl get secret -n "$ns" -l mtls.io/authority=default -o name | sort)
[ -n "$cas_before" ] || fail "no CA Secret for the authority default"
helm uninstall mtls-operator -n "$ns" --wait >/dev/null
cas_after=$(kubectl get secret -n "$ns" -l mtls.io/authority=default -o name | sort)
[ "$cas_before" = "$cas_after" ] || fail "helm uninstall removed CA Secrets: $cas_before -> $cas_after"
kubectl get mtlsauthority default >/dev/null || fail "helm uninstall removed the authority"
# The chart's ReplicaSets and pods go after the Deployment (garbage collection, in the background):
# a Deployment created meanwhile with the same selector would adopt them.
gone() { [ -z "$(kubectl get rs,pods -n "$ns" -l app.kubernetes.io/name=mtls-operator -o name 2>/dev/null)" ]; }
until_true 60 gone || fail "the chart's ReplicaSets and pods are still there after helm uninstall"
ok "helm uninstall kept the CA Secrets ($(echo "$cas_after" | wc -l)) and the authority"

# manifests/install.yaml as a user applies it, with only the image substituted (its MtlsAuthority
# needs the CRDs Established first: apply again, as its header says). It finds the authority and
# the CA Secrets the chart left behind and takes them up: nothing is re-issued. (--force-conflicts:
# the authority's fields belong to helm, which created it.)
sed -E "s#^( *image: )\"[^\"]*mtls-operator:[^\"]*\"#\1\"localhost/mtls-operator:$version\"#; s#^( *imagePullPolicy: ).*#\1Never#" \
  manifests/install.yaml > "$MTLS_E2E_DIR/install.yaml"
grep -q "image: \"localhost/mtls-operator:$version\"" "$MTLS_E2E_DIR/install.yaml" || fail "no image line substituted in manifests/install.yaml"
t=$(now)
kubectl apply --server-side --force-conflicts -f "$MTLS_E2E_DIR/install.yaml" >/dev/null 2>&1 || {
  kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
  kubectl apply --server-side --force-conflicts -f "$MTLS_E2E_DIR/install.yaml" >/dev/null; }
kubectl rollout status deployment/mtls-operator -n "$ns" --timeout=180s >/dev/null || {
  kubectl get pods -n "$ns" -o wide >&2; fail "manifests/install.yaml: the operator did not become ready"; }
replicas_running
ok "manifests/install.yaml: 2 replicas Running and Ready in $(since "$t") s; $leader leads"
identity db
until_true 30 ready db || fail "identity db not issued by the install.yaml operator"
[ "$(serial web)" = "$web_serial" ] || fail "install.yaml re-issued web: the kept CA was not taken up"
ok "install.yaml's operator took up the kept CA (web kept its serial) and issued db"
scrape_leader
fail_over cache
