#!/usr/bin/env bash
# A real Kubernetes node beside the control plane of e2e/cluster.sh, in the same network namespace:
# containerd + runc + CNI plugins (bridge, host-local, loopback) from Debian's packages, kubelet,
# kube-proxy (iptables mode, for the `kubernetes` Service and others) and kube-scheduler built from
# the pinned module (build-k8s.sh), and locally built images (no registry): the sandbox image
# (pause, from the module's build/pause/linux/pause.c) and a busybox image (Debian's static
# busybox). Pods get addresses in $pod_subnet on the namespace's bridge and reach each other and
# the API server (through the `kubernetes` Service) there, and nothing outside the namespace.
#
# Cluster DNS: CoreDNS (e2e/build-coredns.sh, its `kubernetes` plugin) as a process of the node,
# like kubelet, listening on $node_ip:53 inside the namespace, behind the Service kube-dns in
# kube-system with the clusterIP $dns_ip (an EndpointSlice naming $node_ip, kube-proxy's DNAT), the
# address kubelet gives pods as their name server (clusterDNS, clusterDomain cluster.local): pods
# resolve Services and pods of cluster.local (and their reverse names) as in a real cluster. It
# answers for those zones only and forwards nothing: any other name is refused (no name server
# outside the namespace may be asked). It reads the API as the user system:coredns, with
# upstream's ClusterRole system:coredns. A process rather than a pod: the node comes up with its
# DNS without an image to build, and `down` stops it like kubelet.
#
#   e2e/node.sh up       start the control plane if needed, then the node; waits for Node Ready (idempotent)
#   e2e/node.sh down     stop the node and undo everything it did to the host (cluster.sh down calls it)
#   e2e/node.sh status   exit 0 when the Node is Ready
#   e2e/node.sh import ARCHIVE...   import OCI image archives into the node's containerd
#   e2e/node.sh ctr ARGS...         run ctr against the node's containerd (namespace k8s.io)
#   e2e/node.sh exec CMD...         run a command inside the network namespace (curl a pod IP, ...)
#
# MTLS_E2E_KUBELET_SYNC sets kubelet's syncFrequency (default upstream's 1m): how often mounted
# Secrets and ConfigMaps are refreshed.
#
# Built-in images: localhost/mtls-e2e/pause:3.10 and localhost/mtls-e2e/busybox:1.35 (every busybox
# applet in /bin); use imagePullPolicy IfNotPresent or Never (there is no registry). Images of
# nginx and curl from Debian's packages, for manifests/examples/workloads.yaml:
# e2e/workload-images.sh import.
#
# What kubelet and containerd leave on the host, and `down` undoes: the sysctls kubelet sets
# (recorded before the first `up`, restored), cgroups (all under /<cgroup-root> in every hierarchy),
# tmpfs/overlay/shm mounts and the pods' network namespaces (netns_mounts_under_state_dir), all
# under the node's directory, containerd's shim sockets (/run/containerd/s), /var/log/containers links and
# CNI's result cache (/var/lib/cni). iptables rules live in the namespace and go with it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=cluster.sh
MTLS_E2E_CLUSTER_LIB=1 . "$here/cluster.sh" lib

nd="$dir/node"
sock="$nd/containerd/containerd.sock"
cgroup_root="/$ns"
pause_image=localhost/mtls-e2e/pause:3.10
busybox_image=localhost/mtls-e2e/busybox:1.35
dns_ip=10.0.0.10
dns_ready_port=10181
# The kernel tunables kubelet sets when protectKernelDefaults is false (pkg/kubelet/cm).
kubelet_sysctls="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
# Host directories that containerd (1.6) or kubelet use whatever they are told.
host_dirs="/var/lib/cni /var/log/containers /run/containerd /var/lib/kubelet /etc/cni"

