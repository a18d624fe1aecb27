#!/usr/bin/env bash
# `make demo`: two Ferry regions on this machine, each with its own etcd, ferry-sidecar and
# ferry-vault, all on loopback. West becomes the primary and east its secondary through the
# replication API; a short tour with the real hvac client shows replication, forwarding, local
# tokens and transit; then the demo stays up until Ctrl-C (or SIGTERM) and stops everything it
# started.
#
# Ports (each is checked to be free first):
#                      west    east
#   ferry-vault (HTTPS) 8200   9200
#   sidecar cluster    8201    9201    replication between regions, mutual TLS
#   etcd client        2379    3379    TLS, client certificates required
#   etcd peer          2380    3380    TLS
# Every listener speaks TLS with certificates from a CA the demo makes for itself (openssl):
# <state>/tls/ca.crt is what clients trust (VAULT_CACERT).
# With FERRY_DEMO_BASE_PORT=B: west uses B (vault), B+1 (cluster), B+3 (etcd), B+4 (peer); east
# B+10, B+11, B+13, B+14.
# Each sidecar's replication API (sys/replication/..., fronted by ferry-vault) is on a Unix socket
# only its user can reach: <state>/<region>/admin/replication-api.sock.
#
# Environment:
#   FERRY_DEMO_BASE_PORT=B   the port layout above, from B
#   FERRY_DEMO_DIR=DIR       state and logs in DIR (new or empty), else a new temporary directory
#   FERRY_DEMO_KEEP=1        keep the state directory (etcd data, keys, logs) after stopping
#   FERRY_DEMO_EXIT=1        non-interactive: stop everything after the tour (same as --tour-only);
#                            exits 0 when every tour step passed
#   FERRY_DEMO_SKIP_BUILD=1  use the binaries already built instead of running cargo build
#   FERRY_BIN_DIR=DIR        where ferry-sidecar and ferry-vault are (default target/debug)
#   FERRY_VENV=DIR           the Python venv with hvac (default ~/.cache/ferry/venv)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  echo "Usage: scripts/demo.sh [--tour-only]"
}

exit_after_tour="${FERRY_DEMO_EXIT:-0}"
for arg in "$@"; do
  case "$arg" in
    --tour-only) exit_after_tour=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# --- ports -----------------------------------------------------------------------------------

if [ -n "${FERRY_DEMO_BASE_PORT:-}" ]; then
  base="$FERRY_DEMO_BASE_PORT"
  [[ "$base" =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 65521 ] ||
    die "FERRY_DEMO_BASE_PORT must be a port number from 1024 to 65521, not '$base'"
  west_vault=$base west_cluster=$((base + 1))
  west_etcd=$((base + 3)) west_peer=$((base + 4))
  east_vault=$((base + 10)) east_cluster=$((base + 11))
  east_etcd=$((base + 13)) east_peer=$((base + 14))
else
  west_vault=8200 west_cluster=8201 west_etcd=2379 west_peer=2380
  east_vault=9200 east_cluster=9201 east_etcd=3379 east_peer=3380
fi
regions=(west east)
# port REGION ROLE: e.g. `port west vault`.
port() { local v="${1}_${2}"; printf '%s' "${!v}"; }

# A port is busy when something accepts connections on it (every server here binds with
# SO_REUSEADDR, so connections lingering in TIME_WAIT do not matter).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
  local r role p
  for r in "${regions[@]}"; do
    for role in vault cluster etcd peer; do
      p="$(port "$r" "$role")"
      if port_busy "$p"; then
        die "port $p (${r}'s $role) on 127.0.0.1 is already in use; stop what listens there" \
          "(e.g. a previous demo) or pick other ports with FERRY_DEMO_BASE_PORT=<base>"
      fi
    done
  done
}

# --- prerequisites and build -----------------------------------------------------------------

