#!/usr/bin/env bash
# Makes what a real single-node Kubernetes (v1.20.2) needs beside kube-apiserver available for
# Ferry's real-node tests (tests/src/kube_node.rs), and prints the paths on stdout:
#
#   <dir>/bin/kubelet, kube-proxy, kube-controller-manager, kube-scheduler
#       built from Debian's `kubernetes` source with the recipe kube-apiserver.sh uses
#       (scripts/lib/kube-source.sh): no registry publishes them
#   <dir>/images/pause.tar      k8s.gcr.io/pause:3.2, the pod sandbox image kubelet 1.20 asks
#                               for, made from the source tree's build/pause/linux/pause.c
#                               (gcc -static); docker-archive, for `ctr -n k8s.io images import`
#   <dir>/images/busybox.tar    ferry.test/busybox:1.35, Debian's static busybox as the only
#                               file: a shell, httpd, nc and nslookup for pods in tests
#   <dir>                       the last line
#
# where <dir> is ${FERRY_CACHE:-$HOME/.cache/ferry}/kube-node/v1.20.2. It also installs the Debian
# packages a node runs on: containerd (1.6, CRI v1alpha2, which kubelet 1.20 speaks), runc,
# containernetworking-plugins (bridge, host-local, loopback), iptables, conntrack, socat,
# iproute2 (the test harness's `ip`), and busybox-static for the test image. Debian has no
# CoreDNS: the cluster's DNS is Ferry's own (kube-dns/).
#
# Idempotent and cached: a warm run checks files and commands and exits within a second. The
# first run builds for about 3 minutes on 2 cores (plus the source download when kube-apiserver.sh
# has not run). Progress goes to stderr.
#
# Environment:
#   FERRY_CACHE               cache root (default $HOME/.cache/ferry)
#   FERRY_KEEP_KUBE_BUILD=1   keep the unpacked source tree and Go build cache after a build
set -euo pipefail

log() { echo "kube-node: $*" >&2; }
die() { echo "kube-node: FAILED: $*" >&2; exit 1; }
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=lib/kube-source.sh
. "$here/lib/kube-source.sh"
# shellcheck source=lib/image-tar.sh
. "$here/lib/image-tar.sh"

dir="$kube_cache_root/kube-node/$kube_version"
binaries=(kubelet kube-proxy kube-controller-manager kube-scheduler)
pause_tar="$dir/images/pause.tar"
pause_ref="k8s.gcr.io/pause:3.2"
busybox_tar="$dir/images/busybox.tar"
busybox_ref="ferry.test/busybox:1.35"

# 1. Debian packages, each checked by the command or file the node uses from it.
need=()
missing_cmd() { ! command -v "$1" >/dev/null 2>&1; }
missing_cmd containerd && need+=(containerd)
missing_cmd ctr && need+=(containerd)
missing_cmd runc && need+=(runc)
for plugin in bridge host-local loopback portmap; do
  [ -x "/usr/lib/cni/$plugin" ] || { need+=(containernetworking-plugins); break; }
done
missing_cmd iptables && need+=(iptables)
missing_cmd conntrack && need+=(conntrack)
missing_cmd socat && need+=(socat)
# The test harness makes each region's network (ip), and enters its namespaces (util-linux).
missing_cmd ip && need+=(iproute2)
{ missing_cmd unshare || missing_cmd nsenter; } && need+=(util-linux)
missing_cmd mount && need+=(mount)
[ -x /bin/busybox ] || need+=(busybox-static)
# gcc -static needs libc.a (libc6-dev).
{ missing_cmd gcc || [ ! -f /usr/lib/x86_64-linux-gnu/libc.a ]; } && need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $kube_sudo apt-get update -qq >&2 || die "apt-get update"
  $kube_sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]}"
  # Debian starts containerd as a service on install where systemd runs; the tests start their
  # own per region and need none on the host.
fi
for cmd in containerd ctr runc iptables conntrack socat ip unshare nsenter mount gcc; do
  missing_cmd "$cmd" && die "$cmd is not on PATH after installing the Debian packages"
done
[ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge is missing (Debian package containernetworking-plugins)"
/bin/busybox true 2>/dev/null || die "/bin/busybox does not run (Debian package busybox-static)"

# 2. The binaries, built together in one tree when any is missing.
missing=()
for b in "${binaries[@]}"; do [ -x "$dir/bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  kube_source_lock
  missing=()
  for b in "${binaries[@]}"; do [ -x "$dir/bin/$b" ] || missing+=("$b"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  kube_source_prepare
  kube_source_make "${missing[@]}"
  for b in "${missing[@]}"; do
    out="$(kube_source_output "$b")"
    "$out" --version >&2 || die "the built binary does not run: $out --version"
    kube_install "$out" "$dir/bin/$b"
    log "cached $dir/bin/$b"
  done
  kube_source_cleanup
fi

# 3. The pause image, from the one C file in the downloaded source (no unpacked tree needed).
if [ ! -f "$pause_tar" ]; then
  orig="$(ls -1 "$kube_build"/kubernetes_*.orig.tar.gz 2>/dev/null | head -n1 || true)"
  if [ -z "$orig" ]; then
    kube_source_lock
    kube_source_prepare  # downloads the source
    orig="$(ls -1 "$kube_build"/kubernetes_*.orig.tar.gz | head -n1)" || die "no orig tarball in $kube_build"
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "building the pause image from build/pause/linux/pause.c in $(basename "$orig")"
  tar -xzf "$orig" -C "$work" --wildcards --strip-components=1 '*/build/pause/linux/pause.c' \
    || die "extracting build/pause/linux/pause.c from $orig"
  mkdir -p "$work/rootfs"
  gcc -Os -Wall -Werror -static -DVERSION=v3.2-ferry -o "$work/rootfs/pause" \
    "$work/build/pause/linux/pause.c" || die "gcc -static pause.c"
  strip "$work/rootfs/pause"
  "$work/rootfs/pause" -v >&2 || die "the built pause does not run"
  image_tar "$pause_tar" "$pause_ref" "$work/rootfs" '["/pause"]'
  log "cached $pause_tar ($pause_ref)"
fi

# 4. The busybox test image.
if [ ! -f "$busybox_tar" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  for applet in sh httpd nc nslookup wget cat echo sleep; do
    ln -s busybox "$work/rootfs/bin/$applet"
  done
  image_tar "$busybox_tar" "$busybox_ref" "$work/rootfs" '["/bin/busybox"]'
  log "cached $busybox_tar ($busybox_ref)"
fi

for b in "${binaries[@]}"; do echo "$dir/bin/$b"; done
echo "$pause_tar"
echo "$busybox_tar"
echo "$dir"
