#!/usr/bin/env bash
# Renders the plain install YAML, manifests/install.yaml, from charts/mtls-operator with the
# chart's default values: the mtls-system Namespace, the CRDs, then every chart object.
#
#   e2e/render-manifests.sh            write manifests/install.yaml
#   e2e/render-manifests.sh FILE       write FILE instead (e2e/check-chart.sh diffs the two)
#
# Uses the helm built by e2e/build-helm.sh (pinned in e2e/helm/go.mod), so that the output does
# not depend on whichever helm happens to be installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-$repo/manifests/install.yaml}
namespace=mtls-system
helm="$("$here/build-helm.sh")/helm"
chart="$repo/charts/mtls-operator"
version=$(awk '$1=="version:"{print $2; exit}' "$chart/Chart.yaml")

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
  cat <<HEADER
# mtls-operator plain install manifest, rendered from charts/mtls-operator $version with its
# default values by e2e/render-manifests.sh: do not edit; change the chart and re-render.
#
#   kubectl apply --server-side -f manifests/install.yaml
#
# The MtlsAuthority at the end needs the CRDs above to be Established: if kubectl reports
# "ensure CRDs are installed first", run the same command again. Helm users: install the chart.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: mtls-operator
HEADER
  # Run from the repository root so that the "# Source:" comments carry relative paths.
  (cd "$repo" && "$helm" template mtls-operator charts/mtls-operator --namespace "$namespace" \
    --include-crds --kube-version 1.35.0)
} > "$tmp"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