venv="${FERRY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/venv}"
python="$venv/bin/python"
if ! command -v etcd >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 ||
  ! command -v openssl >/dev/null 2>&1 || ! "$python" -c "import hvac" >/dev/null 2>&1; then
  say "demo: installing what is missing (scripts/setup.sh)"
  scripts/setup.sh
fi

check_ports

bin_dir="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}"
if [ "${FERRY_DEMO_SKIP_BUILD:-0}" != 1 ]; then
  say "demo: building (cargo build --workspace --bins)"
  "${CARGO:-cargo}" build --workspace --bins
fi
for b in ferry-sidecar ferry-vault; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: run cargo build --workspace --bins"
done

# --- state directory and cleanup -------------------------------------------------------------

umask 077
remove_dir=""   # what cleanup removes: the directory itself when this script created it
if [ -n "${FERRY_DEMO_DIR:-}" ]; then
  state="$FERRY_DEMO_DIR"
  if [ -e "$state" ]; then
    [ -d "$state" ] && [ -z "$(ls -A "$state")" ] ||
      die "FERRY_DEMO_DIR=$state exists and is not an empty directory; the demo starts from nothing"
  else
    mkdir -p "$state"
    remove_dir="$state"
  fi
  state="$(cd "$state" && pwd)"
else
  state="$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")"
  remove_dir="$state"
fi

