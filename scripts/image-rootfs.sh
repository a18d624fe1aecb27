#!/usr/bin/env bash
# Assembles the root filesystem of one Ferry image in a directory: the given binaries, the shared
# libraries they load (found with ldd, copied from a Debian root), the CA bundle, an /etc/passwd
# with the one unprivileged user, and the few directories that user writes. Nothing else: no
# shell, no package manager, so a compromised process finds no tools in the container.
#
# One script for both ways the images are built, so they cannot drift apart:
# * `make images` (scripts/images.sh) passes a Debian root made of `apt-get download` +
#   `dpkg-deb -x` of exactly the packages that own the libraries;
# * the Dockerfile passes `/`, the Debian build stage the binaries were installed in.
#
#   scripts/image-rootfs.sh OUT DEBIAN_ROOT KIND SRC:DEST...
#
# KIND is `ferry`, `ferry-operator` or `etcd` (which directories the user owns). ldd runs on each
# SRC as it is on this machine; every library it names is taken from DEBIAN_ROOT at the same path
# (or under usr/, Debian's merged /usr), so a library missing from DEBIAN_ROOT is an error here,
# not a container that fails to start.
set -euo pipefail

# The numeric user every image runs as: numeric so that Kubernetes' runAsNonRoot can verify it
# without reading /etc/passwd.
FERRY_UID=10001

out="$1" root="$2" kind="$3"
shift 3
[ -d "$root" ] || { echo "image-rootfs: Debian root $root does not exist" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"

# Copies DEBIAN_ROOT's file at path $1 to the same path in the image, following symlinks (the
# image holds plain files where Debian has a chain of links).
copy_from_root() {
  local path="$1" src=""
  for candidate in "$root$path" "$root/usr$path" "$root${path#/usr}"; do
    if [ -e "$candidate" ]; then src="$candidate"; break; fi
  done
  [ -n "$src" ] || { echo "image-rootfs: $path is not in the Debian root $root" >&2; exit 1; }
  mkdir -p "$out$(dirname "$path")"
  cp -L "$src" "$out$path"
}

for pair in "$@"; do
  src="${pair%%:*}" dest="${pair#*:}"
  [ -x "$src" ] || { echo "image-rootfs: $src is not an executable file" >&2; exit 1; }
  mkdir -p "$out$(dirname "$dest")"
  cp -L "$src" "$out$dest"
  chmod 0755 "$out$dest"
  # ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader; the vDSO
  # has no file. A static binary prints "not a dynamic executable" and needs nothing.
  if ldd_out="$(ldd "$src" 2>&1)"; then
    while read -r lib; do
      copy_from_root "$lib"
    done < <(printf '%s\n' "$ldd_out" | grep -oE '(^[[:space:]]*|=> )/[^ ]+' | sed -E 's/^[[:space:]]*(=> )?//' | sort -u)
  elif ! printf '%s' "$ldd_out" | grep -q 'not a dynamic executable'; then
    echo "image-rootfs: ldd $src failed: $ldd_out" >&2
    exit 1
  fi
done

# CA certificates for TLS to etcd, other regions and the Kubernetes API: Debian builds the bundle
# in ca-certificates' postinst, which `dpkg-deb -x` does not run, so concatenate its sources.
mkdir -p "$out/etc/ssl/certs"
if [ -f "$root/etc/ssl/certs/ca-certificates.crt" ]; then
  cp -L "$root/etc/ssl/certs/ca-certificates.crt" "$out/etc/ssl/certs/ca-certificates.crt"
else
  shopt -s nullglob
  certs=("$root"/usr/share/ca-certificates/mozilla/*.crt)
  [ ${#certs[@]} -gt 0 ] || { echo "image-rootfs: no CA certificates in $root" >&2; exit 1; }
  cat "${certs[@]}" >"$out/etc/ssl/certs/ca-certificates.crt"
fi

# The user. Its shell does not exist: nobody logs in.
cat >"$out/etc/passwd" <<EOF
root:x:0:0:root:/root:/nonexistent
ferry:x:$FERRY_UID:$FERRY_UID:ferry:/nonexistent:/nonexistent
EOF
cat >"$out/etc/group" <<EOF
root:x:0:
ferry:x:$FERRY_UID:
EOF
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/ssl/certs/ca-certificates.crt"

# Writable places (in Kubernetes, volumes are mounted over them; the root filesystem is read-only).
# Owned by the user where the build runs as root (the Dockerfile); scripts/oci-pack.py sets the
# owners in the tar itself either way.
owner=()
[ "$(id -u)" -ne 0 ] || owner=(-o "$FERRY_UID" -g "$FERRY_UID")
install -d -m 1777 "$out/tmp"
case "$kind" in
  ferry) install -d -m 0700 "${owner[@]}" "$out/var/run/ferry" "$out/var/run/ferry-keys" ;;
  etcd) install -d -m 0700 "${owner[@]}" "$out/var/lib/etcd" ;;
  ferry-operator) ;;
  *) echo "image-rootfs: unknown image kind $kind" >&2; exit 1 ;;
esac
