//! Ferry as users run it: the charts installed with the real `helm` on two real single-node
//! Kubernetes regions joined by a WAN link, from the images `make images` built, driven only
//! through Helm values, Secrets copied as GitOps would, and Services.
//!
//! One test walks the life of a two-region installation, step by step (issue 17):
//! 1. `helm install` of ferry-operator and ferry in west and east, with no container restarted;
//! 2. west the primary and east its secondary through the ReplicationClusters the chart renders,
//!    with the keys and the activation Secret copied from west to east;
//! 3. hvac through the Services: west's writes read on east, east's writes forwarded, tokens
//!    local;
//! 4. `kubectl delete pod` of west's active node (three per region, the chart's default) under
//!    a write load: a standby takes over, the pod comes back, no acknowledged write is lost,
//!    east streams from the new active node by itself;
//! 5. a switchover by `helm upgrade` with the roles flipped in values (as a Git commit would):
//!    no acknowledged write lost, its RTO measured;
//! 6. `helm upgrade` to a new image tag rolls the pods with no acknowledged write lost;
//! 7. `helm uninstall` leaves only what the README says it keeps.
//!
//! The timings (time to a ready two-region install, the switchover's RTO) are printed; the
//! `kube` benchmark (`make bench`) measures them over several runs. The steps shared with it
//! are in [`ferry_tests::charts`].

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Context;

use ferry_tests::charts::{
    ChartRegion, LONG, NAMESPACE, Role, TAG, check_everywhere, install_pair, switch_over,
    wait_acked,
};
use ferry_tests::kube_node::KubeRegion;
use ferry_tests::operator::{Writer, is_true, state};
use ferry_tests::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

/// Nodes (pods) per region: the chart's default.
const REPLICAS: usize = 3;

