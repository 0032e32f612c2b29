#!/usr/bin/env bash
# Builds helm from the upstream Go module pinned in e2e/helm/go.mod into a
# cache outside the repository keyed by version (like build-k8s.sh). Prints the
# bin directory. Builds only when the binary is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local
HELM_VERSION=$(awk '$1=="require" && $2=="helm.sh/helm/v3"{print $3; exit} $1=="helm.sh/helm/v3"{print $2; exit}' "$here/helm/go.mod")
[ -n "$HELM_VERSION" ] || { echo "helm.sh/helm/v3 is not required in $here/helm/go.mod" >&2; exit 1; }
cache_root=${MTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}
bin="$cache_root/helm-$HELM_VERSION/bin"
mkdir -p "$bin"

if [ ! -x "$bin/helm" ]; then
  echo "building helm $HELM_VERSION into $bin — a cold build takes a few minutes" >&2
  start=$SECONDS
  # The same ldflags as helm's Makefile: its version, and the Kubernetes version
  # of the client-go it links (the default .Capabilities.KubeVersion and the
  # deprecation checks of `helm lint`).
  client_go=$(cd "$here/helm" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/client-go)
  k8s_minor=${client_go#v0.}; k8s_minor=${k8s_minor%%.*}
  v="helm.sh/helm/v3"
  ldflags="-s -w -X $v/internal/version.version=$HELM_VERSION -X $v/internal/version.gitTreeState=clean"
  ldflags="$ldflags -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  ldflags="$ldflags -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=$k8s_minor"
  (cd "$here/helm" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$bin/helm.tmp" "$bin/helm"
  echo "built helm in $((SECONDS - start)) s" >&2
fi
echo "$bin"
