#!/usr/bin/env bash
# `make fresh-check`: rehearses the README's two commands, `make demo` and `make test`, on a
# machine that has nothing setup installs. CI runs on a machine where packages were installed by
# hand over time, so a green CI can hide a missing install step (issue 15: libprotobuf-dev); this
# starts from a fresh Debian bookworm root instead.
#
# How:
#   1. A minimal bookworm root (`debootstrap --variant=minbase`) plus what a new machine of this
#      kind has besides Debian's base: gcc, make, git, ca-certificates. Made once and kept as a
#      tarball under the cache; each run unpacks it afresh, so no run sees another's installs.
#   2. The machine's own Rust toolchain, cargo-nextest and Python are bind-mounted read-only (a new
#      machine of this kind has them; no registry serves them here).
#   3. The repository's committed HEAD is cloned into the root (uncommitted changes are not part
#      of the rehearsal), then, with the root pivoted to it (a mount namespace of its own; see
#      in_root) as root, with an empty HOME and cargo home:
#        FERRY_DEMO_EXIT=1 make demo   (the tour, then exit)
#        make test
#      Each step's output goes to a log; the summary gives each step's time.
#
# The root shares this machine's network (apt, PyPI and crates.io are reached from inside) and
# its loopback ports: the test port reservations (/tmp/ferry-test-ports) are shared, and the demo
# needs its ports (8200 and neighbours) free.
#
# Environment:
#   FERRY_CACHE=DIR           cache root (default ~/.cache/ferry); the rehearsal lives in
#                             DIR/fresh-check (base tarball, root, logs)
#   FERRY_FRESH_REF=REF       what to clone (default HEAD)
#   FERRY_FRESH_STEPS="..."   make targets to run in order (default "demo test")
#   FERRY_FRESH_KEEP=1        keep the unpacked root afterwards (default: removed)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
work="$cache/fresh-check"
base_tar="$work/bookworm-minbase.tar"
root="$work/root"
logs="$work/logs"
ref="${FERRY_FRESH_REF:-HEAD}"
steps="${FERRY_FRESH_STEPS:-demo test}"

log() { printf 'fresh-check: %s\n' "$*" >&2; }
die() { printf 'fresh-check: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and bind mounts)"

# What a new machine of this kind has outside Debian's packages, found on this machine.
rust_bin="$(dirname "$(rustup which cargo 2>/dev/null || command -v cargo)")"
[ -x "$rust_bin/cargo" ] && [ -x "$rust_bin/rustc" ] || die "no Rust toolchain found ($rust_bin)"
rust_root="$(cd "$rust_bin/.." && pwd -P)"
nextest="$(command -v cargo-nextest || true)"
python_prefix="$(python3 -c 'import sys; print(sys.base_prefix)')"
[ -x "$python_prefix/bin/python3" ] || die "python3's prefix $python_prefix has no bin/python3"

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mkdir -p "$work" "$logs"
# The root builds the workspace (debug and release) and Kubernetes from nothing: about 20 GB.
# A disk that fills midway fails the build 20 minutes in ("No space left on device"); say so now.
need_gb=25
free_gb=$(($(df -Pk "$work" | awk 'NR == 2 { print $4 }') / 1024 / 1024))
[ "$free_gb" -ge "$need_gb" ] ||
  die "$work has $free_gb GB free; the rehearsal needs about $need_gb GB (a workspace's target/ grows with every build: cargo clean frees it)"
mirror="$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

# --- 1. the base root, made once ---------------------------------------------------------------
if [ ! -f "$base_tar" ]; then
  base="$work/base"
  rm -rf "$base"
  log "debootstrap bookworm (minbase) from $mirror into $base (first run only)"
  debootstrap --variant=minbase bookworm "$base" "$mirror" >"$logs/debootstrap.log" 2>&1 ||
    die "debootstrap (see $logs/debootstrap.log)"
  cp /etc/resolv.conf "$base/etc/resolv.conf"
  log "adding what a new machine of this kind has: gcc, make, git, ca-certificates"
  chroot "$base" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev make git ca-certificates' \
    >>"$logs/debootstrap.log" 2>&1 || die "installing the base packages (see $logs/debootstrap.log)"
  chroot "$base" apt-get clean
  tar -C "$base" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
  rm -rf "$base"
fi

# --- 2. a fresh root for this run --------------------------------------------------------------
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ "${FERRY_FRESH_KEEP:-0}" != 1 ] && [ -d "$root" ]; then rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT

