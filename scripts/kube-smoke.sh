#!/usr/bin/env bash
# Smoke run of the real kube-apiserver that Ferry's tests use (see scripts/kube-apiserver.sh):
# starts an etcd and a kube-apiserver on loopback with throw-away certificates, waits for
# /readyz, creates a CustomResourceDefinition and one custom resource, reads it back, and stops
# both processes. A starting point for the test harness: each step is one function.
#
#   scripts/kube-smoke.sh [path/to/kube-apiserver]
#
# Without an argument the binary comes from scripts/kube-apiserver.sh (built and cached on the
# first run). Only 127.0.0.1 carries traffic; only the processes started here are stopped, by
# PID. FERRY_SMOKE_KEEP=1 keeps the temporary directory (certificates, data, logs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "kube-smoke: $*" >&2; }
die() { echo "kube-smoke: FAILED: $*" >&2; exit 1; }

apiserver="${1:-}"
if [ -z "$apiserver" ]; then
  apiserver="$("$here/kube-apiserver.sh" | tail -n1)" || die "scripts/kube-apiserver.sh"
fi
[ -x "$apiserver" ] || die "$apiserver is not an executable"
command -v etcd >/dev/null 2>&1 || "$here/setup.sh" >&2 || die "scripts/setup.sh (needed for etcd)"
for c in etcd openssl curl python3; do
  command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-kube-smoke.XXXXXX")"
pids=()

# Stops what this script started (newest first), then removes the temporary directory.
cleanup() {
  local rc=$? i
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if [ "${FERRY_SMOKE_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port that is free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for <seconds> <pid> <what> <command...>: polls the command until it succeeds; fails early
# when the process <pid> has exited.
wait_for() {
  local secs=$1 pid=$2 what=$3; shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$deadline" ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

# An etcd with its own data dir; sets etcd_url.
start_etcd() {
  local client peer
  client=$(free_port); peer=$(free_port)
  etcd_url="http://127.0.0.1:$client"
  etcd --name smoke --data-dir "$work/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "smoke=http://127.0.0.1:$peer" \
    >"$work/etcd.log" 2>&1 &
  etcd_pid=$!; pids+=("$etcd_pid")
  wait_for 30 "$etcd_pid" "etcd" sh -c "curl -sf '$etcd_url/health' | grep -q '\"health\":\"true\"'" \
    || { tail -n 20 "$work/etcd.log" >&2; die "etcd did not become healthy"; }
  log "etcd up at $etcd_url (pid $etcd_pid)"
}

# A CA, a serving certificate for 127.0.0.1/localhost signed by it, a service-account key pair
# and a static token file whose user is in system:masters (all-powerful under RBAC).
make_credentials() {
  local d="$work/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=ferry-smoke-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/serving.key" -out "$d/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/serving.ext"
  openssl x509 -req -in "$d/serving.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 1 -extfile "$d/serving.ext" -out "$d/serving.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  token="$(openssl rand -hex 16)"
  echo "$token,ferry-admin,ferry-admin,\"system:masters\"" >"$d/tokens.csv"
}

# The kube-apiserver; sets api_url. No controller manager runs, hence no ServiceAccount admission
# (it would wait for token controllers) and no endpoint reconciler.
start_apiserver() {
  local port d="$work/pki"
  port=$(free_port)
  api_url="https://127.0.0.1:$port"
  "$apiserver" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 \
    --secure-port="$port" \
    --cert-dir="$work/apiserver-certs" \
    --tls-cert-file="$d/serving.crt" \
    --tls-private-key-file="$d/serving.key" \
    --client-ca-file="$d/ca.crt" \
    --token-auth-file="$d/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://127.0.0.1:"$port" \
    --service-account-key-file="$d/sa.pub" \
    --service-account-signing-key-file="$d/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none \
    --disable-admission-plugins=ServiceAccount \
    >"$work/kube-apiserver.log" 2>&1 &
  api_pid=$!; pids+=("$api_pid")
  wait_for 120 "$api_pid" "kube-apiserver /readyz" \
    sh -c "[ \"\$(curl -s --cacert '$d/ca.crt' -H 'Authorization: Bearer $token' '$api_url/readyz')\" = ok ]" \
    || { tail -n 30 "$work/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }
  log "kube-apiserver ready at $api_url (pid $api_pid)"
}

# api <method> <path> [json-body]: one authenticated request; prints the body, fails on HTTP >= 400.
api() {
  local method=$1 path=$2 body=${3:-}
  local args=(-sS --fail-with-body --cacert "$work/pki/ca.crt" -H "Authorization: Bearer $token" -X "$method")
  [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data-binary "$body")
  curl "${args[@]}" "$api_url$path"
}

# A namespaced CRD (widgets.smoke.ferry.dev) and one Widget: with reflect2 1.0.1 under Go >= 1.18
# the server crashes on this first custom-resource create.
crd_roundtrip() {
  api POST /api/v1/namespaces '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"smoke"}}' >/dev/null \
    || die "creating namespace smoke"
  api POST /apis/apiextensions.k8s.io/v1/customresourcedefinitions '{
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.ferry.dev"},
    "spec": {
      "group": "smoke.ferry.dev",
      "scope": "Namespaced",
      "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
      "versions": [{
        "name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
          "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}}}}
      }]
    }}' >/dev/null || die "creating the CustomResourceDefinition"
  established() {
    api GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.smoke.ferry.dev | python3 -c '
import json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Established" and c["status"] == "True" for c in conds) else 1)'
  }
  wait_for 30 "$api_pid" "the CRD to be established" established || die "the CRD never became Established"
  # Discovery of the new group can lag the Established condition by a moment.
  wait_for 30 "$api_pid" "the widgets resource to be served" api GET /apis/smoke.ferry.dev/v1/namespaces/smoke/widgets \
    || die "the widgets resource is not served"
  api POST /apis/smoke.ferry.dev/v1/namespaces/smoke/widgets \
    '{"apiVersion":"smoke.ferry.dev/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":3}}' >/dev/null \
    || { tail -n 30 "$work/kube-apiserver.log" >&2; die "creating the custom resource"; }
  kill -0 "$api_pid" 2>/dev/null || { tail -n 30 "$work/kube-apiserver.log" >&2; die "kube-apiserver died on the custom-resource create"; }
  api GET /apis/smoke.ferry.dev/v1/namespaces/smoke/widgets/w1 \
    | python3 -c 'import json, sys; assert json.load(sys.stdin)["spec"]["size"] == 3' \
    || die "reading the custom resource back"
  # The schema is enforced: size 0 is refused.
  if api POST /apis/smoke.ferry.dev/v1/namespaces/smoke/widgets \
       '{"apiVersion":"smoke.ferry.dev/v1","kind":"Widget","metadata":{"name":"w2"},"spec":{"size":0}}' >/dev/null 2>&1; then
    die "a Widget violating the schema was accepted"
  fi
  log "CRD widgets.smoke.ferry.dev and custom resource smoke/w1 created and read back"
}

"$apiserver" --version >&2
start_etcd
make_credentials
start_apiserver
crd_roundtrip
log "ok"
