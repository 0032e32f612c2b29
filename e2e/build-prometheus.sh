#!/usr/bin/env bash
# Builds prometheus and promtool from the upstream Go module pinned in e2e/prometheus/go.mod into a
# cache outside the repository keyed by version (like build-helm.sh). Prints the bin directory.
# Builds only what is missing. The server is built without its web UI's assets (the query API,
# rules and alerts are all the tests use).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local
PROM_VERSION=$(awk '$1=="require" && $2=="github.com/prometheus/prometheus"{print $3; exit} $1=="github.com/prometheus/prometheus"{print $2; exit}' "$here/prometheus/go.mod")
[ -n "$PROM_VERSION" ] || { echo "github.com/prometheus/prometheus is not required in $here/prometheus/go.mod" >&2; exit 1; }
cache_root=${MTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}
bin="$cache_root/prometheus-$PROM_VERSION/bin"
mkdir -p "$bin"

# The module's v0.MMM.P is Prometheus release 3.(MMM-300).P.
release=${PROM_VERSION#v0.}
release="3.$((10#${release%%.*} - 300)).${release#*.}"
for cmd in promtool prometheus; do
  if [ ! -x "$bin/$cmd" ]; then
    echo "building $cmd $release (module $PROM_VERSION) into $bin — a cold build takes several minutes" >&2
    start=$SECONDS
    v=github.com/prometheus/common/version
    ldflags="-s -w -X $v.Version=$release -X $v.Branch=module -X $v.Revision=$PROM_VERSION"
    (cd "$here/prometheus" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" \
      -o "$bin/$cmd.tmp" "github.com/prometheus/prometheus/cmd/$cmd")
    mv "$bin/$cmd.tmp" "$bin/$cmd"
    echo "built $cmd in $((SECONDS - start)) s" >&2
  fi
done
echo "$bin"
