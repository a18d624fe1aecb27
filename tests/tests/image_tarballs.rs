//! The image tarballs `make images` writes under `target/images/` are what `ctr images import`
//! and `docker load` expect, and the images run: for each of ferry, ferry-operator and etcd,
//! every blob's name is its SHA-256, the OCI index, the OCI manifest and Docker's manifest.json
//! agree on the blobs and their sizes, the config's diff_id is the SHA-256 of the uncompressed
//! layer, the tag is Cargo's version (never `latest`), the image runs as a numeric non-root user
//! that /etc/passwd names, it carries no shell, and each entrypoint binary runs from the
//! extracted layer with only the image's own libraries (in a chroot as that user, or through the
//! image's own ld.so when the tests do not run as root).
//!
//! The test does not build the images (minutes of release build): `make test` runs `make images`
//! first; alone, run `make images` before it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A binary to run from an image, its arguments, and what its output must contain.
type Run = (&'static str, &'static [&'static str], &'static str);

/// What `scripts/images.sh` builds: image name, entrypoint, and the binaries to run.
const IMAGES: &[(&str, &str, &[Run])] = &[
    (
        "ferry",
        "/usr/local/bin/ferry-vault",
        &[
            ("/usr/local/bin/ferry-vault", &["--version"], "ferry-vault "),
            (
                "/usr/local/bin/ferry-sidecar",
                &["--version"],
                "ferry-sidecar ",
            ),
            // The init containers copy key files with it (charts/ferry).
            ("/usr/bin/install", &["--version"], "GNU coreutils"),
        ],
    ),
    (
        "ferry-operator",
        "/usr/local/bin/ferry-operator",
        &[(
            "/usr/local/bin/ferry-operator",
            &["--version"],
            "ferry-operator ",
        )],
    ),
    (
        "etcd",
        "/usr/bin/etcd",
        &[("/usr/bin/etcd", &["--version"], "etcd Version: ")],
    ),
];
const PREFIX: &str = "ferry.dev";
const UID: &str = "10001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command; its stdout, or the test fails with what it said.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// Checks one descriptor (`digest`, `size`) against its blob.
fn check_descriptor(layout: &Path, descriptor: &Value, what: &str) -> PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    let path = blob_path(layout, digest);
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|_| panic!("{what}: blob {digest} is missing"))
        .len();
    assert_eq!(
        Some(size),
        descriptor["size"].as_u64(),
        "{what}: size of {digest}"
    );
    path
}

