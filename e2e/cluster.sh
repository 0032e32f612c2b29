#!/usr/bin/env bash
# A real, local Kubernetes control plane for the demo and the end-to-end tests:
# etcd + kube-apiserver + kube-controller-manager built from upstream (see
# build-k8s.sh), with RBAC, client-certificate users and service-account signing keys.
#
# Network: everything runs inside a network namespace of its own (named after the cluster
# directory, `ip netns list`), with its own loopback and a bridge carrying the node address
# ($node_ip, the API server's advertised address, which pods reach through the `kubernetes`
# Service). No address of the machine's own namespace is used but loopback: a forwarder
# listens on the host's 127.0.0.1:$api_port and connects into the namespace's 127.0.0.1:$api_port,
# so kubectl and the tests on the host use https://127.0.0.1:$api_port as before, and it keeps
# listening while the API server is stopped and started. e2e/node.sh adds a real node
# (containerd + kubelet + kube-proxy + kube-scheduler) to the same namespace.
#
#   e2e/cluster.sh up      start (idempotent) and write $MTLS_E2E_DIR/kubeconfig
#   e2e/cluster.sh down    stop everything and delete the state
#   e2e/cluster.sh status  exit 0 when the API server answers /readyz
#   e2e/cluster.sh env     print `export KUBECONFIG=...` (and how to enter the namespace)
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
# `up` of a cluster that already runs keeps its ports unless they are given.
saved_api="" saved_etcd=""
if [ -f "$dir/ports.env" ]; then
  saved_api=$(sed -n 's/^MTLS_E2E_API_PORT=//p' "$dir/ports.env")
  saved_etcd=$(sed -n 's/^MTLS_E2E_ETCD_PORT=//p' "$dir/ports.env")
  if [ "${1:-}" != up ]; then MTLS_E2E_API_PORT=$saved_api MTLS_E2E_ETCD_PORT=$saved_etcd; fi
fi
etcd_port=${MTLS_E2E_ETCD_PORT:-${saved_etcd:-23790}}
etcd_peer_port=$((etcd_port + 10))
api_port=${MTLS_E2E_API_PORT:-${saved_api:-16443}}
server="https://127.0.0.1:$api_port"
# The namespace and the node address inside it. Two clusters (two directories) get two namespaces;
# addresses inside different namespaces do not collide, only the host-side forwarder port must differ.
# MTLS_E2E_NETNS names it; MTLS_E2E_NETNS=host (and running as non-root) keeps the control plane
# in the host's namespace on loopback, as before namespaces, with no node possible.
ns=${MTLS_E2E_NETNS:-mtls-$(printf '%s' "$dir" | sha256sum | cut -c1-10)}
if [ "$(id -u)" != 0 ]; then ns=host; fi
node_ip=10.88.0.1
node_name=mtls-e2e-node
pod_subnet=10.88.0.0/24
bridge=mtlsbr0

# Runs a command inside the cluster's network namespace (network only: the mount namespace stays
# the host's, so kubelet's and containerd's mounts are visible to each other and to `down`).
# (in_ns for processes started in the background, so that $! is the process itself.)
in_ns=(nsenter "--net=/run/netns/$ns")
bind_ip=0.0.0.0 advertise_ip=$node_ip
if [ "$ns" = host ]; then in_ns=(env) bind_ip=127.0.0.1 advertise_ip=127.0.0.1; fi
nsx() { "${in_ns[@]}" "$@"; }

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
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$node_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    issue admin "/O=system:masters/CN=mtls-e2e-admin" "extendedKeyUsage=clientAuth"
    # The API server's identity towards kubelet (logs, exec), and the node's components.
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    issue node "/O=system:nodes/CN=system:node:$node_name" "extendedKeyUsage=clientAuth"
    issue kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    issue kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() { # [name user-cert-basename file]
  local p="$dir/pki" name=${1:-admin} cert=${2:-admin} file=${3:-$dir/kubeconfig}
  cat > "$file.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mtls-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$p/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 < "$p/$cert.crt")
    client-key-data: $(base64 -w0 < "$p/$cert.key")
contexts:
- name: mtls-e2e
  context: {cluster: mtls-e2e, user: $name}
current-context: mtls-e2e
KC
  if cmp -s "$file.tmp" "$file"; then rm -f "$file.tmp"; else mv "$file.tmp" "$file"; fi
}

# The host's state that creating a namespace changes: `ip netns add` turns /run/netns into a
# shared bind mount of itself the first time. Recorded once, restored by `down` when no other
# namespace is left there.
netns_up() {
  [ "$ns" = host ] && return 0
  mkdir -p "$dir/host"
  if [ ! -f "$dir/host/run-netns" ]; then
    local was=absent
    if [ -d /run/netns ]; then was=dir; fi
    if awk '$5=="/run/netns"{found=1} END{exit !found}' /proc/self/mountinfo; then was=mount; fi
    echo "$was" > "$dir/host/run-netns"
  fi
  if [ ! -e "/run/netns/$ns" ]; then
    ip netns add "$ns"
  fi
  ip -n "$ns" link set lo up
  if ! ip -n "$ns" link show "$bridge" >/dev/null 2>&1; then
    ip -n "$ns" link add "$bridge" type bridge
  fi
  ip -n "$ns" addr replace "$node_ip/24" dev "$bridge"
  ip -n "$ns" link set "$bridge" up
}

