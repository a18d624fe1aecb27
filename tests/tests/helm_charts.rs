//! The Helm charts (`charts/ferry-operator`, `charts/ferry`) as the real `helm` sees them, without
//! a cluster: `helm lint` is clean, the example values render for Kubernetes 1.20 and a current
//! version with the API versions each serves, the values schemas refuse bad values naming the
//! key, and what is copied or generated from elsewhere (the CRD, the operator's RBAC, the
//! versions) has not drifted from its source. `charts_on_apiserver.rs` sends the rendered charts
//! to a real kube-apiserver.
//!
//! helm comes from `make setup` (PyPI's kubectl layer package), cached outside the repo;
//! `FERRY_HELM` overrides it.

use std::path::{Path, PathBuf};
use std::process::Command;

const OPERATOR_CHART: &str = "charts/ferry-operator";
const FERRY_CHART: &str = "charts/ferry";
/// The oldest Kubernetes the charts support (the tests' kube-apiserver) and a current one.
const OLD_KUBE: &str = "1.20.2";
const CURRENT_KUBE: &str = "1.33.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs helm in the repository; returns whether it succeeded and its stdout and stderr.
fn helm(args: &[&str]) -> (bool, String, String) {
    let binary = ferry_tests::helm_binary();
    assert!(
        binary.exists(),
        "{} is missing: run `make setup`",
        binary.display()
    );
    let out = Command::new(&binary)
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", binary.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` that must succeed; returns the rendered YAML.
fn render(args: &[&str]) -> String {
    let mut all = vec!["template"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = helm(&all);
    assert!(ok, "helm {} failed:\n{stderr}", all.join(" "));
    stdout
}

/// The documents of a rendered chart as (apiVersion, kind, name) triples.
fn objects(yaml: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for doc in yaml.split("\n---") {
        let field = |prefix: &str| {
            doc.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_default()
        };
        let kind = field("kind: ");
        if kind.is_empty() {
            continue;
        }
        out.push((field("apiVersion: "), kind, field("  name: ")));
    }
    out
}

fn has(objects: &[(String, String, String)], api_version: &str, kind: &str, name: &str) -> bool {
    objects
        .iter()
        .any(|(a, k, n)| a == api_version && k == kind && n == name)
}

#[test]
fn helm_lint_is_clean_for_both_charts_and_the_examples() {
    // --strict turns warnings (deprecated APIs among them) into failures.
    for kube in [OLD_KUBE, CURRENT_KUBE] {
        for args in [
            vec![OPERATOR_CHART],
            vec![FERRY_CHART],
            vec![FERRY_CHART, "-f", "charts/ferry/examples/west.yaml"],
            vec![FERRY_CHART, "-f", "charts/ferry/examples/east.yaml"],
        ] {
            let mut all = vec!["lint", "--strict", "--kube-version", kube];
            all.extend_from_slice(&args);
            let (ok, stdout, stderr) = helm(&all);
            assert!(
                ok && !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
                "helm {} is not clean:\n{stdout}{stderr}",
                all.join(" ")
            );
        }
    }
}

#[test]
fn example_values_render_a_region_for_old_and_current_kubernetes() {
    for (kube, pdb) in [(OLD_KUBE, "policy/v1beta1"), (CURRENT_KUBE, "policy/v1")] {
        for (region, role) in [("west", "primary"), ("east", "secondary")] {
            let values = format!("charts/ferry/examples/{region}.yaml");
            let yaml = render(&[
                "ferry",
                FERRY_CHART,
                "--namespace",
                "ferry-system",
                "--kube-version",
                kube,
                "-f",
                &values,
            ]);
            // Valid YAML, without duplicate keys (which some parsers refuse and others merge).
            let parsed: Result<Vec<serde_json::Value>, _> = serde_saphyr::from_multiple(&yaml);
            if let Err(e) = parsed {
                panic!("{region} on Kubernetes {kube}: the rendered YAML does not parse: {e}");
            }
            let objects = objects(&yaml);
            for (api, kind, name) in [
                ("apps/v1", "StatefulSet", "ferry"),
                ("apps/v1", "StatefulSet", "ferry-etcd"),
                ("v1", "Service", "ferry"),
                ("v1", "Service", "ferry-cluster"),
                ("v1", "Service", "ferry-nodes"),
                ("v1", "Service", "ferry-etcd"),
                (pdb, "PodDisruptionBudget", "ferry"),
                (pdb, "PodDisruptionBudget", "ferry-etcd"),
                ("networking.k8s.io/v1", "NetworkPolicy", "ferry"),
                ("networking.k8s.io/v1", "NetworkPolicy", "ferry-etcd"),
                (
                    "replication.ferry.dev/v1alpha1",
                    "ReplicationCluster",
                    region,
                ),
                ("v1", "Secret", "ferry-root-token"),
            ] {
                assert!(
                    has(&objects, api, kind, name),
                    "{region} on Kubernetes {kube}: no {api} {kind} {name} in {objects:?}"
                );
            }
            assert!(
                yaml.contains(&format!("  role: {role}\n")),
                "{region}: the ReplicationCluster is not {role}"
            );
            // West generates the keys it keeps; east uses west's, copied.
            let generated = has(&objects, "v1", "Secret", "ferry-root-key");
            assert_eq!(generated, region == "west", "{region}: root key Secret");
            assert!(
                yaml.contains("secretName: ferry-root-key"),
                "{region}: the pods do not mount Secret ferry-root-key"
            );
            // Three bundled etcd members in west, each named in the initial cluster, over TLS.
            if region == "west" {
                assert!(yaml.contains(
                    "ferry-etcd-2=https://ferry-etcd-2.ferry-etcd.ferry-system.svc:2380"
                ));
                assert!(yaml.contains("https://ferry-etcd-2.ferry-etcd.ferry-system.svc:2379"));
            }
        }
    }
}

#[test]
fn generated_keys_have_the_formats_ferry_reads() {
    let yaml = render(&[
        "ferry",
        FERRY_CHART,
        "--show-only",
        "templates/secrets.yaml",
    ]);
    let value = |key: &str| -> Vec<u8> {
        let encoded = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in\n{yaml}"));
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("Secret data is base64")
    };
    // ferry-vault: 32 bytes as base64 (or hex).
    let root = String::from_utf8(value("root-key")).unwrap();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&root)
        .expect("the root key is base64");
    assert_eq!(raw.len(), 32, "root key {root:?}");
    // ferry-sidecar: 64 hex digits.
    let kek = String::from_utf8(value("key-encryption-key")).unwrap();
    assert!(
        kek.len() == 64 && kek.bytes().all(|b| b.is_ascii_hexdigit()),
        "key-encryption key {kek:?}"
    );
    let token = String::from_utf8(value("token")).unwrap();
    assert!(
        token.starts_with("hvs.") && token.len() == 44,
        "root token {token:?}"
    );
    // Kept by `helm uninstall`.
    assert_eq!(yaml.matches("helm.sh/resource-policy: keep").count(), 3);
}

#[test]
fn values_schemas_refuse_bad_values_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        // An unknown key, at the top and nested.
        (
            FERRY_CHART,
            "colour=blue",
            "additional properties 'colour' not allowed",
        ),
        (
            FERRY_CHART,
            "etcd.replica=3",
            "additional properties 'replica' not allowed",
        ),
        (
            OPERATOR_CHART,
            "replica=2",
            "additional properties 'replica' not allowed",
        ),
        // A wrong type.
        (FERRY_CHART, "replicas=many", "/replicas"),
        (FERRY_CHART, "tls.enabled=maybe", "/tls/enabled"),
        (OPERATOR_CHART, "replicas=two", "/replicas"),
        // An invalid enum value.
        (
            FERRY_CHART,
            "replication.role=tertiary",
            "/replication/role",
        ),
        (FERRY_CHART, "etcd.replicas=2", "/etcd/replicas"),
        (
            FERRY_CHART,
            "clusterService.type=Ingress",
            "/clusterService/type",
        ),
        (
            FERRY_CHART,
            "clusterService.advertise=elsewhere",
            "/clusterService/advertise",
        ),
        (OPERATOR_CHART, "log.format=xml", "/log/format"),
        // Never :latest.
        (FERRY_CHART, "image.tag=latest", "/image/tag"),
    ];
    for &(chart, set, expected) in cases {
        let (ok, _, stderr) = helm(&["template", "x", chart, "--set", set]);
        assert!(!ok, "{chart} accepted --set {set}");
        assert!(
            stderr.contains(expected),
            "{chart} --set {set}: the error does not say {expected:?}:\n{stderr}"
        );
    }
    // Checks across values fail with what to change.
    let (ok, _, stderr) = helm(&["template", "x", FERRY_CHART, "--set", "tls.enabled=true"]);
    assert!(!ok && stderr.contains("tls.secretName"), "{stderr}");
    let (ok, _, stderr) = helm(&[
        "template",
        "x",
        FERRY_CHART,
        "--set",
        "replication.enabled=true",
    ]);
    assert!(
        !ok && stderr.contains("replication.insecureHttp"),
        "{stderr}"
    );
    let (ok, _, stderr) = helm(&["template", "x", FERRY_CHART, "--set", "etcd.mode=external"]);
    assert!(
        !ok && stderr.contains("etcd.external.endpoints"),
        "{stderr}"
    );
}