#[test]
fn image_tarballs_are_valid_non_root_and_their_binaries_run() {
    let version = env!("CARGO_PKG_VERSION");
    assert_ne!(version, "latest");
    let as_root = run("id", &["-u"]).trim() == "0";
    for &(name, entrypoint, binaries) in IMAGES {
        let tarball = repo().join(format!("target/images/{name}-{version}.tar"));
        assert!(
            tarball.exists(),
            "{} is missing: run `make images` (make test does)",
            tarball.display()
        );
        let scratch = tempfile::tempdir().unwrap();
        let layout = scratch.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        run(
            "tar",
            &[
                "-xf",
                tarball.to_str().unwrap(),
                "-C",
                layout.to_str().unwrap(),
            ],
        );

        // Every blob is named by its digest.
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let name_digest = format!("sha256:{}", path.file_name().unwrap().to_str().unwrap());
            assert_eq!(
                sha256_file(&path),
                name_digest,
                "{name}: blob content vs name"
            );
        }
        assert_eq!(
            read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
            "1.0.0"
        );

        // OCI index -> manifest -> config and layer.
        let reference = format!("{PREFIX}/{name}:{version}");
        let index = read_json(&layout.join("index.json"));
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{name}: one manifest");
        let descriptor = &manifests[0];
        assert_eq!(
            descriptor["annotations"]["io.containerd.image.name"], reference,
            "{name}: the name containerd imports it as"
        );
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            version
        );
        let manifest = read_json(&check_descriptor(&layout, descriptor, name));
        let config_path = check_descriptor(&layout, &manifest["config"], name);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{name}: one layer");
        let layer_path = check_descriptor(&layout, &layers[0], name);
        let config = read_json(&config_path);

        // docker load's manifest.json names the same blobs and the tag.
        let docker = read_json(&layout.join("manifest.json"));
        let relative = |p: &Path| {
            p.strip_prefix(&layout)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            docker[0]["Config"],
            relative(&config_path),
            "{name}: docker Config"
        );
        assert_eq!(
            docker[0]["Layers"][0],
            relative(&layer_path),
            "{name}: docker Layers"
        );
        assert_eq!(
            docker[0]["RepoTags"][0], reference,
            "{name}: docker RepoTags"
        );

        // The diff_id is the digest of the uncompressed layer.
        let uncompressed = scratch.path().join("layer.tar");
        let status = Command::new("gzip")
            .arg("-dc")
            .arg(&layer_path)
            .stdout(std::fs::File::create(&uncompressed).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "{name}: the layer is not gzip");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            sha256_file(&uncompressed),
            "{name}: diff_id"
        );

        // A numeric non-root user, and the entrypoint.
        let user = config["config"]["User"].as_str().unwrap();
        let (uid, gid) = user.split_once(':').expect("User is uid:gid");
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0) && gid.parse::<u32>().is_ok(),
            "{name}: User {user:?} is not a numeric non-root user"
        );
        assert_eq!(uid, UID);
        assert_eq!(
            config["config"]["Entrypoint"][0], entrypoint,
            "{name}: entrypoint"
        );
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");

        // The layer, extracted: the user exists, no shell, the binaries run.
        let root = scratch.path().join("root");
        std::fs::create_dir(&root).unwrap();
        run(
            "tar",
            &[
                "--numeric-owner",
                "-xf",
                uncompressed.to_str().unwrap(),
                "-C",
                root.to_str().unwrap(),
            ],
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(
            passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
            "{name}: /etc/passwd has no user {uid}:\n{passwd}"
        );
        for shell in [
            "bin/sh",
            "bin/bash",
            "usr/bin/sh",
            "usr/bin/bash",
            "bin/busybox",
        ] {
            assert!(!root.join(shell).exists(), "{name}: the image has /{shell}");
        }
        let bundle = std::fs::metadata(root.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap_or_else(|_| panic!("{name}: no CA bundle"));
        assert!(
            bundle.len() > 10_000,
            "{name}: the CA bundle is nearly empty"
        );
        for &(binary, args, expected) in binaries {
            assert!(
                root.join(&binary[1..]).is_file(),
                "{name}: {binary} is missing"
            );
            let output = run_in_image(&root, as_root, user, binary, args);
            assert!(
                output.contains(expected),
                "{name}: {binary} {} printed {output:?}, not {expected:?}",
                args.join(" ")
            );
            if binary.starts_with("/usr/local/bin/ferry") {
                assert!(
                    output.contains(version),
                    "{name}: {binary} is not version {version}"
                );
            }
        }
    }
}

/// Runs `binary` of the extracted image at `root` with only the image's libraries: in a chroot
/// as the image's user when root, else through the image's own dynamic loader with its library
/// directories and no others (`--inhibit-cache`, so the host's cache is not consulted).
fn run_in_image(root: &Path, as_root: bool, user: &str, binary: &str, args: &[&str]) -> String {
    let root_str = root.to_str().unwrap();
    if as_root {
        let userspec = format!("--userspec={user}");
        let mut all = vec![userspec.as_str(), root_str, binary];
        all.extend_from_slice(args);
        return run("chroot", &all);
    }
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let library_path =
        format!("{root_str}/lib/x86_64-linux-gnu:{root_str}/usr/lib/x86_64-linux-gnu");
    let target = root.join(&binary[1..]);
    if !loader.exists() {
        // A static binary (etcd is Go): it needs no loader.
        return run(target.to_str().unwrap(), args);
    }
    let mut all = vec![
        "--inhibit-cache",
        "--library-path",
        library_path.as_str(),
        target.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run(loader.to_str().unwrap(), &all)
}
