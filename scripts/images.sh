#!/usr/bin/env bash
# `make images`: builds Ferry's three images here, with no registry and no Docker daemon, as image
# tarballs under target/images/ that `ctr images import` and `docker load` accept:
#
#   target/images/ferry-<version>.tar           ferry.dev/ferry:<version>           ferry-vault, ferry-sidecar
#   target/images/ferry-operator-<version>.tar  ferry.dev/ferry-operator:<version>  ferry-operator
#   target/images/etcd-<version>.tar            ferry.dev/etcd:<version>            Debian's etcd (bundled etcd)
#
# <version> is the workspace's Cargo version for all three (the charts' appVersion), never
# `latest`. Each image is the release binaries plus the shared libraries they load, the CA bundle
# and an /etc/passwd, all from Debian packages (`apt-get download` of the versions installed here,
# unpacked with `dpkg-deb -x`, cached in target/images/debs), assembled by scripts/image-rootfs.sh
# (which the Dockerfile runs too) and packed by scripts/oci-pack.py. No shell in any image.
#
# Incremental: cargo rebuilds nothing that has not changed, downloaded packages are kept, and an
# image is repacked only when a hash of its inputs (binaries, packages, these scripts) changed.
#
# Environment: FERRY_IMAGE_PREFIX (default ferry.dev), CARGO (default cargo).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo="${CARGO:-cargo}"
prefix="${FERRY_IMAGE_PREFIX:-ferry.dev}"
out="$repo/target/images"
debs="$out/debs"
mkdir -p "$debs"
started=$(date +%s)

version="$("$cargo" metadata --no-deps --format-version 1 --offline |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferry-vault"))')"

# The same command as `make bench` and the brief, so the builds share their artefacts.
"$cargo" build --release --workspace --bins
release="$repo/target/release"

# --- Debian packages ----------------------------------------------------------------------
# The package that owns each library a binary loads (ldd), as dpkg knows it; Debian's merged /usr
# means dpkg may record /lib/... or /usr/lib/... for the path ldd prints.
owner_of() {
  local path="$1" p
  for p in "$path" "$(readlink -f "$path")" "/usr$path" "${path#/usr}"; do
    if pkg="$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1)" && [ -n "$pkg" ]; then
      echo "$pkg"
      return
    fi
  done
  echo "images: no Debian package owns $path (ldd of a binary): cannot take it from Debian" >&2
  exit 1
}
libraries_of() { ldd "$1" 2>/dev/null | grep -oE '(^[[:space:]]*|=> )/[^ ]+' | sed -E 's/^[[:space:]]*(=> )?//' || true; }

# etcd-server for etcd, coreutils for `install` (the ferry pods' init containers copy the key
# files with it: see charts/ferry/templates/statefulset.yaml), ca-certificates for the bundle.
packages=(etcd-server coreutils ca-certificates)
for binary in "$release/ferry-vault" "$release/ferry-sidecar" "$release/ferry-operator" \
  /usr/bin/etcd /usr/bin/install; do
  [ -x "$binary" ] || { echo "images: $binary is missing (etcd: make setup)" >&2; exit 1; }
  while read -r lib; do
    [ -n "$lib" ] && packages+=("$(owner_of "$lib")")
  done < <(libraries_of "$binary")
done
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)

