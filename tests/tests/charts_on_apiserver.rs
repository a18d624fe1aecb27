//! The rendered charts are objects a real Kubernetes 1.20 API server accepts: `kubectl apply
//! --dry-run=server` of `charts/ferry-operator` and of `charts/ferry` with each example values
//! file runs the server's validation and admission (the ReplicationCluster against the CRD's
//! schema, applied first) without storing anything.
//!
//! The charts pick API versions by `.Capabilities`: rendered by `helm template --validate`
//! against this server (its own API list) or with `--kube-version 1.20.2`, they use what 1.20
//! serves (policy/v1beta1 PodDisruptionBudgets). Rendered for a current Kubernetes, they use
//! policy/v1, which this server refuses: the check is what makes the difference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::kube::KubeApiServer;

const NAMESPACE: &str = "ferry-system";
const CRD: &str = "replicationclusters.replication.ferry.dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make setup`",
        path.display()
    );
    path
}

/// Runs a command in the repository; returns whether it succeeded and its stdout and stderr.
fn run(binary: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(binary)
        .current_dir(repo())
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `helm template` with `args`; fails the test with helm's message otherwise.
fn render(helm: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["template", "--namespace", NAMESPACE];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run(helm, &all)?;
    anyhow::ensure!(ok, "helm {} failed:\n{stderr}", all.join(" "));
    Ok(stdout)
}

/// `kubectl apply --dry-run=server` of `yaml`; returns whether the server accepted every object,
/// and what kubectl said.
fn dry_run(
    kubectl: &Path,
    kube: &KubeApiServer,
    dir: &Path,
    name: &str,
    yaml: &str,
) -> anyhow::Result<(bool, String)> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml)?;
    let kubeconfig = format!("--kubeconfig={}", kube.admin_kubeconfig().display());
    let file_arg = format!("--filename={}", file.display());
    let (ok, stdout, stderr) = run(
        kubectl,
        &[&kubeconfig, "apply", "--dry-run=server", &file_arg],
    )?;
    Ok((ok, format!("{stdout}{stderr}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_charts_pass_server_side_dry_run_on_kubernetes_1_20() -> anyhow::Result<()> {
    let helm = tool(ferry_tests::helm_binary());
    let kubectl = tool(ferry_tests::kubectl_binary());
    let kube = KubeApiServer::start().await?;
    let dir = tempfile::tempdir()?;
    kube.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    ))
    .await?;
    // The CRD first, as the chart's crds/ folder is installed before its templates.
    let crd = std::fs::read_to_string(
        repo()
            .join("charts/ferry-operator/crds")
            .join(format!("{CRD}.yaml")),
    )?;
    kube.apply_yaml(&crd).await?;
    kube.wait_crd_established(CRD, Duration::from_secs(30))
        .await?;

    let kubeconfig = format!("--kubeconfig={}", kube.admin_kubeconfig().display());
    let mut renders: Vec<(String, String)> = Vec::new();
    renders.push((
        "operator".into(),
        render(
            &helm,
            &[
                "ferry-operator",
                "charts/ferry-operator",
                "--kube-version",
                "1.20.2",
            ],
        )?,
    ));
    for values in ["west", "east"] {
        let file = format!("charts/ferry/examples/{values}.yaml");
        renders.push((
            format!("{values}-kube-version"),
            render(
                &helm,
                &[
                    "ferry",
                    "charts/ferry",
                    "-f",
                    &file,
                    "--kube-version",
                    "1.20.2",
                ],
            )?,
        ));
        // Capabilities from the server itself, as `helm install` gets them.
        renders.push((
            format!("{values}-validate"),
            render(
                &helm,
                &[
                    "ferry",
                    "charts/ferry",
                    "-f",
                    &file,
                    "--validate",
                    &kubeconfig,
                ],
            )?,
        ));
    }
    renders.push((
        "defaults".into(),
        render(
            &helm,
            &["ferry", "charts/ferry", "--kube-version", "1.20.2"],
        )?,
    ));
    for (name, yaml) in &renders {
        assert!(
            !yaml.contains("policy/v1\n"),
            "{name}: rendered policy/v1 for Kubernetes 1.20"
        );
        let (ok, said) = dry_run(&kubectl, &kube, dir.path(), name, yaml)?;
        assert!(
            ok,
            "{name}: kube-apiserver 1.20 refused the rendered chart:\n{said}"
        );
        eprintln!("{name}:\n{said}");
        assert!(
            said.contains("(server dry run)"),
            "{name}: not a server dry run:\n{said}"
        );
    }
    // The ReplicationCluster was checked against the CRD's schema.
    let (_, west) = &renders[1];
    let (_, said) = dry_run(&kubectl, &kube, dir.path(), "west-again", west)?;
    assert!(
        said.contains("replicationcluster.replication.ferry.dev/west created (server dry run)"),
        "{said}"
    );

    // Rendered for a current Kubernetes, the chart uses policy/v1, which 1.20 does not serve.
    let current = render(
        &helm,
        &[
            "ferry",
            "charts/ferry",
            "-f",
            "charts/ferry/examples/west.yaml",
            "--kube-version",
            "1.33.0",
        ],
    )?;
    assert!(current.contains("apiVersion: policy/v1\n"));
    let (ok, said) = dry_run(&kubectl, &kube, dir.path(), "west-current", &current)?;
    assert!(
        !ok && said.contains("policy/v1"),
        "1.20 accepted policy/v1:\n{said}"
    );
    Ok(())
}

