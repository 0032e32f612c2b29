#!/usr/bin/env bash
# Checks the real node end to end: brings it up (e2e/node.sh up, twice: idempotent), runs two pods
# from the local busybox image (scheduled by kube-scheduler, addresses from CNI), checks their
# pod IPs, pod-to-pod TCP, a pod reaching the API server through the `kubernetes` Service
# (kube-proxy) and resolving its name through the cluster DNS (CoreDNS), logs and exec through
# kubelet, an API server restart behind the host forwarder, and, with
# MTLS_E2E_OPERATOR_IMAGE=ARCHIVE (e2e/image.sh), the operator's image from
# manifests/install.yaml: two pods going Ready through their /readyz probes. Then takes everything
# down (e2e/cluster.sh down) and checks that nothing is left on the host: processes, mounts,
# network namespaces, network interfaces, iptables rules, sysctls, cgroups, directories.
#
# Uses MTLS_E2E_DIR / MTLS_E2E_API_PORT / MTLS_E2E_ETCD_PORT like cluster.sh; the cluster of that
# directory must not be running. Prints timings; exits non-zero on the first failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
export MTLS_E2E_DIR=${MTLS_E2E_DIR:-$repo/target/e2e-cluster}
bin=$("$here/build-k8s.sh")
kctl() { KUBECONFIG="$MTLS_E2E_DIR/kubeconfig" "$bin/kubectl" "$@"; }
check_name=node-check
# shellcheck source=e2e/checks.sh
. "$here/checks.sh"

if "$here/cluster.sh" status 2>/dev/null; then
  fail "the cluster in $MTLS_E2E_DIR is running: take it down first (e2e/cluster.sh down), the check needs the host without it"
fi

# This cluster's network namespace (named as cluster.sh names it); other clusters' namespaces (a
# test suite or a soak running beside this check) come and go on their own and are not counted.
own_ns=$(MTLS_E2E_CLUSTER_LIB=1; . "$here/cluster.sh" lib; echo "$ns")
others() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mtls-[0-9a-f]{10}$' | grep -vx "$own_ns" || true; }
# Lines naming another cluster's namespace are dropped; this cluster's stay.
drop_others() {
  local o; o=$(others | paste -sd'|')
  if [ -n "$o" ]; then grep -Ev "(^|/)($o)\b" || true; else cat; fi
}

# The host, as seen from its own namespaces. Volatile sysctls (counters, random) are left out.
snapshot() { # dir
  local s=$1
  mkdir -p "$s"
  awk '{print $5}' /proc/self/mountinfo | drop_others | sort > "$s/mounts"
  ip netns list 2>/dev/null | awk '{print $1}' | drop_others | sort > "$s/netns"
  ip -o link show | awk -F': ' '{print $2}' | sort > "$s/links"
  ip -o addr show | awk '{print $2, $3, $4}' | sort > "$s/addrs"
  ip route show table all | sort > "$s/routes"
  for t in filter nat mangle raw; do
    iptables -t "$t" -S 2>/dev/null | sed "s/^/nft $t /"
    iptables-legacy -t "$t" -S 2>/dev/null | sed "s/^/legacy $t /"
    ip6tables -t "$t" -S 2>/dev/null | sed "s/^/nft6 $t /"
  done | sort > "$s/iptables"
  sysctl -a 2>/dev/null | grep -Ev '^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota)|kernel\.(random|ns_last_pid|pty\.nr|sched_domain)|net\.netfilter\.nf_conntrack_count|vm\.stat|fs\.aio-nr|kernel\.perf_event|net\.ipv4\.tcp_mem|net\.ipv4\.udp_mem|kernel\.tainted|kernel\.keys\.(persistent|maxkeys)|fs\.binfmt)' | sort > "$s/sysctl"
  find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d 2>/dev/null | sort > "$s/cgroups"
  for d in /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /etc/cni /run/containerd /var/lib/containerd /run/netns /etc/kubernetes; do
    if [ -e "$d" ]; then find "$d" | sort; fi
  done | drop_others > "$s/dirs"
  # Processes: in a container (another root), in another network namespace, or naming the
  # cluster's directory (not other clusters' processes, which come and go on their own).
  local me; me=$(readlink /proc/self/ns/net)
  for p in /proc/[0-9]*; do
    local pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    local netns root cmd
    netns=$(readlink "$p/ns/net" 2>/dev/null) || continue
    root=$(readlink "$p/root" 2>/dev/null) || continue
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-150)
    if [ "$netns" != "$me" ] || [ "$root" != / ] || [[ "$cmd" == *"$MTLS_E2E_DIR"* ]]; then
      # In another cluster's namespace: that cluster's, not this one's.
      local in; in=$(ip netns identify "$pid" 2>/dev/null || true)
      if [ -n "$in" ] && [ "$in" != "$own_ns" ] && [[ "$in" == mtls-* ]]; then continue; fi
      echo "$pid $cmd"
    fi
  done | sort > "$s/procs"
}

