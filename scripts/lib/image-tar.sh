# shellcheck shell=bash
# Writes a single-layer container image as a docker-archive tarball (manifest.json, the config
# named by its digest, one uncompressed layer.tar), the format both `ctr images import` and
# `docker load` accept. No daemon and no registry: only tar and sha256sum. The layer is made
# reproducible (sorted names, owner 0, mtime 0), so the same inputs give the same image digest.
#
#   image_tar OUT.tar REF ROOTFS_DIR ENTRYPOINT_JSON
#
# REF is the tag the image is imported under (`k8s.gcr.io/pause:3.2`); ENTRYPOINT_JSON a JSON
# array (`["/pause"]`). The caller defines `die`.
image_tar() {
  local out="$1" ref="$2" rootfs="$3" entrypoint="$4"
  local work diff_id config config_id
  work="$(mktemp -d)"
  tar --create --file "$work/layer.tar" --directory "$rootfs" --sort=name --owner=0 --group=0 \
    --numeric-owner --mtime=@0 . || { rm -rf "$work"; die "tar of $rootfs"; }
  diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  mkdir "$work/$diff_id"
  mv "$work/layer.tar" "$work/$diff_id/layer.tar"
  config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\","
  config+="\"config\":{\"Entrypoint\":$entrypoint,\"Env\":[\"PATH=/bin\"],\"WorkingDir\":\"/\"},"
  config+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}}"
  config_id="$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)"
  printf '%s' "$config" >"$work/$config_id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_id" "$ref" "$diff_id" >"$work/manifest.json"
  mkdir -p "$(dirname "$out")"
  tar --create --file "$out.tmp" --directory "$work" --sort=name --owner=0 --group=0 \
    --numeric-owner --mtime=@0 manifest.json "$config_id.json" "$diff_id" \
    || { rm -rf "$work" "$out.tmp"; die "writing $out"; }
  mv -f "$out.tmp" "$out"
  rm -rf "$work"
}