pids=()
names=()
cleaning=0
cleanup() {
  local status=$?
  [ "$cleaning" = 1 ] && return
  cleaning=1
  set +e
  trap - INT TERM HUP
  # Output may be gone (a closed pipe or terminal): stopping goes on regardless.
  trap '' PIPE
  local i pid waited
  if [ ${#pids[@]} -gt 0 ]; then
    say ""
    say "demo: stopping what it started"
  fi
  # In reverse order: the servers, then the sidecars, then etcd.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      waited=0
      while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
      done
      if kill -0 "$pid" 2>/dev/null; then
        say "demo: ${names[$i]} (pid $pid) did not stop within 10 s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
      fi
    fi
    wait "$pid" 2>/dev/null
    say "demo: stopped ${names[$i]} (pid $pid)"
  done
  if [ "${FERRY_DEMO_KEEP:-0}" = 1 ]; then
    say "demo: kept $state (etcd data, keys, logs)"
  elif [ -n "$remove_dir" ]; then
    rm -rf -- "$remove_dir"
    say "demo: removed $remove_dir"
  else
    find "$state" -mindepth 1 -delete
    say "demo: emptied $state"
  fi
  exit "$status"
}
# Every way out, including a closed terminal (HUP) or output pipe (PIPE), goes through cleanup.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

for r in "${regions[@]}"; do mkdir -p "$state/$r"; done
# Unix socket paths are limited to 107 bytes; the server's forward socket is the longest.
sock_len=$(printf '%s' "$state/west/storage.forward.sock" | wc -c)
[ "$sock_len" -lt 108 ] || die "the state directory $state is too long for Unix socket paths; use a shorter FERRY_DEMO_DIR"

# --- processes -------------------------------------------------------------------------------

# start NAME LOG COMMAND...: runs COMMAND in the background with its output in LOG.
start() {
  local name="$1" log="$2"
  shift 2
  "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!")
  names+=("$name")
  say "demo: started $name (pid $!), log $log"
}

pid_of() {
  local i
  for i in "${!names[@]}"; do
    [ "${names[$i]}" = "$1" ] && { printf '%s' "${pids[$i]}"; return; }
  done
}

fail_with_log() {
  local log="$1"
  shift
  printf 'demo: error: %s\n--- last lines of %s ---\n' "$*" "$log" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
}

# wait_ready NAME LOG TIMEOUT_S WHAT CHECK...: polls CHECK every 0.2 s until it succeeds; fails
# when NAME's process exits or after TIMEOUT_S seconds, naming its log.
wait_ready() {
  local name="$1" log="$2" timeout="$3" what="$4"
  shift 4
  local pid deadline
  pid="$(pid_of "$name")"
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail_with_log "$log" "$name exited while waiting for $what"
    [ "$(date +%s)" -lt "$deadline" ] ||
      fail_with_log "$log" "timed out after ${timeout}s waiting for $what (see $log)"
    sleep 0.2
  done
}

etcd_healthy() {
  curl -fsS --max-time 2 --cacert "$tls/ca.crt" --cert "$tls/client.crt" --key "$tls/client.key" \
    "https://127.0.0.1:$1/health" | grep -q '"health":"true"'
}
sidecar_ready() {
  [ -S "$1" ] && curl -fsS --max-time 2 --unix-socket "$2" \
    "http://sidecar/v1/sys/replication/performance/status"
}
vault_active() {
  # 200: initialised, unsealed and active.
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$tls/ca.crt" \
    "https://127.0.0.1:$1/v1/sys/health")" = 200 ]
}

# 32 random bytes as hex: the root key both regions share.
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
root_key="$(random_hex 32)"
printf '%s\n' "$root_key" >"$state/root.key"
# ferry-vault refuses a root key file its group or others may access. umask 077 above creates it
# 0600; an existing file in a reused FERRY_DEMO_DIR would keep its old mode.
chmod 600 "$state/root.key"
# The key-encryption key both regions' sidecars seal their replication keys with (as the root
# key, one per replication set, readable by its owner only).
random_hex 32 >"$state/kek"
chmod 600 "$state/kek"
declare -A token
for r in "${regions[@]}"; do
  token[$r]="hvs.demo-$r-$(random_hex 12)"
  printf '%s\n' "${token[$r]}" >"$state/$r/root.token"
done

# The demo's own CA and what it signs, EC P-256, valid 30 days: the servers' certificate (ferry-vault
# and etcd on 127.0.0.1) and the sidecars' client certificate for etcd. Keys are 0600 (umask).
tls="$state/tls"
mkdir -p "$tls"
# Each openssl call's output goes to $tls/openssl.log, which a failure names.
certify() { # certify NAME SUBJECT EXTENSIONS: a key and a certificate the demo CA signs
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/$1.key" &&
    openssl req -new -key "$tls/$1.key" -subj "$2" -out "$tls/$1.csr" &&
    openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -days 30 \
      -set_serial "0x$(random_hex 16)" -extfile <(printf '%s\n' "$3") -out "$tls/$1.crt" &&
    rm -f "$tls/$1.csr"
}
make_certificates() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/ca.key" &&
    openssl req -x509 -new -key "$tls/ca.key" -subj "/CN=Ferry demo CA" -days 30 -out "$tls/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
    certify server "/CN=localhost" "$(printf '%s\n' \
      "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost")" &&
    certify client "/CN=ferry-sidecar" "$(printf '%s\n' \
      "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")"
}
make_certificates >"$tls/openssl.log" 2>&1 ||
  die "openssl could not make the demo's certificates (see $tls/openssl.log)"

say ""
say "demo: state and logs in $state"
for r in "${regions[@]}"; do
  p="$(port "$r" etcd)"
  peer="https://127.0.0.1:$(port "$r" peer)"
  # etcd 3.4 refuses to start on architectures it does not list unless told to.
  start "etcd ($r)" "$state/$r/etcd.log" env ETCD_UNSUPPORTED_ARCH="$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')" \
    etcd --name="ferry-demo-$r" --data-dir="$state/$r/etcd" \
    --listen-client-urls="https://127.0.0.1:$p" --advertise-client-urls="https://127.0.0.1:$p" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --cert-file="$tls/server.crt" --key-file="$tls/server.key" \
    --trusted-ca-file="$tls/ca.crt" --client-cert-auth \
    --peer-cert-file="$tls/server.crt" --peer-key-file="$tls/server.key" \
    --peer-trusted-ca-file="$tls/ca.crt" --peer-client-cert-auth \
    --initial-cluster="ferry-demo-$r=$peer" --max-txn-ops=1024 --logger=zap --log-level=warn