nlog() { printf '[node] %s\n' "$*" >&2; }
kctl() { KUBECONFIG="$dir/kubeconfig" "$bin/kubectl" "$@"; }
ctrx() { ctr --address "$sock" --namespace k8s.io "$@"; }

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  [ -n "$proxyd" ] || command -v socat >/dev/null || missing+=(socat)
  [ ${#missing[@]} -eq 0 ] && return 0
  nlog "installing ${missing[*]}"
  # Packages must not start the machine's own containerd service: a policy that refuses
  # service starts, for the time of the install, where the machine has none.
  local policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >&2 || {
    [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d; return 1; }
  [ $policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# Images built here, cached beside the Kubernetes binaries (keyed by the same versions).
build_images() {
  images="$(dirname "$bin")/images"
  mkdir -p "$images"
  if [ ! -f "$images/pause.oci.tar" ]; then
    local t; t=$(mktemp -d)
    local src; src="$(cd "$here/k8s" && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    gcc -Os -s -static -o "$t/pause" -DVERSION=3.10 "$src"
    cat > "$t/spec.json" <<JSON
{"name": "$pause_image", "files": [{"src": "$t/pause", "dst": "/pause", "mode": 493}],
 "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"}}
JSON
    python3 "$here/oci.py" build "$t/spec.json" "$images/pause.oci.tar" >/dev/null
    rm -rf "$t"
  fi
  if [ ! -f "$images/busybox.oci.tar" ]; then
    local t; t=$(mktemp -d)
    (cd "$t" && apt-get download -qq busybox-static >/dev/null 2>&1 && dpkg-deb -x busybox-static_*.deb root)
    python3 - "$t" "$busybox_image" > "$t/spec.json" <<'PY'
import json, subprocess, sys
t, name = sys.argv[1], sys.argv[2]
bb = t + "/root/bin/busybox"
applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
spec = {"name": name,
        "files": [{"src": bb, "dst": "/bin/busybox", "mode": 0o755}],
        "symlinks": [{"dst": "/bin/" + a, "target": "busybox"} for a in applets if a != "busybox"],
        "dirs": [{"dst": "/tmp", "mode": 0o1777}],
        "contents": [{"dst": "/etc/passwd", "text": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
                     {"dst": "/etc/group", "text": "root:x:0:\nnobody:x:65534:\n"}],
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}}
print(json.dumps(spec))
PY
    python3 "$here/oci.py" build "$t/spec.json" "$images/busybox.oci.tar" >/dev/null
    rm -rf "$t"
  fi
}

# What the host looked like before the first `up`, so that `down` can put it back.
record_host() {
  mkdir -p "$nd/host"
  [ -f "$nd/host/sysctl" ] && return 0
  for k in $kubelet_sysctls; do printf '%s=%s\n' "$k" "$(sysctl -n "$k")"; done > "$nd/host/sysctl.tmp"
  for d in $host_dirs; do if [ -e "$d" ]; then echo "$d"; fi; done > "$nd/host/dirs"
  mv "$nd/host/sysctl.tmp" "$nd/host/sysctl"
}

# Writes stdin to a file only when it differs (kube-proxy exits when its config file changes: a
# second `up` must leave the files alone).
put() {
  cat > "$1.new"
  if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv "$1.new" "$1"; fi
}

write_configs() {
  mkdir -p "$nd/containerd" "$nd/cni/net.d" "$nd/cni/ipam" "$nd/kubelet" "$nd/pod-logs"
  put "$nd/containerd.toml" <<TOML
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$nd/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the caller's.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The pods' network namespaces under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$nd/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni/net.d"
    max_conf_num = 1
TOML
  put "$nd/cni/net.d/10-mtls-e2e.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "$ns", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$nd/cni/ipam",
            "ranges": [[{"subnet": "$pod_subnet", "gateway": "$node_ip"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
  # The node's own resolver, which pods of dnsPolicy Default get (ClusterFirst pods get clusterDNS and
  # the search path below): none, no name server outside the namespace may be used.
  printf 'nameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n' | put "$nd/resolv.conf"
  put "$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$sock
# cgroup v1 here; kubelet 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
failSwapOn: false
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: AlwaysAllow}
syncFrequency: ${MTLS_E2E_KUBELET_SYNC:-1m}
podLogsDir: $nd/pod-logs
resolvConf: $nd/resolv.conf
clusterDNS: [$dns_ip]
clusterDomain: cluster.local
# Images cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 110
serializeImagePulls: false
YAML
  write_kubeconfig "system:node:$node_name" node "$nd/kubelet.kubeconfig"
  write_kubeconfig system:kube-proxy kube-proxy "$nd/kube-proxy.kubeconfig"
  write_kubeconfig system:kube-scheduler kube-scheduler "$nd/kube-scheduler.kubeconfig"
  write_kubeconfig system:coredns coredns "$nd/coredns.kubeconfig"
  # Cluster DNS for the cluster's zones only: no `forward`, any other name is refused.
  put "$nd/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    log . "{remote} {type} {name} {rcode}"
    health 127.0.0.1:$((dns_ready_port - 1))
    ready 127.0.0.1:$dns_ready_port
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $nd/coredns.kubeconfig
        pods insecure
        ttl 30
    }
    cache 30
}
COREFILE
  put "$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $nd/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $node_name
clusterCIDR: $pod_subnet
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the kernel's conntrack settings alone (some are not per namespace).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# CoreDNS's client certificate (user system:coredns), beside the cluster's others.
make_dns_cert() {
  local p="$dir/pki"
  [ -f "$p/coredns.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$p/coredns.key" -out "$p/coredns.csr" \
    -subj "/CN=system:coredns" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$p/coredns.ext"
  openssl x509 -req -in "$p/coredns.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
    -extfile "$p/coredns.ext" -out "$p/coredns.crt" 2>/dev/null
  rm -f "$p/coredns.csr" "$p/coredns.ext"
}

# What a cluster's DNS add-on installs (upstream's RBAC and kube-dns Service), with the Service's
# endpoint the node's CoreDNS process rather than pods: an EndpointSlice of our own (a Service
# without a selector, which the endpointslice controller leaves alone).
apply_dns_objects() {
  kctl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns", labels: {kubernetes.io/bootstrapping: rbac-defaults}}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns", labels: {kubernetes.io/bootstrapping: rbac-defaults}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $dns_ip
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-$node_name
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: e2e-node.sh}
addressType: IPv4
endpoints:
- {addresses: [$node_ip], conditions: {ready: true}, nodeName: $node_name}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
YAML
}

dns_ready() { nsx curl -sf --max-time 1 "http://127.0.0.1:$dns_ready_port/ready" >/dev/null 2>&1; }

start_dns() {
  pid_alive coredns && return 0
  "${in_ns[@]}" "$coredns" -conf "$nd/Corefile" > "$nd/coredns.log" 2>&1 &
  echo $! > "$dir/coredns.pid"
  # Ready once its kubernetes plugin has synced Services and EndpointSlices.
  local deadline=$((SECONDS + 30))
  until dns_ready; do
    [ $SECONDS -lt $deadline ] || { nlog "CoreDNS not ready:"; tail -n 20 "$nd/coredns.log" >&2; return 1; }
    pid_alive coredns || { nlog "CoreDNS exited:"; tail -n 20 "$nd/coredns.log" >&2; return 1; }
    sleep 0.1
  done
}

# kubelet's pod cgroups go under /$ns in every v1 hierarchy, so that down finds them all (and two
# nodes would not share them). cpuset needs its CPUs and memory nodes before a task can join.
make_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/; do
    [ -d "$c" ] || continue
    mkdir -p "$c$cgroup_root"
    if [ -f "$c/cpuset.cpus" ]; then
      cat "$c/cpuset.cpus" > "$c$cgroup_root/cpuset.cpus"
      cat "$c/cpuset.mems" > "$c$cgroup_root/cpuset.mems"
    fi
  done
}

start_containerd() {
  pid_alive containerd && return 0
  "${in_ns[@]}" containerd --config "$nd/containerd.toml" > "$nd/containerd.log" 2>&1 &
  echo $! > "$dir/containerd.pid"
  local deadline=$((SECONDS + 30))
  until ctrx version >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { nlog "containerd did not start:"; tail -n 20 "$nd/containerd.log" >&2; return 1; }
    pid_alive containerd || { nlog "containerd exited:"; tail -n 20 "$nd/containerd.log" >&2; return 1; }
    sleep 0.1
  done
}

import_images() { # archive...
  local a
  for a in "$@"; do ctrx images import "$a" >/dev/null; done
}

start_kubelet() {
  pid_alive kubelet && return 0
  "${in_ns[@]}" "$bin/kubelet" --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
    --hostname-override "$node_name" --node-ip "$node_ip" --root-dir "$nd/kubelet" --v=1 \
    > "$nd/kubelet.log" 2>&1 &
  echo $! > "$dir/kubelet.pid"
}

start_kube_proxy() {
  pid_alive kube-proxy && return 0
  "${in_ns[@]}" "$bin/kube-proxy" --config "$nd/kube-proxy.yaml" --v=1 > "$nd/kube-proxy.log" 2>&1 &
  echo $! > "$dir/kube-proxy.pid"
}

start_scheduler() {
  pid_alive kube-scheduler && return 0
  "${in_ns[@]}" "$bin/kube-scheduler" --kubeconfig "$nd/kube-scheduler.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 10259 --v=1 > "$nd/kube-scheduler.log" 2>&1 &
  echo $! > "$dir/kube-scheduler.pid"
}

# Ready, and schedulable: the node-lifecycle controller has lifted the not-ready taint kubelet
# registers the node with.
node_ready() {
  [ "$(kctl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints}' 2>/dev/null)" = "True " ]
}

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$EPOCHREALTIME"; }

node_up() {
  local start=$EPOCHREALTIME
  if [ "$ns" = host ]; then nlog "a node needs root and the cluster's own network namespace (MTLS_E2E_NETNS is host)"; return 1; fi
  install_packages
  bin=$("$here/build-k8s.sh" node)
  coredns=$("$here/build-coredns.sh")
  "$here/cluster.sh" up
  build_images
  record_host
  make_dns_cert
  write_configs
  apply_dns_objects
  start_dns
  make_cgroups
  start_containerd
  import_images "$images/pause.oci.tar" "$images/busybox.oci.tar"
  ctrx images label "$pause_image" io.cri-containerd.pinned=pinned >/dev/null
  local t_kubelet=$EPOCHREALTIME
  start_kubelet
  start_kube_proxy
  start_scheduler
  local deadline=$((SECONDS + 120))
  until node_ready; do
    [ $SECONDS -lt $deadline ] || { nlog "node $node_name not Ready; kubelet log:"; tail -n 30 "$nd/kubelet.log" >&2; return 1; }
    for c in kubelet kube-proxy kube-scheduler containerd coredns; do
      pid_alive $c || { nlog "$c exited:"; tail -n 20 "$nd/$c.log" >&2; return 1; }
    done
    sleep 0.2
  done
  nlog "node $node_name Ready $(elapsed "$t_kubelet") s after kubelet started; node up in $(elapsed "$start") s (network namespace $ns, pods in $pod_subnet, cluster DNS $dns_ip)"
}

# Every mount whose mount point is under $1, deepest first.
mounts_under() {
  awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r
}

node_down() {
  local start=$EPOCHREALTIME
  stop kube-scheduler kube-proxy kubelet coredns
  local netnses=() ids=""
  if pid_alive containerd; then
    # No CRI client here (no crictl in Debian 12): tear the containers down with ctr, and note
    # the pods' network namespaces (bind mounts under /run/netns) from the sandboxes' specs.
    local id
    ids=$(ctrx containers ls -q 2>/dev/null || true)
    for id in $ids; do
      local path
      path=$(ctrx containers info "$id" 2>/dev/null | python3 -c 'import json,sys
spec = json.load(sys.stdin).get("Spec") or {}
for n in (spec.get("linux") or {}).get("namespaces") or []:
    if n.get("type") == "network" and n.get("path"): print(n["path"])' || true)
      [ -n "$path" ] && netnses+=("$path")
      ctrx tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctrx containers ls -q 2>/dev/null); do
      for _ in $(seq 50); do
        ctrx tasks delete "$id" >/dev/null 2>&1 && break
        ctrx tasks ls -q 2>/dev/null | grep -qx "$id" || break
        sleep 0.1
      done
      ctrx containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # Shims (started by our containerd, named by its socket) that outlived it.
  local pids
  pids=$(pgrep -f -- "-address $sock( |$)" || true)
  if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; sleep 0.5; kill -9 $pids 2>/dev/null || true; fi
  # Any process still in the pods' cgroups.
  local c
  if [ -n "$ns" ]; then
    for c in /sys/fs/cgroup/*/"$ns"; do
      [ -d "$c" ] || continue
      pids=$(find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null || true; fi
    done
  fi
  # Mounts: the pods' network namespaces, then everything under the node's directory.
  local m
  for m in "${netnses[@]}"; do
    if [ -e "$m" ]; then umount "$m" 2>/dev/null || true; rm -f "$m"; fi
  done
  for _ in 1 2 3; do
    for m in $(mounts_under "$nd"); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  # cgroups, deepest first (a v1 cgroup can be removed once it has no tasks and no children).
  if [ -n "$ns" ]; then
    for c in /sys/fs/cgroup/*/"$ns"; do
      [ -d "$c" ] || continue
      for _ in $(seq 20); do
        find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ -d "$c" ] || break
        sleep 0.1
      done
    done
  fi
  # Sysctls and host directories, as they were before the first up.
  if [ -f "$nd/host/sysctl" ]; then
    local kv
    while read -r kv; do sysctl -q -w "$kv" >/dev/null || true; done < "$nd/host/sysctl"
  fi
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$nd/*" -delete 2>/dev/null || true
  fi
  # CNI's result cache: <network>-<sandbox id>-<interface>, for our network and the loopback.
  if [ -d /var/lib/cni/results ]; then
    find /var/lib/cni/results -maxdepth 1 -name "$ns-*" -delete 2>/dev/null || true
    for id in $ids; do rm -f /var/lib/cni/results/*-"$id"-*; done
  fi
  if [ -d /run/containerd/s ]; then
    # Sockets of shims that are gone (a live shim keeps its socket open).
    for m in /run/containerd/s/*; do
      [ -S "$m" ] || continue
      ss -xl | grep -qF "$m" || rm -f "$m"
    done
  fi
  local d
  for d in $host_dirs; do
    [ -e "$d" ] || continue
    grep -qx "$d" "$nd/host/dirs" 2>/dev/null && continue
    [ -f "$nd/host/dirs" ] || continue
    # Created by this node: remove what is empty (another node's files would stay).
    find "$d" -depth -type d -empty -delete 2>/dev/null || true
  done
  rm -rf "$nd"
  rm -f "$dir/containerd.pid" "$dir/kubelet.pid" "$dir/kube-proxy.pid" "$dir/kube-scheduler.pid" "$dir/coredns.pid"
  nlog "node down in $(elapsed "$start") s"
}

case "${1:-}" in
  up) node_up ;;
  down) if [ -d "$nd" ] || [ -f "$dir/kubelet.pid" ]; then node_down; fi ;;
  status) bin=$("$here/build-k8s.sh"); node_ready ;;
  import) shift; import_images "$@" ;;
  ctr) shift; ctrx "$@" ;;
  exec) shift; nsx "$@" ;;
  *) echo "usage: $0 up|down|status|import ARCHIVE...|ctr ARGS...|exec CMD..." >&2; exit 2 ;;
esac
