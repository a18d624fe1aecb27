#!/usr/bin/env bash
# Installs what Ferry's builds and tests need and the machine lacks. Idempotent: a second run
# changes nothing and takes a moment.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcdctl: the benchmarks compare with `etcdctl make-mirror`.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Both must answer now: a broken install fails here, not in the middle of a test.
etcd --version >/dev/null
etcdctl version >/dev/null
protoc --version >/dev/null