/// The tag step 6 rolls to: the same image tagged anew in each region's containerd, so only
/// the tag changes.
const NEW_TAG: &str = concat!(env!("CARGO_PKG_VERSION"), "-rolled");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_installed_with_helm_replicate_fail_over_and_uninstall_cleanly()
-> anyhow::Result<()> {
    let started = Instant::now();
    let (mut west, mut east, _wan) = ChartRegion::start_pair("west", "east").await?;
    eprintln!("regions ready in {:.1} s", started.elapsed().as_secs_f64());

    // 1 and 2: install, west first; its keys and east's activation Secret copied to east.
    let install_seconds = install_pair(&mut west, &mut east).await?;
    eprintln!("helm install to a replicating two-region install: {install_seconds:.1} s");
    // Every pod came up once: a container that exits while a neighbour starts (the sidecar
    // before the bundled etcd) is restarted by kubelet after ever longer pauses.
    for region in [&west, &east] {
        let restarted = region.restarted().await?;
        anyhow::ensure!(
            restarted.is_empty(),
            "containers restarted during {}'s install: {restarted:?}\n{}",
            region.name(),
            region.logs().await
        );
    }

    // 3: hvac through both Services.
    ferry_tests::hvac::run_script(
        "replication_hvac.py",
        &[
            ("VAULT_ADDR", east.api_addr()),
            ("VAULT_TOKEN", east.root_token.clone()),
            ("VAULT_PRIMARY_ADDR", west.api_addr()),
            ("VAULT_PRIMARY_TOKEN", west.root_token.clone()),
        ],
        String::new,
    )
    .await?;
    eprintln!("hvac checks passed through both Services");

    // 4: the pod of west's active node deleted under a write load: a standby takes over, the
    // pod comes back as a standby, and east streams from the new active node by itself.
    let active = west.wait_nodes(REPLICAS, None).await?;
    let writer = Writer::start(west.api(), east.api());
    wait_acked(&writer, 20).await?;
    let deleted = Instant::now();
    west.region
        .kubectl(&["delete", "pod", "-n", NAMESPACE, &active, "--wait=false"])
        .await?;
    let before = writer.acked().await.len();
    wait_acked(&writer, before + 20).await?;
    let writing = deleted.elapsed().as_secs_f64();
    west.rollout("ferry").await?;
    let new_active = west.wait_nodes(REPLICAS, Some(&active)).await?;
    eprintln!(
        "west's active pod {active} deleted: {new_active} active and 20 more writes \
         acknowledged after {writing:.1} s, all {REPLICAS} nodes back after {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    let (acked, _) = writer.stop().await;
    check_everywhere(&acked, &[&west, &east]).await?;
    east.wait_cluster("east streaming again", |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;

    // 5: switchover by a commit: both regions' values with the roles flipped, applied in both
    // regions at once. The RTO runs from then to the first write east commits as the primary.
    let switched = switch_over(&west, &east, TAG).await?;
    eprintln!(
        "switchover by helm upgrade: east committed a write as the primary {:.2} s after the \
         commit; longest time without an acknowledged write {:.2} s; {} writes, none lost",
        switched.rto,
        switched.gap,
        switched.acked.len()
    );

    // 6: a new image tag rolls both regions' pods.
    for region in [&west, &east] {
        tag_image(&region.region, "ferry.dev/ferry", TAG, NEW_TAG).await?;
    }
    let writer = Writer::start(west.api(), east.api());
    wait_acked(&writer, 20).await?;
    east.helm_ferry(&east.write_values(Role::Primary, &west, NEW_TAG)?)
        .await?;
    west.helm_ferry(&west.write_values(Role::Follower, &east, NEW_TAG)?)
        .await?;
    for region in [&east, &west] {
        region.rollout("ferry").await?;
        let image = pod_image(region, "ferry-0").await?;
        anyhow::ensure!(
            image.ends_with(&format!(":{NEW_TAG}")),
            "ferry-0 in {} runs {image} after the upgrade",
            region.name()
        );
    }
    let before = writer.acked().await.len();
    wait_acked(&writer, before + 20).await?;
    let (acked, _) = writer.stop().await;
    check_everywhere(&acked, &[&east, &west]).await?;
    eprintln!("rolled to {NEW_TAG}: {} writes, none lost", acked.len());

    // 7: uninstall leaves only what the README says: the key Secrets and etcd's claims. The
    // operator goes last, once it has let go of its ReplicationCluster (its finalizer).
    for region in [&west, &east] {
        region
            .region
            .helm(&["uninstall", "ferry", "-n", NAMESPACE])
            .await?;
    }
    for region in [&west, &east] {
        let clusters = region.clusters().await?;
        wait_for(
            &format!("{}'s ReplicationCluster to be gone", region.name()),
            LONG,
            || async {
                clusters
                    .get_opt(region.name())
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await?;
        region
            .region
            .helm(&["uninstall", "ferry-operator", "-n", NAMESPACE])
            .await?;
    }
    for region in [&west, &east] {
        check_left_behind(region).await?;
    }

    eprintln!("test done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Tags `image:tag` anew as `image:new_tag` in the region's containerd.
async fn tag_image(
    region: &KubeRegion,
    image: &str,
    tag: &str,
    new_tag: &str,
) -> anyhow::Result<()> {
    region
        .containerd_images(&[
            "tag",
            &format!("{image}:{tag}"),
            &format!("{image}:{new_tag}"),
        ])
        .await
        .map(drop)
}

async fn pod_image(region: &ChartRegion, pod: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(region.region.client().await?, NAMESPACE);
    let spec = pods.get(pod).await?.spec.context("pod without spec")?;
    Ok(spec
        .containers
        .first()
        .and_then(|c| c.image.clone())
        .unwrap_or_default())
}

/// After `helm uninstall` of both charts: no Ferry pod, Service, StatefulSet, ReplicationCluster
/// or operator object is left; the key Secrets and etcd's claims are.
async fn check_left_behind(region: &ChartRegion) -> anyhow::Result<()> {
    let kinds = "pods,services,statefulsets,deployments,replicasets,configmaps,secrets,\
                 serviceaccounts,roles,rolebindings,persistentvolumeclaims,replicationclusters,\
                 poddisruptionbudgets,networkpolicies,leases";
    let listed = wait_for(
        &format!("{}'s pods to be gone", region.name()),
        LONG,
        || async {
            let out = region
                .region
                .kubectl(&["get", kinds, "-n", NAMESPACE, "-o", "name"])
                .await
                .ok()?;
            (!out.lines().any(|l| l.starts_with("pod/"))).then_some(out)
        },
    )
    .await?;
    let left: BTreeSet<&str> = listed
        .lines()
        .filter(|l| {
            // What Kubernetes itself puts in every namespace.
            !l.starts_with("serviceaccount/default")
                && !l.starts_with("secret/default-token-")
                && *l != "configmap/kube-root-ca.crt"
        })
        .collect();
    let mut expected: BTreeSet<&str> = [
        "secret/ferry-root-token",
        "persistentvolumeclaim/data-ferry-etcd-0",
        // The bundled etcd's certificates, kept with its data.
        "secret/ferry-etcd-tls",
    ]
    .into_iter()
    .collect();
    if region.name() == "west" {
        expected.extend(["secret/ferry-root-key", "secret/ferry-key-encryption-key"]);
    } else {
        // Copies made by hand (GitOps): Helm never owned them.
        expected.extend([
            "secret/ferry-root-key",
            "secret/ferry-key-encryption-key",
            "secret/east-activation",
        ]);
    }
    anyhow::ensure!(
        left == expected,
        "after helm uninstall, {} holds {left:?}; expected {expected:?}",
        region.name()
    );
    Ok(())
}