done
for r in "${regions[@]}"; do
  wait_ready "etcd ($r)" "$state/$r/etcd.log" 30 "etcd ($r) to be healthy" etcd_healthy "$(port "$r" etcd)"
done

for r in "${regions[@]}"; do
  start "ferry-sidecar ($r)" "$state/$r/sidecar.log" env FERRY_LOG="${FERRY_LOG:-info}" \
    "$bin_dir/ferry-sidecar" --cluster="$r" --node-id="$r-1" \
    --etcd-endpoints="https://127.0.0.1:$(port "$r" etcd)" --etcd-ca-file="$tls/ca.crt" \
    --etcd-cert-file="$tls/client.crt" --etcd-key-file="$tls/client.key" \
    --storage-socket="$state/$r/storage.sock" --key-encryption-key-file="$state/kek" \
    --etcd-max-txn-ops=1024 \
    --cluster-listen="127.0.0.1:$(port "$r" cluster)"
done
for r in "${regions[@]}"; do
  wait_ready "ferry-sidecar ($r)" "$state/$r/sidecar.log" 60 "ferry-sidecar ($r) to serve" \
    sidecar_ready "$state/$r/storage.sock" "$state/$r/admin/replication-api.sock"
done

for r in "${regions[@]}"; do
  start "ferry-vault ($r)" "$state/$r/vault.log" env FERRY_LOG="${FERRY_LOG:-info}" \
    "$bin_dir/ferry-vault" --listen="127.0.0.1:$(port "$r" vault)" \
    --tls-cert-file="$tls/server.crt" --tls-key-file="$tls/server.key" \
    --storage-socket="$state/$r/storage.sock" \
    --root-key-file="$state/root.key" --initial-root-token-file="$state/$r/root.token"
done
for r in "${regions[@]}"; do
  wait_ready "ferry-vault ($r)" "$state/$r/vault.log" 30 "ferry-vault ($r) to be unsealed and active" \
    vault_active "$(port "$r" vault)"
done

# --- replication -----------------------------------------------------------------------------

addr() { printf 'https://127.0.0.1:%s' "$(port "$1" vault)"; }
# json_field FIELD.PATH: reads JSON on stdin, prints the field (empty when absent).
json_field() {
  "$python" -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"
}
# replication REGION PATH BODY: POSTs to REGION's sys/replication/performance/PATH through its
# ferry-vault with the root token; prints the response body, fails on an error status.
replication() {
  local r="$1" path="$2" body="$3" out code
  out="$(curl -sS --max-time 30 --cacert "$tls/ca.crt" -X POST -H "X-Vault-Token: ${token[$r]}" \
    -H 'Content-Type: application/json' -d "$body" -w '\n%{http_code}' \
    "$(addr "$r")/v1/sys/replication/performance/$path")" ||
    die "POST $(addr "$r")/v1/sys/replication/performance/$path failed"
  code="${out##*$'\n'}"
  out="${out%$'\n'*}"
  [[ "$code" == 2* ]] || die "POST $r sys/replication/performance/$path: HTTP $code: $out"
  printf '%s' "$out"
}
east_state() {
  curl -fsS --max-time 2 --cacert "$tls/ca.crt" "$(addr east)/v1/sys/replication/performance/status" |
    json_field data.state
}
east_streams() { [ "$(east_state)" = stream-wals ]; }

