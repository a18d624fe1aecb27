#!/usr/bin/env bash
# Renders deploy/operator-rbac.yaml (the operator's RBAC for installs without Helm) from its one
# source, charts/ferry-operator/templates/rbac.yaml, with the chart's default values in namespace
# ferry-system. tests/tests/helm_charts.rs fails when the committed file differs from this output.
#
#   scripts/render-operator-rbac.sh          # rewrite deploy/operator-rbac.yaml
#   scripts/render-operator-rbac.sh --stdout # print it
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helm="${FERRY_HELM:-${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/helm/v33/helm}"
[ -x "$helm" ] || { echo "render-operator-rbac: $helm is missing: run make setup" >&2; exit 1; }
render() {
  cat <<'HEADER'
# Generated from charts/ferry-operator/templates/rbac.yaml by scripts/render-operator-rbac.sh;
# do not edit (a test fails when it differs). What ferry-operator needs, and nothing more, in the
# one namespace it watches (`ferry-operator run --namespace ferry-system`). To install elsewhere
# without Helm, replace `ferry-system`.
HEADER
  "$helm" template ferry-operator "$repo/charts/ferry-operator" --namespace ferry-system \
    --show-only templates/rbac.yaml
}
if [ "${1:-}" = "--stdout" ]; then render; else render >"$repo/deploy/operator-rbac.yaml"; fi
