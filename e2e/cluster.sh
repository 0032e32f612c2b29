#!/usr/bin/env bash
# A real, local Kubernetes control plane for the demo and the end-to-end tests:
# etcd + kube-apiserver + kube-controller-manager built from upstream (see
# build-k8s.sh), on loopback, with RBAC, client-certificate users and
# service-account signing keys.
#
#   e2e/cluster.sh up      start (idempotent) and write $MTLS_E2E_DIR/kubeconfig
#   e2e/cluster.sh down    stop everything and delete the state
#   e2e/cluster.sh status  exit 0 when the API server answers /readyz
#   e2e/cluster.sh env     print `export KUBECONFIG=...`
#   e2e/cluster.sh stop-apiserver|start-apiserver   stop/start kube-apiserver and etcd (fault tests)
#   e2e/cluster.sh stop-etcd|start-etcd             stop/start etcd alone (fault tests)
#
# MTLS_E2E_APISERVER_ARGS adds kube-apiserver flags, e.g. "--profiling=true" to read its CPU
# profile from /debug/pprof/profile (the later flag wins).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
dir=${MTLS_E2E_DIR:-$repo/target/e2e-cluster}
# A running cluster remembers its ports, so fault tests can stop and start its parts knowing only
# its directory.
if [ "${1:-}" != up ] && [ -f "$dir/ports.env" ]; then
  # shellcheck disable=SC1091
  . "$dir/ports.env"
fi
etcd_port=${MTLS_E2E_ETCD_PORT:-23790}
etcd_peer_port=$((etcd_port + 10))
api_port=${MTLS_E2E_API_PORT:-16443}
server="https://127.0.0.1:$api_port"

log() { printf '[cluster] %s\n' "$*" >&2; }

pid_alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

curl_api() { # path
  curl -sS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$server$1"
}

make_pki() {
  local p="$dir/pki"
  [ -f "$p/admin.crt" ] && return 0
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
      -days 30 -subj "/CN=mtls-e2e-cluster-ca" 2>/dev/null
    issue() { # name subject ext
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
        -subj "$2" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    issue apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    issue admin "/O=system:masters/CN=mtls-e2e-admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() {
  local p="$dir/pki"
  cat > "$dir/kubeconfig.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mtls-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$p/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 < "$p/admin.crt")
    client-key-data: $(base64 -w0 < "$p/admin.key")
contexts:
- name: mtls-e2e
  context: {cluster: mtls-e2e, user: admin}
current-context: mtls-e2e
KC
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
}

start_etcd() {
  pid_alive etcd && return 0
  mkdir -p "$dir/etcd"
  "$bin/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=error \
    > "$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
}

start_apiserver() {
  pid_alive kube-apiserver && return 0
  local p="$dir/pki"
  "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --cert-dir "$dir/apiserver-certs" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --secure-port "$api_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode RBAC --client-ca-file "$p/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --disable-admission-plugins ServiceAccount --profiling=false --v=0 ${MTLS_E2E_APISERVER_ARGS:-} \
    > "$dir/kube-apiserver.log" 2>&1 &
  echo $! > "$dir/kube-apiserver.pid"
}

start_controller_manager() {
  pid_alive kube-controller-manager && return 0
  "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --leader-elect=false --secure-port 0 --concurrent-gc-syncs 20 --v=0 \
    > "$dir/kube-controller-manager.log" 2>&1 &
  echo $! > "$dir/kube-controller-manager.pid"
}

wait_ready() {
  local deadline=$((SECONDS + ${1:-60}))
  until [ "$(curl_api /readyz 2>/dev/null)" = "ok" ]; do
    if [ $SECONDS -ge $deadline ]; then
      log "kube-apiserver did not become ready; last log lines:"; tail -n 20 "$dir/kube-apiserver.log" >&2
      return 1
    fi
    pid_alive kube-apiserver || { log "kube-apiserver exited:"; tail -n 20 "$dir/kube-apiserver.log" >&2; return 1; }
    sleep 0.2
  done
}

stop_one() { # name
  if pid_alive "$1"; then
    local pid; pid=$(cat "$dir/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/$1.pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  local start=$SECONDS
  bin=$("$here/build-k8s.sh")
  if ! pid_alive kube-apiserver && port_busy "$api_port"; then
    log "port $api_port is taken by another process: stop it, or pick other ports with MTLS_E2E_API_PORT / MTLS_E2E_ETCD_PORT"
    return 1
  fi
  mkdir -p "$dir"
  printf 'MTLS_E2E_API_PORT=%s\nMTLS_E2E_ETCD_PORT=%s\n' "$api_port" "$etcd_port" > "$dir/ports.env"
  make_pki
  write_kubeconfig
  start_etcd
  start_apiserver
  wait_ready 120
  start_controller_manager
  # The default ServiceAccount appearing proves the controller manager is working.
  local deadline=$((SECONDS + 60))
  until KUBECONFIG="$dir/kubeconfig" "$bin/kubectl" get serviceaccount default -n default >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "kube-controller-manager did not start:"; tail -n 20 "$dir/kube-controller-manager.log" >&2; return 1; }
    sleep 0.2
  done
  log "control plane up at $server in $((SECONDS - start)) s; export KUBECONFIG=$dir/kubeconfig"
}

down() {
  stop_one operator
  stop_one kube-controller-manager
  stop_one kube-apiserver
  stop_one etcd
  rm -rf "$dir"
  log "control plane stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) [ "$(curl_api /readyz 2>/dev/null)" = "ok" ] ;;
  env) echo "export KUBECONFIG=$dir/kubeconfig PATH=$("$here/build-k8s.sh"):\$PATH" ;;
  stop-apiserver) stop_one kube-apiserver; stop_one etcd ;;
  start-apiserver) bin=$("$here/build-k8s.sh"); start_etcd; start_apiserver; wait_ready 120 ;;
  stop-etcd) stop_one etcd ;;
  start-etcd) bin=$("$here/build-k8s.sh"); start_etcd; wait_ready 120 ;;
  *) echo "usage: $0 up|down|status|env|stop-apiserver|start-apiserver|stop-etcd|start-etcd" >&2; exit 2 ;;
esac
