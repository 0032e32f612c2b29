#!/usr/bin/env bash
# Builds CoreDNS (the cluster DNS of e2e/node.sh) from the upstream Go module pinned in
# e2e/coredns/go.mod, with only the plugins e2e/coredns/main.go links in, into a cache outside
# the repository keyed by version and by that plugin list. Prints the binary's path. Rebuilds
# only when missing.
#
#   e2e/build-coredns.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local
version=$(awk '$1=="require" && $2=="github.com/coredns/coredns"{print $3; exit} $1=="github.com/coredns/coredns"{print $2; exit}' "$here/coredns/go.mod")
plugins=$(grep -o 'coredns/plugin/[a-z0-9_]*' "$here/coredns/main.go" | sort | sha256sum | cut -c1-8)
cache_root=${MTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}
out="$cache_root/coredns-$version-$plugins/coredns"
if [ ! -x "$out" ]; then
  mkdir -p "$(dirname "$out")"
  echo "building coredns $version into $(dirname "$out")" >&2
  start=$SECONDS
  (cd "$here/coredns" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out.tmp.$$" .)
  mv "$out.tmp.$$" "$out"
  echo "built coredns in $((SECONDS - start)) s" >&2
fi
echo "$out"
