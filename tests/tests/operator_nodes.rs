//! The operator's ReplicationCluster status lists every node of the cluster it governs (role,
//! addresses, last heartbeat), whichever node its address reaches: a standby's ferry-vault
//! answers `sys/replication/status` with its active node's, which knows every node. After
//! `kill -9` of the active node the status shows the new active node and the dead one gone.

use std::time::Duration;

use ferry_operator::crd::{
    ClusterRef, PrimarySpec, ReplicationCluster, ReplicationClusterSpec, Role, SecretKeyRef,
};
use ferry_tests::kube::KubeApiServer;
use ferry_tests::operator::{ADMIN_SECRET, NAMESPACE, Operator, prepare_operator_namespace};
use ferry_tests::region_nodes::NodeRegion;
use ferry_tests::wait_for;
use kube::api::{Api, PostParams};

const ROOT_TOKEN: &str = "hvs.operator-nodes-root";
const TTL: &str = "--fence-ttl-seconds=4";

/// `(node id, role)` of each node the status lists, in order.
fn listed(rc: &ReplicationCluster) -> Vec<(String, String)> {
    rc.status
        .as_ref()
        .map(|s| {
            s.nodes
                .iter()
                .map(|n| (n.node_id.clone(), n.role.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_status_lists_every_node_and_follows_a_new_active_node() -> anyhow::Result<()>
{
    let mut west = NodeRegion::start("west", 3, Some(ROOT_TOKEN), &[TTL]).await?;
    // The resource names a standby's ferry-vault (west-3): it still sees the whole cluster.
    let address = west.nodes[2].vault.as_ref().unwrap().api.base().to_owned();
    let kube = KubeApiServer::start().await?;
    let kubeconfig = prepare_operator_namespace(&kube, ROOT_TOKEN, &address).await?;
    let client = kube.client().await?;
    let operator = Operator::start(&kubeconfig, "op-1")?;

    let spec = ReplicationClusterSpec {
        cluster: ClusterRef {
            insecure_http: true,
            address,
            token_secret_ref: SecretKeyRef {
                name: ADMIN_SECRET.into(),
                key: "token".into(),
            },
            ca_bundle: None,
        },
        role: Role::Primary,
        primary: Some(PrimarySpec::default()),
        ..Default::default()
    };
    let clusters: Api<ReplicationCluster> = Api::namespaced(client, NAMESPACE);
    clusters
        .create(
            &PostParams::default(),
            &ReplicationCluster::new("west", spec),
        )
        .await?;
    let wait_listed = |what: &'static str, want: Vec<(&'static str, &'static str)>| {
        let clusters = clusters.clone();
        let operator = &operator;
        async move {
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
            let found = wait_for(what, Duration::from_secs(90), || async {
                let rc = clusters.get_opt("west").await.ok()??;
                (listed(&rc) == want).then_some(rc)
            })
            .await;
            match found {
                Ok(rc) => Ok(rc),
                Err(e) => {
                    let last = clusters.get_opt("west").await.ok().flatten();
                    Err(e.context(format!(
                        "last status {}\n--- operator ---\n{}",
                        serde_json::to_string_pretty(&last.and_then(|r| r.status))
                            .unwrap_or_default(),
                        operator.log()
                    )))
                }
            }
        }
    };
    let rc = wait_listed(
        "the status to list three nodes",
        vec![
            ("west-1", "active"),
            ("west-2", "standby"),
            ("west-3", "standby"),
        ],
    )
    .await?;
    let status = rc.status.unwrap();
    assert_eq!(status.role.as_deref(), Some("primary"));
    let nodes = &status.nodes;
    assert_eq!(
        nodes[0].cluster_address.as_deref(),
        Some(west.nodes[0].cluster_addr().as_str())
    );
    assert!(nodes[0].last_heartbeat.is_none());
    for n in &nodes[1..] {
        assert!(n.last_heartbeat.is_some(), "{n:?}");
        assert!(n.api_address.is_some(), "{n:?}");
    }

    // kill -9 of the active node: the status names the new one, and the dead one leaves.
    west.nodes[0].kill();
    let next = west.active(Duration::from_secs(30)).await?;
    let (active, other) = if next == 1 {
        ("west-2", "west-3")
    } else {
        ("west-3", "west-2")
    };
    wait_listed(
        "the status to list the new active node and the standby left",
        vec![(active, "active"), (other, "standby")],
    )
    .await?;
    Ok(())
}