/// Runs helm against `kube` in the test namespace: whether it succeeded, and what it said.
fn helm_on(kube: &KubeApiServer, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let kubeconfig = format!("--kubeconfig={}", kube.admin_kubeconfig().display());
    let mut all = vec![kubeconfig.as_str(), "--namespace", NAMESPACE];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run(&tool(ferry_tests::helm_binary()), &all)?;
    Ok((ok, format!("{stdout}{stderr}")))
}

/// `kubectl get` on `kube` in the test namespace: what it printed.
fn kubectl_get(kube: &KubeApiServer, args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = format!("--kubeconfig={}", kube.admin_kubeconfig().display());
    let mut all = vec![kubeconfig.as_str(), "--namespace", NAMESPACE, "get"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run(&tool(ferry_tests::kubectl_binary()), &all)?;
    anyhow::ensure!(ok, "kubectl get {} failed: {stderr}", args.join(" "));
    Ok(stdout)
}

/// The keys the ferry chart generates are generated once: `helm upgrade` (which looks the live
/// Secrets up) keeps their values, and `helm uninstall` leaves them, as it leaves nothing else.
/// Installed for real on the API server (no controllers run there, so no pod starts: only the
/// objects matter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_survive_upgrade_and_uninstall() -> anyhow::Result<()> {
    let kube = KubeApiServer::start().await?;
    let helm_run = |args: &[&str]| -> anyhow::Result<()> {
        let (ok, said) = helm_on(&kube, args)?;
        anyhow::ensure!(ok, "helm {} failed:\n{said}", args.join(" "));
        Ok(())
    };
    let secrets = || {
        kubectl_get(
            &kube,
            &[
                "secrets",
                // The chart's own, not Helm's release records.
                "--selector=app.kubernetes.io/part-of=ferry",
                "--output=jsonpath={range .items[*]}{.metadata.name}={.data}{\"\\n\"}{end}",
            ],
        )
    };
    helm_run(&["install", "ferry", "charts/ferry", "--create-namespace"])?;
    let installed = secrets()?;
    for name in [
        "ferry-root-key=",
        "ferry-key-encryption-key=",
        "ferry-root-token=",
    ] {
        assert!(
            installed.contains(name),
            "no {name} after install:\n{installed}"
        );
    }
    helm_run(&["upgrade", "ferry", "charts/ferry", "--set", "replicas=2"])?;
    assert_eq!(
        secrets()?,
        installed,
        "helm upgrade changed the generated keys"
    );
    helm_run(&["uninstall", "ferry"])?;
    assert_eq!(
        secrets()?,
        installed,
        "helm uninstall removed the kept Secrets"
    );
    // Installed again, the region finds its keys.
    helm_run(&["install", "ferry", "charts/ferry"])?;
    assert_eq!(secrets()?, installed, "a reinstall changed the kept keys");
    Ok(())
}

/// A bundled etcd installed without TLS keeps its plain peer URLs in its data, so an upgrade
/// cannot switch it to TLS: the chart refuses, says how to keep it as it is, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_does_not_switch_a_running_bundled_etcd_to_tls() -> anyhow::Result<()> {
    let kube = KubeApiServer::start().await?;
    let etcd_env = || {
        kubectl_get(
            &kube,
            &[
                "statefulset",
                "ferry-etcd",
                "--output=jsonpath={.spec.template.spec.containers[*].env[*].name}",
            ],
        )
    };
    let plain = ["--set", "etcd.tls.enabled=false"];
    let install = [
        &["install", "ferry", "charts/ferry", "--create-namespace"][..],
        &plain,
    ]
    .concat();
    let (ok, said) = helm_on(&kube, &install)?;
    anyhow::ensure!(ok, "helm install without etcd TLS failed:\n{said}");
    let before = etcd_env()?;
    assert!(
        before.contains("ETCD_NAME") && !before.contains("ETCD_CERT_FILE"),
        "{before}"
    );

    // The chart's defaults (etcd TLS on), as a values file that predates etcd.tls gives; without
    // values, helm would reuse the release's.
    let (ok, said) = helm_on(
        &kube,
        &["upgrade", "ferry", "charts/ferry", "--reset-values"],
    )?;
    assert!(!ok, "the upgrade to etcd TLS went through:\n{said}");
    assert!(
        said.contains("ferry-etcd runs without TLS") && said.contains("etcd.tls.enabled: false"),
        "{said}"
    );
    assert_eq!(etcd_env()?, before, "the refused upgrade changed etcd");

    let upgrade = [&["upgrade", "ferry", "charts/ferry"][..], &plain].concat();
    let (ok, said) = helm_on(&kube, &upgrade)?;
    anyhow::ensure!(ok, "an upgrade keeping etcd without TLS failed:\n{said}");
    Ok(())
}