if [ -d "$root" ]; then
  # A previous run that was killed left its root, and maybe mounts, behind. (No mounts is the
  # usual case: grep then finds nothing, which must not end the script under pipefail.)
  log "removing the root a killed run left in $root"
  { grep -o " $root[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$root" ||
    die "cannot remove $root, which a killed run left; something may still be mounted under it (findmnt -R $root)"
fi
mkdir -p "$root"
tar -C "$root" -xf "$base_tar"
# The machine's network settings, which a new machine of this kind has too: name resolution, the
# certificate authorities its egress presents (without them pip and cargo fail TLS), pip's and
# apt's configuration.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
if [ -d /usr/local/share/ca-certificates ]; then
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$root/etc/pip.conf"
cp -n /etc/apt/apt.conf.d/* "$root/etc/apt/apt.conf.d/" 2>/dev/null || true

bind() { # bind SOURCE TARGET [ro]
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  mounts+=("$root$2")
  [ "${3:-}" != ro ] || mount -o remount,bind,ro "$root$2"
}
# The root as a mount point of its own, private: pivot_root (below) needs one.
mount --bind "$root" "$root" && mount --make-private "$root" && mounts+=("$root")
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
# /sys with what is mounted below it (the cgroup tree, which a machine's init mounts and the
# real-node tests create their cgroups in); only the top is read-only.
mkdir -p "$root/sys"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" && mounts+=("$root/sys")
mount -o remount,bind,ro "$root/sys"
bind /dev /dev
bind /dev/pts /dev/pts
mkdir -p /tmp/ferry-test-ports && bind /tmp/ferry-test-ports /tmp/ferry-test-ports
bind "$rust_root" /opt/rust ro
bind "$python_prefix" "$python_prefix" ro
if [ -n "$nextest" ]; then
  touch "$root/usr/local/bin/cargo-nextest"
  mount --bind "$nextest" "$root/usr/local/bin/cargo-nextest" && mounts+=("$root/usr/local/bin/cargo-nextest")
fi

commit="$(git -C "$repo" rev-parse --verify "$ref^{commit}")" || die "no commit $ref"
git clone -q --no-local "$repo" "$root/root/ferry"
git -C "$root/root/ferry" checkout -q "$commit"
if ! git -C "$repo" diff --quiet HEAD; then
  log "note: uncommitted changes in $repo are not part of this rehearsal"
fi

# --- 3. the README's commands ------------------------------------------------------------------
# The machine's environment for its registries (CA bundle paths, pip settings, proxies), passed on.
passed=()
while IFS='=' read -r name _; do
  passed+=("$name=${!name}")
done < <(env | grep -E '^(PIP_[A-Z_]+|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO|CARGO_HTTP_[A-Z_]+|CARGO_REGISTRIES_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
path="/opt/rust/bin:$python_prefix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each step runs with the fresh root as the root of a mount namespace of its own (pivot_root), not
# under chroot: a process that enters a mount namespace (the real-node tests `nsenter --mount`
# theirs) gets that namespace's root, which under chroot would be this machine's root, and it
# would not find the files the tests made under the fresh root's /tmp. The old root is then
# detached, so nothing of this machine is reachable but what is bind-mounted above.
in_root() {
  unshare --mount --fork -- /bin/sh -c '
    set -e
    new_root=$1
    shift
    mount --make-rprivate /
    cd "$new_root"
    mkdir -p .old-root
    pivot_root . .old-root
    cd /
    /usr/bin/umount -l /.old-root
    rmdir /.old-root
    exec /usr/bin/env -i "$@"
  ' sh "$root" HOME=/root PATH="$path" TERM=dumb LANG=C.UTF-8 USER=root \
    "${passed[@]}" FERRY_DEMO_EXIT=1 bash -c "cd /root/ferry && $*"
}

log "rehearsing ${steps} at ${commit:0:12} in $root (logs in $logs)"
summary=()
status=0
for step in $steps; do
  start=$(date +%s)
  if in_root "make $step" >"$logs/$step.log" 2>&1; then
    result=passed
  else
    result="FAILED (exit $?)"
    status=1
  fi
  took=$(($(date +%s) - start))
  summary+=("$(printf 'make %-6s %-18s %4d s   %s' "$step" "$result" "$took" "$logs/$step.log")")
  log "make $step: $result in ${took} s"
  [ "$status" -eq 0 ] || { tail -n 40 "$logs/$step.log" >&2; break; }
done

printf '\nfresh-check at %s (fresh bookworm root; toolchain, nextest and Python bind-mounted)\n' "${commit:0:12}"
printf '%s\n' "${summary[@]}"
exit "$status"