say ""
say "demo: west becomes the primary: POST sys/replication/performance/primary/enable"
replication west primary/enable '{}' >/dev/null
say "demo: an activation token for east: POST sys/replication/performance/primary/secondary-token {\"id\":\"east\"}"
activation="$(replication west primary/secondary-token '{"id":"east"}' | json_field wrap_info.token)"
[ -n "$activation" ] || die "the primary's secondary-token reply carries no wrap_info.token"
say "demo: east follows west: POST sys/replication/performance/secondary/enable {\"token\":\"...\"}"
replication east secondary/enable "{\"token\":\"$activation\"}" >/dev/null
deadline=$(($(date +%s) + 60))
until east_streams 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail_with_log "$state/east/sidecar.log" \
    "timed out after 60s waiting for east's replication state to be stream-wals" \
    "(it is '$(east_state 2>/dev/null || true)'; see $state/east/sidecar.log and $state/west/sidecar.log)"
  sleep 0.2
done
say "demo: east streams west's WAL (state: stream-wals)"

# --- the tour --------------------------------------------------------------------------------

say ""
FERRY_DEMO_WEST_ADDR="$(addr west)" FERRY_DEMO_EAST_ADDR="$(addr east)" FERRY_DEMO_CACERT="$tls/ca.crt" \
  FERRY_DEMO_WEST_TOKEN="${token[west]}" FERRY_DEMO_EAST_TOKEN="${token[east]}" \
  "$python" -u scripts/demo_tour.py || die "the tour failed (logs in $state; FERRY_DEMO_KEEP=1 keeps them)"

# --- how to use it ---------------------------------------------------------------------------

cat <<EOF

Ferry is running: two regions on 127.0.0.1.

  west (primary)    VAULT_ADDR=$(addr west)   root token ${token[west]}
  east (secondary)  VAULT_ADDR=$(addr east)   root token ${token[east]}
  every server speaks TLS; trust the demo's CA: VAULT_CACERT=$tls/ca.crt
  sidecar replication API (Unix sockets, this user only):
    curl --unix-socket $state/west/admin/replication-api.sock http://sidecar/v1/sys/replication/status
  etcd: west https://127.0.0.1:$west_etcd, east https://127.0.0.1:$east_etcd
    (client certificate: $tls/client.crt, $tls/client.key)
  state and logs: $state  (etcd.log, sidecar.log, vault.log per region)

Tokens are local to each cluster: use west's token on west and east's on east.

curl:
  export VAULT_ADDR=$(addr east) VAULT_TOKEN=${token[east]} VAULT_CACERT=$tls/ca.crt
  curl -s --cacert \$VAULT_CACERT -H "X-Vault-Token: \$VAULT_TOKEN" -X POST \$VAULT_ADDR/v1/secret/data/hello -d '{"data":{"who":"me"}}'   # forwarded to west
  curl -s --cacert \$VAULT_CACERT -H "X-Vault-Token: \$VAULT_TOKEN" \$VAULT_ADDR/v1/secret/data/hello
  curl -s --cacert \$VAULT_CACERT \$VAULT_ADDR/v1/sys/replication/status

hvac ($python):
  import hvac
  west = hvac.Client(url="$(addr west)", token="${token[west]}", verify="$tls/ca.crt")
  east = hvac.Client(url="$(addr east)", token="${token[east]}", verify="$tls/ca.crt")
  west.secrets.kv.v2.create_or_update_secret(path="hello", secret={"who": "me"})
  east.secrets.kv.v2.read_secret_version(path="hello", raise_on_deleted_version=True)["data"]["data"]
  east.secrets.transit.encrypt_data(name="demo-payments", plaintext="aGVsbG8=")["data"]["ciphertext"]
EOF

if [ "$exit_after_tour" = 1 ]; then
  say ""
  say "demo: tour done (non-interactive mode), stopping"
  exit 0
fi

say ""
say "Press Ctrl-C to stop the demo."
# Stay up; leave with an error when one of the processes dies.
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      say "demo: ${names[$i]} (pid ${pids[$i]}) exited unexpectedly; its log is in $state (FERRY_DEMO_KEEP=1 keeps it)"
      exit 1
    fi
  done
  sleep 1 &
  wait $! || true
done
