//! The CRD as users meet it, through the real kubectl against a real kube-apiserver:
//! `kubectl explain` reads the field docs at every level, and `kubectl get` shows the printer
//! columns.

use std::process::Command;
use std::time::Duration;

use ferry_tests::kube::KubeApiServer;

fn kubectl(kube: &KubeApiServer, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let binary = ferry_tests::kubectl_binary();
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: run `make setup`",
        binary.display()
    );
    let out = Command::new(binary)
        .arg(format!(
            "--kubeconfig={}",
            kube.admin_kubeconfig().display()
        ))
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explains_every_field_and_shows_the_columns() -> anyhow::Result<()> {
    let kube = KubeApiServer::start().await?;
    let crd = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/replicationclusters.replication.ferry.dev.yaml"
    ))?;
    kube.apply_yaml(&crd).await?;
    kube.wait_crd_established(
        "replicationclusters.replication.ferry.dev",
        Duration::from_secs(60),
    )
    .await?;
    // The API server publishes the schema to its OpenAPI document shortly after.
    ferry_tests::wait_for(
        "the schema to be published",
        Duration::from_secs(60),
        || async {
            kubectl(&kube, &["explain", "replicationcluster"])
                .ok()
                .filter(|(ok, _)| *ok)
        },
    )
    .await?;
    for (field, wants) in [
        (
            "replicationcluster",
            &[
                "safe switchover",
                "spec\t<Object> -required-",
                "status\t<Object>",
            ][..],
        ),
        (
            "replicationcluster.spec.role",
            &["<string>", "performs a switchover"][..],
        ),
        (
            "replicationcluster.spec.primary",
            &["<Object>", "secondaries\t<[]Object>"][..],
        ),
        (
            "replicationcluster.spec.primary.secondaries",
            &["tokenSecretName", "expired unused", "never overwritten"][..],
        ),
        (
            "replicationcluster.spec.cluster.insecureHttp",
            &["<boolean>", "DANGEROUS", "clear text"][..],
        ),
        (
            "replicationcluster.spec.secondary.tokenSecretRef",
            &["<Object>", "as soon as it appears"][..],
        ),
        (
            "replicationcluster.spec.promotion.force",
            &["<boolean>", "Promoting"][..],
        ),
        (
            "replicationcluster.status.conditions",
            &["<[]Object>", "InvalidSpec"][..],
        ),
    ] {
        let (ok, text) = kubectl(&kube, &["explain", field])?;
        assert!(ok, "{field}: {text}");
        for want in wants {
            assert!(text.contains(want), "{field} lacks {want:?}:\n{text}");
        }
    }
    kube.apply_yaml(
        r#"{"apiVersion": "replication.ferry.dev/v1alpha1", "kind": "ReplicationCluster",
            "metadata": {"name": "west", "namespace": "default"},
            "spec": {"role": "primary",
                     "cluster": {"address": "http://127.0.0.1:8200", "tokenSecretRef": {"name": "admin"}}}}"#,
    )
    .await?;
    let (ok, text) = kubectl(&kube, &["get", "replicationclusters"])?;
    assert!(ok, "{text}");
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "STATE", "PRIMARY", "LAG", "AGE"],
        "{text}"
    );
    assert!(text.contains("west") && text.contains("primary"), "{text}");
    let (ok, text) = kubectl(
        &kube,
        &["get", "rcluster", "west", "-o", "jsonpath={.spec.mode}"],
    )?;
    assert!(ok && text == "performance", "the default mode: {text}");
    Ok(())
}
