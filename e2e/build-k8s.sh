#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, etcd and kubectl, and with `node` also
# kubelet, kube-proxy and kube-scheduler (for e2e/node.sh), from the upstream Go modules
# pinned in e2e/k8s/go.mod, into a cache outside the repository keyed by version.
# Prints the bin directory. Rebuilds only what is missing.
#
#   e2e/build-k8s.sh [node]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local
K8S_VERSION=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/k8s/go.mod")
ETCD_VERSION=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$here/k8s/go.mod")
cache_root=${MTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}
bin="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION/bin"
mkdir -p "$bin"

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ver="k8s.io/component-base/version"
ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

build() { # name package [ldflags]
  local name=$1 pkg=$2 flags=${3:-"-s -w"}
  if [ -x "$bin/$name" ]; then return 0; fi
  echo "building $name ($pkg) into $bin — a cold build takes several minutes" >&2
  local start=$SECONDS
  (cd "$here/k8s" && go build -mod=readonly -trimpath -ldflags "$flags" -o "$bin/$name.tmp.$$" "$pkg")
  mv "$bin/$name.tmp.$$" "$bin/$name"
  echo "built $name in $((SECONDS - start)) s" >&2
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$ldflags"
if [ "${1:-}" = node ]; then
  build kubelet k8s.io/kubernetes/cmd/kubelet "$ldflags"
  build kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$ldflags"
  build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$ldflags"
fi
echo "$bin"
