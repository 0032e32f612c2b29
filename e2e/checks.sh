# Sourced by the check scripts (node-check.sh, helm-check.sh): logging with the script's name, the
# passed-checks count, timing, and waiting. Set check_name before sourcing.
log() { printf '[%s] %s\n' "$check_name" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
passed=0
ok() { log "ok: $*"; passed=$((passed + 1)); }
now() { date +%s.%N; }
# Seconds since $1 (a `now`), to a tenth.
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
# Polls `$@` every 0.2 s for up to $1 seconds.
until_true() { # timeout command...
  local deadline=$(($(date +%s) + $1)); shift
  until "$@"; do [ "$(date +%s)" -lt "$deadline" ] || return 1; sleep 0.2; done
}
# Waits (up to 10 s) for namespace $1's default ServiceAccount, which the controller manager creates
# and ServiceAccount admission needs before a pod can be created there.
wait_default_serviceaccount() {
  for _ in $(seq 100); do
    KUBECONFIG="$MTLS_E2E_DIR/kubeconfig" kubectl -n "$1" get serviceaccount default >/dev/null 2>&1 && return 0
    sleep 0.1
  done
}
# The check needs the cluster of $MTLS_E2E_DIR (and the machine's only node) to itself.
require_cluster_down() {
  if "$here/cluster.sh" status 2>/dev/null; then
    fail "the cluster in $MTLS_E2E_DIR is running: take it down first (e2e/cluster.sh down)"
  fi
}