netns_down() {
  [ "$ns" = host ] && return 0
  if [ -e "/run/netns/$ns" ]; then ip netns delete "$ns"; fi
  local was; was=$(cat "$dir/host/run-netns" 2>/dev/null || echo mount)
  if [ "$was" != mount ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    while awk '$5=="/run/netns"{found=1} END{exit !found}' /proc/self/mountinfo; do umount /run/netns; done
    if [ "$was" = absent ]; then rmdir /run/netns; fi
  fi
}

# The host side of the API server: 127.0.0.1:$api_port on the host, connected per connection to
# 127.0.0.1:$api_port inside the namespace. systemd-socket-proxyd (one process, splice) when the
# machine has it, else socat (a process per connection).
proxyd=""
for p in /lib/systemd/systemd-socket-proxyd /usr/lib/systemd/systemd-socket-proxyd; do
  if [ -x "$p" ] && command -v systemd-socket-activate >/dev/null 2>&1; then proxyd=$p; break; fi
done
start_forwarder() {
  [ "$ns" = host ] && return 0
  pid_alive forwarder && return 0
  if [ -n "$proxyd" ] && [ "${MTLS_E2E_FORWARDER:-}" != socat ]; then
    # splice() takes a pipe pair per direction: 6 descriptors per connection.
    (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; exec systemd-socket-activate -l "127.0.0.1:$api_port" \
      nsenter --net="/run/netns/$ns" "$proxyd" --connections-max=3000 "127.0.0.1:$api_port") \
      > "$dir/forwarder.log" 2>&1 &
  else
    socat "TCP-LISTEN:$api_port,bind=127.0.0.1,fork,reuseaddr" \
      "EXEC:nsenter --net=/run/netns/$ns socat STDIO TCP\:127.0.0.1\:$api_port" \
      > "$dir/forwarder.log" 2>&1 &
  fi
  echo $! > "$dir/forwarder.pid"
  local deadline=$((SECONDS + 10))
  until ss -Hltn "sport = :$api_port" | grep -q 127.0.0.1; do
    [ $SECONDS -lt $deadline ] || { log "the forwarder did not start:"; cat "$dir/forwarder.log" >&2; return 1; }
    pid_alive forwarder || { log "the forwarder exited:"; cat "$dir/forwarder.log" >&2; return 1; }
    sleep 0.1
  done
}

start_etcd() {
  pid_alive etcd && return 0
  mkdir -p "$dir/etcd"
  "${in_ns[@]}" "$bin/etcd" --name default --data-dir "$dir/etcd" \
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
  "${in_ns[@]}" "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --cert-dir "$dir/apiserver-certs" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --secure-port "$api_port" --bind-address "$bind_ip" --advertise-address "$advertise_ip" \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode RBAC --authorization-mode Node \
    --enable-admission-plugins NodeRestriction --client-ca-file "$p/ca.crt" \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --profiling=false --v=0 ${MTLS_E2E_APISERVER_ARGS:-} \
    > "$dir/kube-apiserver.log" 2>&1 &
  echo $! > "$dir/kube-apiserver.pid"
}

start_controller_manager() {
  pid_alive kube-controller-manager && return 0
  # Beyond what the API tests need (garbage collection, namespaces, ServiceAccounts): what a node's
  # workloads need (Deployments, Services' endpoints, the kube-root-ca.crt ConfigMap that
  # ServiceAccount token volumes project, PodDisruptionBudgets, the node's not-ready taint).
  "${in_ns[@]}" "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --controllers garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,root-ca-certificate-publisher-controller,disruption-controller,pod-garbage-collector-controller,node-lifecycle-controller \
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

# Stops the named processes (SIGTERM, SIGKILL after 5 s), several at once: each may take a second
# or two to shut down gracefully.
stop() { # name...
  local n pids=()
  for n in "$@"; do
    if pid_alive "$n"; then pids+=("$(cat "$dir/$n.pid")"); fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    local p
    for p in "${pids[@]}"; do
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    done
  fi
  for n in "$@"; do rm -f "$dir/$n.pid"; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  local start=$SECONDS
  bin=$("$here/build-k8s.sh")
  if ! pid_alive forwarder && port_busy "$api_port"; then
    log "port $api_port is taken by another process: stop it, or pick other ports with MTLS_E2E_API_PORT / MTLS_E2E_ETCD_PORT"
    return 1
  fi
  mkdir -p "$dir"
  printf 'MTLS_E2E_API_PORT=%s\nMTLS_E2E_ETCD_PORT=%s\n' "$api_port" "$etcd_port" > "$dir/ports.env"
  make_pki
  write_kubeconfig
  netns_up
  start_forwarder
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
  if [ -d "$dir/node" ]; then "$here/node.sh" down; fi
  stop operator kube-controller-manager kube-apiserver etcd forwarder
  netns_down
  rm -rf "$dir"
  log "control plane stopped"
}

# node.sh sources this file for its helpers.
[ "${MTLS_E2E_CLUSTER_LIB:-}" = 1 ] && return 0

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) [ "$(curl_api /readyz 2>/dev/null)" = "ok" ] ;;
  env)
    echo "export KUBECONFIG=$dir/kubeconfig PATH=$("$here/build-k8s.sh"):\$PATH"
    if [ "$ns" != host ]; then
      echo "# kubectl on the host reaches the API server at $server (a forwarder into network namespace $ns)."
      echo "# Pod IPs ($pod_subnet) are reachable only inside it: e2e/node.sh exec <command> (nsenter --net=/run/netns/$ns)"
    fi
    ;;
  stop-apiserver) stop kube-apiserver; stop etcd ;;
  start-apiserver) bin=$("$here/build-k8s.sh"); start_forwarder; start_etcd; start_apiserver; wait_ready 120 ;;
  stop-etcd) stop etcd ;;
  start-etcd) bin=$("$here/build-k8s.sh"); start_forwarder; start_etcd; wait_ready 120 ;;
  *) echo "usage: $0 up|down|status|env|stop-apiserver|start-apiserver|stop-etcd|start-etcd" >&2; exit 2 ;;
esac