#[test]
fn the_operator_chart_carries_the_crd_from_crds() {
    let name = "replicationclusters.replication.ferry.dev.yaml";
    let source = std::fs::read_to_string(repo().join("crds").join(name)).unwrap();
    let copy = std::fs::read_to_string(repo().join(OPERATOR_CHART).join("crds").join(name))
        .unwrap_or_default();
    assert!(
        source == copy,
        "{OPERATOR_CHART}/crds/{name} differs from crds/{name}: copy it again \
         (cp crds/{name} {OPERATOR_CHART}/crds/)"
    );
}

#[test]
fn deploy_operator_rbac_is_rendered_from_the_chart() {
    let script = repo().join("scripts/render-operator-rbac.sh");
    let out = Command::new(&script)
        .arg("--stdout")
        .env("FERRY_HELM", ferry_tests::helm_binary())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(repo().join("deploy/operator-rbac.yaml")).unwrap();
    assert!(
        committed.as_bytes() == out.stdout.as_slice(),
        "deploy/operator-rbac.yaml differs from {OPERATOR_CHART}/templates/rbac.yaml: \
         run scripts/render-operator-rbac.sh"
    );
    // The chart's Deployment runs as the account the Role is bound to, with the Lease it grants.
    let yaml = render(&["ferry-operator", OPERATOR_CHART, "-n", "ferry-system"]);
    assert!(yaml.contains("serviceAccountName: ferry-operator"));
    assert!(yaml.contains("--lease-name=ferry-operator"));
    assert!(yaml.contains("resourceNames: [\"ferry-operator\"]"));
}

