#!/usr/bin/env bash
# Makes a real kube-apiserver (v1.20.2) available for Ferry's tests and prints its path on stdout
# as the last line. No registry publishes the binary, so it is built once from Debian's
# `kubernetes` source package with Debian's Go (the recipe is scripts/lib/kube-source.sh, shared
# with scripts/kube-node.sh), and cached outside the repository:
#
#   ${FERRY_CACHE:-$HOME/.cache/ferry}/kube-apiserver/v1.20.2/kube-apiserver
#
# Idempotent: when the cached binary exists the script prints its path and exits at once. The
# first run takes about 12 minutes on 2 cores. Progress goes to stderr, only the path to stdout.
#
# Environment:
#   FERRY_CACHE               cache root (default $HOME/.cache/ferry)
#   FERRY_KEEP_KUBE_BUILD=1   keep the unpacked source tree and Go build cache after a build
set -euo pipefail

log() { echo "kube-apiserver: $*" >&2; }
die() { echo "kube-apiserver: FAILED: $*" >&2; exit 1; }
# shellcheck source=lib/kube-source.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/kube-source.sh"

bin="$kube_cache_root/kube-apiserver/$kube_version/kube-apiserver"

# Fast path: already built.
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

kube_source_lock
# Another run may have built it while this one waited for the lock.
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

kube_source_prepare
kube_source_make kube-apiserver
out="$(kube_source_output kube-apiserver)"
"$out" --version >&2 || die "the built binary does not run: $out --version"
kube_install "$out" "$bin"
log "cached $bin"
kube_source_cleanup

echo "$bin"
