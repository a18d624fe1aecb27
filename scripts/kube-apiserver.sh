#!/usr/bin/env bash
# Makes a real kube-apiserver (v1.20.2) available for Ferry's tests and prints its path on stdout
# as the last line. No registry publishes the binary, so it is built once from Debian's
# `kubernetes` source package (bookworm: 1.20.5+really1.20.2, the v1.20.2 tree with vendor/) with
# Debian's Go, and cached outside the repository:
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

version="v1.20.2"
expected_src_version="1.20.5+really1.20.2"
cache_root="${FERRY_CACHE:-$HOME/.cache/ferry}"
dir="$cache_root/kube-apiserver/$version"
bin="$dir/kube-apiserver"

# Fast path: already built.
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

log() { echo "kube-apiserver: $*" >&2; }
die() { echo "kube-apiserver: FAILED: $*" >&2; exit 1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

build="$cache_root/kube-apiserver/build"
mkdir -p "$dir" "$build"

# 1. A deb-src entry for bookworm main, on the mirror the machine already uses.
if ! grep -qs -E '^[[:space:]]*(deb-src|Types:.*deb-src)' \
       /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
  # The first deb822 stanza on a .../debian URI gives the mirror and its Signed-By (apt refuses
  # two entries for one source with different Signed-By values); else a one-line "deb" entry.
  read -r mirror signed_by < <(awk '
      /^[[:space:]]*$/ { if (u != "") { print u, (k == "" ? "-" : k); exit } u = ""; k = ""; next }
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) u = $i }
      /^Signed-By:/ { k = $2 }
      END { if (u != "") print u, (k == "" ? "-" : k) }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true) || true
  if [ -z "${mirror:-}" ]; then
    line="$(grep -hs -E '^[[:space:]]*deb[[:space:]].*/debian/?[[:space:]]+bookworm[[:space:]]' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)"
    mirror="$(grep -oE 'https?://[^ ]*/debian/?' <<<"$line" || true)"
    signed_by="$(grep -oE 'signed-by=[^] ]*' <<<"$line" | cut -d= -f2 || true)"
  fi
  mirror="${mirror:-http://deb.debian.org/debian}"
  [ "${signed_by:-}" != "-" ] || signed_by=""
  list=/etc/apt/sources.list.d/ferry-deb-src.sources
  log "adding deb-src for bookworm main ($mirror) in $list"
  {
    echo "Types: deb-src"
    echo "URIs: $mirror"
    echo "Suites: bookworm"
    echo "Components: main"
    [ -z "${signed_by:-}" ] || echo "Signed-By: $signed_by"
  } | $sudo tee "$list" >/dev/null || die "could not write $list"
  log "apt-get update"
  $sudo apt-get update -qq >&2 || die "apt-get update"
elif ! apt-cache showsrc kubernetes >/dev/null 2>&1 || [ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
  log "apt-get update"
  $sudo apt-get update -qq >&2 || die "apt-get update"
fi

src_version="$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}')"
[ -n "$src_version" ] || die "apt-cache showsrc kubernetes: no source package known (is the deb-src line active?)"
if [ "${src_version%-*}" != "$expected_src_version" ]; then  # compare without the Debian revision
  log "WARNING: Debian's kubernetes source is $src_version, not $expected_src_version; proceeding anyway"
fi

# 2. Build dependencies, from Debian only.
need=()
for p in golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev make; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]}"
fi
command -v go >/dev/null || die "go is not on PATH after installing golang-go"
reflect2_src="/usr/share/gocode/src/github.com/modern-go/reflect2"
[ -d "$reflect2_src" ] || die "$reflect2_src is missing (golang-github-modern-go-reflect2-dev)"

# 3. The source: download once (kept), unpack fresh every build.
cd "$build"
dsc="$(ls -1 kubernetes_*.dsc 2>/dev/null | head -n1 || true)"
if [ -z "$dsc" ]; then
  log "downloading source (apt-get source -d kubernetes, about 30 MB)"
  apt-get source -d kubernetes >&2 || die "apt-get source -d kubernetes"
  dsc="$(ls -1 kubernetes_*.dsc | head -n1)" || die "no kubernetes_*.dsc after apt-get source"
fi
tree="$build/src"
rm -rf "$tree"
log "unpacking $dsc"
dpkg-source -x "$dsc" "$tree" >&2 || die "dpkg-source -x $dsc"

# 4. reflect2 1.0.1 (vendored) crashes under Go >= 1.18 on the first custom-resource create;
#    swap in Debian's 1.0.2 source. vendor/modules.txt keeps saying 1.0.1, which Go does not check
#    against the files, and the vendored copy must not carry its own go.mod.
log "replacing vendor/github.com/modern-go/reflect2 with $reflect2_src"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -rL "$reflect2_src" "$tree/vendor/github.com/modern-go/reflect2" || die "copying reflect2"
rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"

# 5. Build. The tree is no git checkout, so the version is given explicitly. Everything the build
#    writes (Go build cache included) stays under the build dir; no network is used.
log "building (about 12 minutes on 2 cores; $(go version | awk '{print $3}'))"
start=$(date +%s)
(
  cd "$tree"
  export CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on GOTOOLCHAIN=local
  export GOCACHE="$build/gocache" GOPATH="$build/gopath"
  export KUBE_GIT_VERSION="$version" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
  nice -n 10 make WHAT=cmd/kube-apiserver >&2
) || die "make WHAT=cmd/kube-apiserver (see the output above)"
log "build took $(( $(date +%s) - start )) s"

out="$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x 2>/dev/null | head -n1)"
[ -n "$out" ] || die "the build finished but no _output/**/kube-apiserver was found"
"$out" --version >&2 || die "the built binary does not run: $out --version"

# 6. Install atomically into the cache.
tmp="$(mktemp "$dir/.kube-apiserver.XXXXXX")"
cp "$out" "$tmp" && chmod 0755 "$tmp" && mv -f "$tmp" "$bin" || { rm -f "$tmp"; die "installing $bin"; }
log "cached $bin"

if [ "${FERRY_KEEP_KUBE_BUILD:-0}" != 1 ]; then
  log "removing the build tree and Go build cache (downloaded source kept in $build)"
  chmod -R u+w "$tree" "$build/gocache" "$build/gopath" 2>/dev/null || true
  rm -rf "$tree" "$build/gocache" "$build/gopath"
fi

echo "$bin"