compare() { # before after what
  local diffs=0 f
  for f in mounts netns links addrs routes iptables sysctl cgroups dirs; do
    if ! diff -u "$1/$f" "$2/$f" > "$2/$f.diff"; then
      log "$3: $f differ:"; head -n 30 "$2/$f.diff" >&2; diffs=1
    fi
  done
  # Processes: none that was not there before.
  awk '{print $1}' "$1/procs" > "$2/procs.before-pids"
  if awk 'NR==FNR {seen[$1]=1; next} !($1 in seen)' "$2/procs.before-pids" "$2/procs" | grep .; then
    log "$3: processes left (above)"; diffs=1
  fi
  return $diffs
}

work=$(mktemp -d)
# On failure the cluster is taken down too (MTLS_E2E_KEEP=1 keeps it for a look).
finish() {
  local rc=$?
  if [ $rc != 0 ] && [ "${MTLS_E2E_KEEP:-}" != 1 ]; then "$here/cluster.sh" down >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap finish EXIT
snapshot "$work/before"

log "node up (cold: builds images and starts the control plane too)"
t=$(now)
"$here/node.sh" up
up_s=$(since "$t")
t=$(now)
"$here/node.sh" up
again_s=$(since "$t")
ok "node up in ${up_s} s; second up (idempotent) in ${again_s} s"
[ "$(kctl get nodes -o name | wc -l)" = 1 ] || fail "expected one node"

ns=test-node
kctl create namespace "$ns" >/dev/null
# The default ServiceAccount (ServiceAccount admission needs it) appears through the controller manager.
PATH="$bin:$PATH" wait_default_serviceaccount "$ns"
t=$(now)
kctl -n "$ns" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: localhost/mtls-e2e/busybox:1.35
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello-from-$(hostname) > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
kctl -n "$ns" wait --for=condition=Ready pod/server --timeout=60s >/dev/null || {
  kctl -n "$ns" describe pod server >&2; fail "server pod not Ready"; }
server_ready_s=$(since "$t")
server_ip=$(kctl -n "$ns" get pod server -o jsonpath='{.status.podIP}')
node_name=$(kctl -n "$ns" get pod server -o jsonpath='{.spec.nodeName}')
ok "server pod scheduled to $node_name, Ready in ${server_ready_s} s (readiness probe every 1 s), pod IP $server_ip"
[[ "$server_ip" == 10.88.0.* ]] || fail "pod IP $server_ip is not in the node's pod subnet"

t=$(now)
kctl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: localhost/mtls-e2e/busybox:1.35
    imagePullPolicy: Never
    command: ["sh", "-c"]
    args:
    - |
      echo "client at \$(hostname -i)"
      # (busybox's wget crashes in this static build: plain HTTP over nc.)
      for i in \$(seq 30); do
        printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $server_ip 8080 | tail -n 1 | grep . && break
        sleep 1
      done
      # The API server through the kubernetes Service (kube-proxy's DNAT to the advertised address).
      nc -w 2 \$KUBERNETES_SERVICE_HOST \$KUBERNETES_SERVICE_PORT < /dev/null && echo "kubernetes-service-open"
      # The cluster DNS (node.sh's CoreDNS behind the kube-dns Service): the kubernetes Service by name.
      nslookup kubernetes.default.svc.cluster.local | grep -q "^Address: *\$KUBERNETES_SERVICE_HOST\$" && echo "kubernetes-service-resolved"
      # A name outside the cluster: refused (the cluster DNS forwards nothing).
      nslookup example.com 2>&1 | grep -q "can't find example.com: REFUSED" && echo "outside-name-refused"
YAML
kctl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/client --timeout=60s >/dev/null || {
  kctl -n "$ns" describe pod client >&2; kctl -n "$ns" logs client >&2 || true; fail "client pod did not succeed"; }
client_s=$(since "$t")
client_ip=$(kctl -n "$ns" get pod client -o jsonpath='{.status.podIP}')
out=$(kctl -n "$ns" logs client)
echo "$out" | sed 's/^/  client: /' >&2
[ -n "$client_ip" ] && [ "$client_ip" != "$server_ip" ] || fail "client pod IP '$client_ip' (server $server_ip)"
echo "$out" | grep -qx "hello-from-server" || fail "the client did not reach the server over its pod IP"
echo "$out" | grep -qx "kubernetes-service-open" || fail "the client did not reach the API server through the kubernetes Service"
echo "$out" | grep -qx "kubernetes-service-resolved" || fail "the client did not resolve the kubernetes Service through the cluster DNS"
echo "$out" | grep -qx "outside-name-refused" || fail "the cluster DNS did not refuse a name outside the cluster"
ok "client pod ($client_ip) fetched from the server pod ($server_ip) over TCP, reached the kubernetes Service and resolved its name through the cluster DNS (which refused example.com); created to Succeeded in ${client_s} s; kubectl logs works"
[ "$(kctl -n "$ns" exec server -- cat /tmp/index.html)" = hello-from-server ] || fail "kubectl exec"
ok "kubectl exec works"
"$here/node.sh" exec curl -sf --max-time 2 "http://$server_ip:8080/index.html" | grep -qx hello-from-server ||
  fail "the pod IP is not reachable from the node's namespace"
ok "the server pod answers on its pod IP inside the namespace"
# The host's own namespace gained no address, link or route (compared at the end); no test
# traffic is sent towards pod IPs from there (it would leave by the host's default route).

# The API server restarts behind the forwarder; kubelet comes back; a new pod still runs.
t=$(now)
"$here/cluster.sh" stop-apiserver
"$here/cluster.sh" start-apiserver
restart_s=$(since "$t")
kctl get --raw /readyz >/dev/null || fail "the API server is not reachable through the forwarder after a restart"
deadline=$((SECONDS + 60))
until "$here/node.sh" status; do [ $SECONDS -lt $deadline ] || fail "node not Ready after the API server restart"; sleep 0.5; done
kctl -n "$ns" delete pod client --wait=false >/dev/null
ok "API server stopped and started in ${restart_s} s; the host forwarder and the node recovered"

if [ -n "${MTLS_E2E_OPERATOR_IMAGE:-}" ]; then
  t=$(now)
  "$here/node.sh" import "$MTLS_E2E_OPERATOR_IMAGE"
  import_s=$(since "$t")
  image=$(python3 - "$MTLS_E2E_OPERATOR_IMAGE" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as a:
    print(json.load(a.extractfile("index.json"))["manifests"][0]["annotations"]["io.containerd.image.name"])
PY
)
  t=$(now)
  # manifests/install.yaml as a user applies it, with only the image substituted (the MtlsAuthority
  # at its end needs the CRDs Established first: apply again, as its header says).
  sed -E "s#^( *image: )\"[^\"]*mtls-operator:[^\"]*\"#\1\"$image\"#" "$repo/manifests/install.yaml" > "$work/install.yaml"
  kctl apply --server-side -f "$work/install.yaml" >/dev/null 2>&1 || {
    kctl wait --for=condition=Established crd --all --timeout=30s >/dev/null; kctl apply --server-side -f "$work/install.yaml" >/dev/null; }
  kctl -n mtls-system rollout status deployment/mtls-operator --timeout=120s >&2 || {
    kctl -n mtls-system get pods -o wide >&2; kctl -n mtls-system describe pods >&2 | tail -40
    kctl -n mtls-system logs -l app.kubernetes.io/name=mtls-operator --tail=20 >&2 || true; fail "operator pods not Ready"; }
  operator_s=$(since "$t")
  kctl -n mtls-system get pods -o wide >&2
  ready=$(kctl -n mtls-system get pods -l app.kubernetes.io/name=mtls-operator -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
  [ "$ready" = 2 ] || fail "expected 2 Ready operator pods, got $ready"
  holder=$(kctl -n mtls-system get lease mtls-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  ok "operator image imported in ${import_s} s; manifests/install.yaml: 2 operator pods Ready through /readyz in ${operator_s} s (read-only root, user 65532); lease holder: ${holder:-none yet}"
  kctl -n mtls-system logs -l app.kubernetes.io/name=mtls-operator --tail=3 --prefix >&2 || true
fi

snapshot "$work/up"
log "node down"
t=$(now)
"$here/node.sh" down
node_down_s=$(since "$t")
t=$(now)
"$here/cluster.sh" down
cluster_down_s=$(since "$t")
snapshot "$work/after"
compare "$work/before" "$work/after" "after down" || fail "down left things behind (diffs above)"
count() { diff "$work/before/$1" "$work/up/$1" | grep -c '^>' || true; }
ok "node down in ${node_down_s} s, control plane down in ${cluster_down_s} s; nothing left of what up had added ($(count procs) processes, $(count mounts) mounts, $(count netns) netns, $(count cgroups) cgroups, $(count sysctl) changed sysctls, $(count dirs) host paths; links, addresses, routes, iptables of the host: $(count links)/$(count addrs)/$(count routes)/$(count iptables) added)"
log "$passed passed, 0 failed"
echo "$passed passed, 0 failed"