#[test]
fn chart_versions_follow_cargo() {
    let version = env!("CARGO_PKG_VERSION");
    for chart in [OPERATOR_CHART, FERRY_CHART] {
        let text = std::fs::read_to_string(repo().join(chart).join("Chart.yaml")).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        assert_eq!(
            field("version:").as_deref(),
            Some(version),
            "{chart} version"
        );
        assert_eq!(
            field("appVersion:").as_deref(),
            Some(version),
            "{chart} appVersion"
        );
    }
    // The images default to that tag.
    let yaml = render(&["ferry", FERRY_CHART]);
    assert!(yaml.contains(&format!("image: \"ferry.dev/ferry:{version}\"")));
    assert!(yaml.contains(&format!("image: \"ferry.dev/etcd:{version}\"")));
    let yaml = render(&["ferry-operator", OPERATOR_CHART]);
    assert!(yaml.contains(&format!("image: \"ferry.dev/ferry-operator:{version}\"")));
}

#[test]
fn a_region_has_three_nodes_each_advertising_its_own_cluster_address_by_default() {
    let yaml = render(&["x", FERRY_CHART]);
    let nodes = yaml
        .split("\n---")
        .find(|d| d.contains("kind: StatefulSet") && d.contains("FERRY_CLUSTER_ADDR"))
        .expect("the nodes' StatefulSet");
    assert!(nodes.contains("\n  replicas: 3\n"), "{nodes}");
    // The pod IP is declared before the address that refers to it (Kubernetes expands only
    // variables defined earlier in the list).
    let pod_ip = nodes.find("- name: POD_IP").expect("POD_IP");
    let addr = nodes
        .find(r#"{name: FERRY_CLUSTER_ADDR, value: "$(POD_IP):8201"}"#)
        .expect("the pod's own cluster address");
    assert!(pod_ip < addr);
    let shared = render(&[
        "x",
        FERRY_CHART,
        "--set",
        "clusterService.advertise=service",
    ]);
    assert!(
        shared.contains(r#"{name: FERRY_CLUSTER_ADDR, value: "x-ferry-cluster.default.svc:8201"}"#),
        "{shared}"
    );
}

#[test]
fn external_etcd_and_the_service_monitor_render() {
    // External etcd with TLS and a client certificate: no bundled etcd, the endpoints and the
    // Secret's files handed to the sidecar, the external etcd's transaction limit.
    let yaml = render(&[
        "x",
        FERRY_CHART,
        "--set",
        "etcd.mode=external",
        "--set",
        "etcd.external.endpoints={https://etcd-0.example:2379,https://etcd-1.example:2379}",
        "--set",
        "etcd.external.tlsSecret=etcd-client",
        "--set",
        "etcd.external.clientCertificate=true",
    ]);
    let rendered = objects(&yaml);
    assert!(
        !rendered.iter().any(|(_, _, name)| name.ends_with("-etcd")),
        "a bundled etcd object rendered: {rendered:?}"
    );
    for wanted in [
        "https://etcd-0.example:2379,https://etcd-1.example:2379",
        "{name: FERRY_ETCD_CA_FILE, value: /var/run/ferry-keys/ca.crt}",
        "{name: FERRY_ETCD_CERT_FILE, value: /var/run/ferry-keys/tls.crt}",
        "{name: FERRY_ETCD_KEY_FILE, value: /var/run/ferry-keys/tls.key}",
        "secretName: etcd-client",
    ] {
        assert!(yaml.contains(wanted), "no {wanted:?} in\n{yaml}");
    }
    let txn_ops = yaml
        .lines()
        .find(|l| l.contains("FERRY_ETCD_MAX_TXN_OPS"))
        .expect("the etcd transaction limit");
    assert!(txn_ops.contains("\"128\""), "{txn_ops}");

    // The operator's ServiceMonitor, when asked for, scrapes the metrics Service.
    let yaml = render(&[
        "x",
        OPERATOR_CHART,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.interval=15s",
    ]);
    let rendered = objects(&yaml);
    assert!(
        rendered
            .iter()
            .any(|(api, kind, _)| api == "monitoring.coreos.com/v1" && kind == "ServiceMonitor"),
        "{rendered:?}"
    );
    assert!(yaml.contains("interval: 15s"), "{yaml}");
    let without = render(&["x", OPERATOR_CHART]);
    assert!(!without.contains("kind: ServiceMonitor"));
}

#[test]
fn the_bundled_etcd_speaks_tls_by_default_and_plain_http_only_when_asked() {
    let yaml = render(&["x", FERRY_CHART]);
    assert!(
        has(&objects(&yaml), "v1", "Secret", "x-ferry-etcd-tls"),
        "no generated etcd TLS Secret"
    );
    for wanted in [
        r#"{name: ETCD_LISTEN_CLIENT_URLS, value: "https://0.0.0.0:2379"}"#,
        r#"{name: ETCD_CLIENT_CERT_AUTH, value: "true"}"#,
        r#"{name: ETCD_PEER_CLIENT_CERT_AUTH, value: "true"}"#,
        r#"{name: FERRY_ETCD_ENDPOINTS, value: "https://x-ferry-etcd-0.x-ferry-etcd.default.svc:2379"}"#,
        "{name: FERRY_ETCD_CERT_FILE, value: /var/run/ferry-keys/tls.crt}",
        "httpGet: {path: /health, port: health}",
    ] {
        assert!(yaml.contains(wanted), "no {wanted:?} in\n{yaml}");
    }
    // Three members find each other over TLS.
    let three = render(&["x", FERRY_CHART, "--set", "etcd.replicas=3"]);
    assert!(
        three.contains("x-ferry-etcd-2=https://x-ferry-etcd-2.x-ferry-etcd.default.svc:2380"),
        "{three}"
    );
    // A Secret of one's own replaces the generated one.
    let own = render(&["x", FERRY_CHART, "--set", "etcd.tls.secret=my-etcd-tls"]);
    assert!(!has(&objects(&own), "v1", "Secret", "x-ferry-etcd-tls"));
    assert_eq!(own.matches("secretName: my-etcd-tls").count(), 2, "{own}");

    let plain = render(&["x", FERRY_CHART, "--set", "etcd.tls.enabled=false"]);
    assert!(!has(&objects(&plain), "v1", "Secret", "x-ferry-etcd-tls"));
    assert!(!plain.contains("FERRY_ETCD_CA_FILE"), "{plain}");
    assert!(
        plain.contains(r#"{name: ETCD_LISTEN_CLIENT_URLS, value: "http://0.0.0.0:2379"}"#),
        "{plain}"
    );
}

#[test]
fn ferry_vault_reads_its_tls_pair_from_the_secret_volume_so_that_renewals_are_served() {
    let yaml = render(&[
        "x",
        FERRY_CHART,
        "--set",
        "tls.enabled=true",
        "--set",
        "tls.secretName=vault-tls",
    ]);
    for wanted in [
        "{name: FERRY_TLS_CERT_FILE, value: /var/run/ferry-secrets/tls/tls.crt}",
        "{name: FERRY_TLS_KEY_FILE, value: /var/run/ferry-secrets/tls/tls.key}",
        "secretName: vault-tls",
    ] {
        assert!(yaml.contains(wanted), "no {wanted:?} in\n{yaml}");
    }
    // Not a copy made once at start-up, which a renewal would never reach.
    assert!(
        !yaml.contains("- /var/run/ferry-secrets/tls/tls.key"),
        "an init container copies the TLS key:\n{yaml}"
    );
    let vault_container = yaml
        .split("- name: ferry-vault\n")
        .nth(1)
        .expect("the ferry-vault container");
    assert!(
        vault_container
            .contains("{name: tls, mountPath: /var/run/ferry-secrets/tls, readOnly: true}"),
        "{vault_container}"
    );
}

/// A node still starting is not killed: ferry-vault answers only once its sidecar serves, and
/// the sidecar waits for etcd up to its start-up limit before it recovers. The startup probe
/// holds liveness off for longer than that; liveness then restarts a node that stops answering.
#[test]
fn liveness_waits_for_a_node_that_is_still_starting() {
    let yaml = render(&["x", FERRY_CHART]);
    let vault_container = yaml
        .split("- name: ferry-vault\n")
        .nth(1)
        .expect("the ferry-vault container");
    let probe = |name: &str| {
        let at = vault_container
            .find(&format!("{name}:\n"))
            .unwrap_or_else(|| panic!("no {name} in\n{vault_container}"));
        let body = &vault_container[at..];
        let field = |f: &str| -> u64 {
            body.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{f}: ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} has no {f}"))
        };
        field("periodSeconds") * field("failureThreshold")
    };
    let startup = probe("startupProbe");
    let waited = ferry_sidecar::etcd_connect::STARTUP_WAIT.as_secs();
    assert!(
        startup >= waited + 30,
        "the startup probe gives up after {startup} s; the sidecar alone may wait {waited} s for etcd"
    );
    assert!(
        probe("livenessProbe") <= 120,
        "liveness is slow to notice a hung node"
    );
}

/// The certificates the chart makes for its bundled etcd work with a real etcd and the real
/// sidecar: the members' certificate serves (it names 127.0.0.1 as well as the members' names),
/// and etcd, requiring client certificates, admits the sidecar's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_etcd_certificates_serve_etcd_and_admit_the_sidecar() -> anyhow::Result<()> {
    use anyhow::Context;
    use base64::Engine;
    use ferry_proto::storage::{GetRequest, PutRequest};
    use ferry_tests::etcd::{EtcdOptions, EtcdServer, EtcdTls};
    use ferry_tests::pki::CertFiles;
    use ferry_tests::sidecar::{Sidecar, SidecarOptions};
    use std::os::unix::fs::OpenOptionsExt;

    let yaml = render(&["x", FERRY_CHART]);
    let secret = yaml
        .split("\n---")
        .find(|d| d.contains("kind: Secret") && d.contains("name: x-ferry-etcd-tls"))
        .context("no etcd TLS Secret rendered")?;
    let dir = tempfile::tempdir()?;
    let file = |key: &str| -> anyhow::Result<PathBuf> {
        let b64 = secret
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .with_context(|| format!("no {key} in the Secret"))?;
        let path = dir.path().join(key);
        let mut out = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(
            &mut out,
            &base64::engine::general_purpose::STANDARD.decode(b64)?,
        )?;
        Ok(path)
    };
    let ca = file("ca.crt")?;
    let client = CertFiles {
        cert: file("client.crt")?,
        key: file("client.key")?,
    };
    let etcd = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls {
            ca: ca.clone(),
            server: CertFiles {
                cert: file("server.crt")?,
                key: file("server.key")?,
            },
            client: client.clone(),
        }),
        ..EtcdOptions::default()
    })?;
    let options = SidecarOptions::new("chart-tls", "n1")
        .arg(format!("--etcd-ca-file={}", ca.display()))
        .arg(format!("--etcd-cert-file={}", client.cert.display()))
        .arg(format!("--etcd-key-file={}", client.key.display()));
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    sidecar
        .storage()
        .put(PutRequest {
            key: "logical/over-tls".into(),
            value: b"1".to_vec(),
        })
        .await?;
    let got = sidecar
        .storage()
        .get(GetRequest {
            key: "logical/over-tls".into(),
        })
        .await?
        .into_inner();
    assert!(got.found && got.value == b"1", "{got:?}");
    Ok(())
}
