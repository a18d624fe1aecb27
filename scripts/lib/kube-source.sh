# shellcheck shell=bash
# Builds Kubernetes v1.20.2 binaries from Debian's `kubernetes` source package (bookworm:
# 1.20.5+really1.20.2, the v1.20.2 tree with vendor/) with Debian's Go. Sourced by
# scripts/kube-apiserver.sh (the API server the operator tests run) and scripts/kube-node.sh
# (kubelet, kube-proxy, controller manager and scheduler for the real-node tests), so both build
# from one tree with one recipe.
#
#   kube_source_prepare        deb-src entry, build dependencies, the downloaded source (kept in
#                              $kube_build/, about 30 MB), unpacked fresh into $kube_tree with the
#                              reflect2 fix applied
#   kube_source_make WHAT...   `make WHAT=cmd/a cmd/b` in $kube_tree, no network; prints nothing
#   kube_source_output NAME    the path of a built binary under $kube_tree/_output
#   kube_source_cleanup        removes the tree and the Go caches unless FERRY_KEEP_KUBE_BUILD=1
#
# The caller sets `log` and `die` functions and takes `kube_source_lock` (one build at a time:
# the tree and the caches are shared).
#
# Environment:
#   FERRY_CACHE               cache root (default $HOME/.cache/ferry)
#   FERRY_KEEP_KUBE_BUILD=1   keep the unpacked source tree and Go build cache after a build

kube_version="v1.20.2"
kube_expected_src_version="1.20.5+really1.20.2"
kube_cache_root="${FERRY_CACHE:-$HOME/.cache/ferry}"
# Where the downloaded source has always been kept (first by kube-apiserver.sh alone).
kube_build="$kube_cache_root/kube-apiserver/build"
kube_tree="$kube_build/src"

kube_sudo=""
[ "$(id -u)" -eq 0 ] || kube_sudo="sudo"

# Holds an exclusive lock on the build directory until the calling shell exits.
kube_source_lock() {
  mkdir -p "$kube_build"
  exec {kube_lock_fd}>"$kube_build/.lock"
  if ! flock -n "$kube_lock_fd"; then
    log "waiting for another build of Kubernetes binaries to finish ($kube_build/.lock)"
    flock "$kube_lock_fd"
  fi
}

kube_source_prepare() {
  export DEBIAN_FRONTEND=noninteractive

  # 1. A deb-src entry for bookworm main, on the mirror the machine already uses.
  if ! grep -qs -E '^[[:space:]]*(deb-src|Types:.*deb-src)' \
         /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    # The first deb822 stanza on a .../debian URI gives the mirror and its Signed-By (apt refuses
    # two entries for one source with different Signed-By values); else a one-line "deb" entry.
    local mirror="" signed_by="" line list
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
    } | $kube_sudo tee "$list" >/dev/null || die "could not write $list"
    log "apt-get update"
    $kube_sudo apt-get update -qq >&2 || die "apt-get update"
  elif [ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
    log "apt-get update"
    $kube_sudo apt-get update -qq >&2 || die "apt-get update"
  fi

  local src_version
  src_version="$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}')"
  [ -n "$src_version" ] || die "apt-cache showsrc kubernetes: no source package known (is the deb-src line active?)"
  if [ "${src_version%-*}" != "$kube_expected_src_version" ]; then  # compare without the Debian revision
    log "WARNING: Debian's kubernetes source is $src_version, not $kube_expected_src_version; proceeding anyway"
  fi

  # 2. Build dependencies, from Debian only.
  local need=() p
  for p in golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev make; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing Debian packages: ${need[*]}"
    $kube_sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]}"
  fi
  command -v go >/dev/null || die "go is not on PATH after installing golang-go"
  local reflect2_src="/usr/share/gocode/src/github.com/modern-go/reflect2"
  [ -d "$reflect2_src" ] || die "$reflect2_src is missing (golang-github-modern-go-reflect2-dev)"

  # 3. The source: download once (kept), unpack fresh every build.
  local dsc
  dsc="$(cd "$kube_build" && ls -1 kubernetes_*.dsc 2>/dev/null | head -n1 || true)"
  if [ -z "$dsc" ]; then
    log "downloading source (apt-get source -d kubernetes, about 30 MB)"
    (cd "$kube_build" && apt-get source -d kubernetes >&2) || die "apt-get source -d kubernetes"
    dsc="$(cd "$kube_build" && ls -1 kubernetes_*.dsc | head -n1)" || die "no kubernetes_*.dsc after apt-get source"
  fi
  chmod -R u+w "$kube_tree" 2>/dev/null || true
  rm -rf "$kube_tree"
  log "unpacking $dsc"
  (cd "$kube_build" && dpkg-source -x "$dsc" "$kube_tree" >&2) || die "dpkg-source -x $dsc"

  # 4. reflect2 1.0.1 (vendored) crashes under Go >= 1.18 on the first custom-resource create;
  #    swap in Debian's 1.0.2 source. vendor/modules.txt keeps saying 1.0.1, which Go does not
  #    check against the files, and the vendored copy must not carry its own go.mod.
  log "replacing vendor/github.com/modern-go/reflect2 with $reflect2_src"
  rm -rf "$kube_tree/vendor/github.com/modern-go/reflect2"
  cp -rL "$reflect2_src" "$kube_tree/vendor/github.com/modern-go/reflect2" || die "copying reflect2"
  rm -f "$kube_tree/vendor/github.com/modern-go/reflect2/go.mod" "$kube_tree/vendor/github.com/modern-go/reflect2/go.sum"
}

# Builds `cmd/<name>` for every name given. The tree is no git checkout, so the version is given
# explicitly. Everything the build writes (Go build cache included) stays under $kube_build; no
# network is used.
kube_source_make() {
  local what=() name
  for name in "$@"; do what+=("cmd/$name"); done
  log "building ${*} ($(go version | awk '{print $3}'))"
  local start
  start=$(date +%s)
  (
    cd "$kube_tree"
    export CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on GOTOOLCHAIN=local
    export GOCACHE="$kube_build/gocache" GOPATH="$kube_build/gopath"
    export KUBE_GIT_VERSION="$kube_version" KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
    nice -n 10 make WHAT="${what[*]}" >&2
  ) || die "make WHAT=\"${what[*]}\" (see the output above)"
  log "building ${*} took $(( $(date +%s) - start )) s"
}

kube_source_output() {
  local out
  out="$(find "$kube_tree/_output" -type f -name "$1" -perm -u+x 2>/dev/null | head -n1)"
  [ -n "$out" ] || die "the build finished but no _output/**/$1 was found"
  echo "$out"
}

# Copies a file into place atomically (a temporary file in the target's directory, then rename).
kube_install() {
  local from="$1" to="$2" mode="${3:-0755}" tmp
  mkdir -p "$(dirname "$to")"
  tmp="$(mktemp "$(dirname "$to")/.$(basename "$to").XXXXXX")"
  cp "$from" "$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$to" || { rm -f "$tmp"; die "installing $to"; }
}

kube_source_cleanup() {
  if [ "${FERRY_KEEP_KUBE_BUILD:-0}" != 1 ]; then
    log "removing the build tree and Go build cache (downloaded source kept in $kube_build)"
    chmod -R u+w "$kube_tree" "$kube_build/gocache" "$kube_build/gopath" 2>/dev/null || true
    rm -rf "$kube_tree" "$kube_build/gocache" "$kube_build/gopath"
  fi
}
