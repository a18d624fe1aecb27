#!/usr/bin/env python3
"""Packs a root filesystem directory into a one-layer image tarball, without a Docker daemon.

The tarball is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that also
carries Docker's `manifest.json` pointing at the same blobs, as `docker save` writes since Docker
25: `ctr images import` reads the OCI index (the image name is its `io.containerd.image.name`
annotation) and `docker load` reads `manifest.json` (`RepoTags`). Nothing is stored twice.

Everything is deterministic, so an unchanged root filesystem gives the same digests: entries are
sorted, every timestamp is SOURCE_DATE_EPOCH (default 0), owners are numeric (root, except the
paths given with --owned, which belong to the image's user), and gzip carries no name or time.

    oci-pack.py --rootfs DIR --out TAR --name REPO --tag TAG --user UID:GID
                --entrypoint JSON [--cmd JSON] [--env K=V]... [--label K=V]... [--owned PATH]...
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_tar(rootfs, owned, uid, gid, mtime):
    """The uncompressed layer: every file under rootfs, sorted, with normalised metadata."""
    buf = io.BytesIO()
    owned = {p.strip("/") for p in owned}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                paths.append(os.path.join(dirpath, name))
        for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs)):
            rel = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=rel)
            info.mtime = mtime
            mine = any(rel == o or rel.startswith(o + "/") for o in owned)
            info.uid, info.gid = (uid, gid) if mine else (0, 0)
            info.uname = info.gname = ""
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)
            else:
                raise SystemExit(f"oci-pack: unsupported file type at {path}")
    return buf.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True, help="repository, e.g. ferry.dev/ferry")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--user", required=True, help="numeric UID:GID")
    ap.add_argument("--entrypoint", required=True, help="JSON list")
    ap.add_argument("--cmd", default="[]", help="JSON list")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--owned", action="append", default=[])
    args = ap.parse_args()

    uid, gid = (int(x) for x in args.user.split(":"))
    if uid == 0:
        raise SystemExit("oci-pack: an image must not run as root")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )

    layer = layer_tar(args.rootfs, args.owned, uid, gid, epoch)
    layer_gz = gzip_bytes(layer)
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": args.user,
            "Env": args.env,
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "WorkingDir": "/",
            "Labels": dict(label.split("=", 1) for label in args.label),
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "history": [{"created": created, "created_by": "scripts/images.sh"}],
    }
    config_bytes = canonical(config)
    reference = f"{args.name}:{args.tag}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": digest(layer_gz), "size": len(layer_gz)}],
        "annotations": {"org.opencontainers.image.ref.name": reference},
    }
    manifest_bytes = canonical(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    # containerd names the imported image from this annotation.
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": args.tag,
                },
            }
        ],
    }
    blob = lambda data: "blobs/sha256/" + digest(data).split(":", 1)[1]
    docker_manifest = [
        {"Config": blob(config_bytes), "RepoTags": [reference], "Layers": [blob(layer_gz)]}
    ]

    entries = [
        ("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
        ("index.json", canonical(index)),
        ("manifest.json", canonical(docker_manifest)),
        (blob(layer_gz), layer_gz),
        (blob(config_bytes), config_bytes),
        (blob(manifest_bytes), manifest_bytes),
    ]
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name, data in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, epoch
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{reference} {digest(manifest_bytes)} {os.path.getsize(args.out) // 1024} KiB -> {args.out}")


if __name__ == "__main__":
    main()