# The version installed here (what ldd saw), else the candidate. Downloads are kept; when the
# mirror no longer has the installed version, the candidate is taken and a marker remembers it,
# so that later runs do not ask again.
apt_download() { (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$@"); }
fetched_apt_lists=""
for pkg in "${packages[@]}"; do
  ver="$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)"
  [ -n "$ver" ] || ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')"
  file_ver="${ver//:/%3a}"
  compgen -G "$debs/${pkg}_${file_ver}_*.deb" >/dev/null && continue
  marker="$debs/${pkg}_${file_ver}.unavailable"
  [ -f "$marker" ] && compgen -G "$debs/${pkg}_*.deb" >/dev/null && continue
  echo "images: apt-get download $pkg=$ver"
  if ! apt_download "$pkg=$ver" 2>/dev/null; then
    if [ -z "$fetched_apt_lists" ]; then apt-get update -qq || true; fetched_apt_lists=1; fi
    echo "images: $pkg=$ver is not on the mirror; taking its candidate version"
    apt_download "$pkg" || { echo "images: apt-get download $pkg failed" >&2; exit 1; }
    touch "$marker"
  fi
done
# Only the newest download of each package counts.
deb_files=()
for pkg in "${packages[@]}"; do
  deb_files+=("$(ls -t "$debs/${pkg}"_*.deb | head -n1)")
done

# --- Images ---------------------------------------------------------------------------------
inputs_hash() {
  # Everything an image is made of: a change to any of these repacks it.
  {
    echo "$version $prefix"
    sha256sum "$@" "$repo/scripts/images.sh" "$repo/scripts/image-rootfs.sh" "$repo/scripts/oci-pack.py" \
      "${deb_files[@]}"
  } | sha256sum | cut -d' ' -f1
}

debian_root="$out/debian-root"
debian_root_ready=""
unpack_debian_root() {
  [ -z "$debian_root_ready" ] || return 0
  rm -rf "$debian_root"
  mkdir -p "$debian_root"
  for deb in "${deb_files[@]}"; do dpkg-deb -x "$deb" "$debian_root"; done
  debian_root_ready=1
}

uid=10001
labels=(
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.source=https://github.com/ferry-dev/ferry"
  --label "org.opencontainers.image.licenses=Apache-2.0"
)
env=(--env "PATH=/usr/local/bin:/usr/bin" --env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")

# build_image NAME KIND ENTRYPOINT CMD OWNED... -- SRC:DEST...
build_image() {
  local name="$1" kind="$2" entrypoint="$3" cmd="$4"
  shift 4
  local owned=() pairs=() srcs=()
  while [ "$1" != "--" ]; do owned+=(--owned "$1"); shift; done
  shift
  pairs=("$@")
  for pair in "${pairs[@]}"; do srcs+=("${pair%%:*}"); done
  local tarball="$out/$name-$version.tar" stamp="$out/$name-$version.inputs"
  # Debian binaries are named by their host path for hashing (the .deb is hashed anyway).
  local hashed=()
  for s in "${srcs[@]}"; do [[ "$s" == /usr/bin/* ]] || hashed+=("$s"); done
  local want
  want="$(inputs_hash "${hashed[@]}")"
  if [ -f "$tarball" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "images: $prefix/$name:$version is up to date ($tarball)"
    return
  fi
  unpack_debian_root
  local resolved=()
  for pair in "${pairs[@]}"; do
    local src="${pair%%:*}" dest="${pair#*:}"
    # Debian's binaries come from the unpacked packages, not from this machine.
    [[ "$src" == /usr/bin/* ]] && src="$debian_root$src"
    resolved+=("$src:$dest")
  done
  local rootfs="$out/rootfs/$name"
  "$repo/scripts/image-rootfs.sh" "$rootfs" "$debian_root" "$kind" "${resolved[@]}"
  python3 "$repo/scripts/oci-pack.py" --rootfs "$rootfs" --out "$tarball" \
    --name "$prefix/$name" --tag "$version" --user "$uid:$uid" \
    --entrypoint "$entrypoint" --cmd "$cmd" "${env[@]}" "${labels[@]}" \
    --label "org.opencontainers.image.title=$name" "${owned[@]}"
  echo "$want" >"$stamp"
}

build_image ferry ferry '["/usr/local/bin/ferry-vault"]' '[]' var/run/ferry var/run/ferry-keys -- \
  "$release/ferry-vault:/usr/local/bin/ferry-vault" \
  "$release/ferry-sidecar:/usr/local/bin/ferry-sidecar" \
  "/usr/bin/install:/usr/bin/install"
build_image ferry-operator ferry-operator '["/usr/local/bin/ferry-operator"]' '["run"]' -- \
  "$release/ferry-operator:/usr/local/bin/ferry-operator"
build_image etcd etcd '["/usr/bin/etcd"]' '[]' var/lib/etcd -- \
  "/usr/bin/etcd:/usr/bin/etcd"

echo "images: done in $(($(date +%s) - started)) s: $(ls "$out"/*-"$version".tar | xargs -n1 basename | tr '\n' ' ')"
