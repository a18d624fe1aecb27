//! How a secondary learns where every node of its primary is (the seed's "Addressing"):
//! performance standbys heartbeat their active node, which gives secondaries its own address and
//! theirs (kept 15 s); the secondary keeps them as `known_primary_cluster_addrs`, stores them
//! under `core/primary-addrs/perf` and logs "replication: successful heartbeat"; a standby
//! answers `RemoteResolve` and refuses every other replication call with the standby refusal;
//! a dead standby leaves the addresses within 15 s; the status lists every node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_proto::replication::{HeartbeatRequest, RemoteResolveRequest, StreamWalsRequest};
use ferry_proto::storage::GetRequest;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::member::TestMember;
use ferry_tests::region_nodes::NodeRegion;
use ferry_tests::wait_for;
use serde_json::{Value, json};
use tonic::Code;

fn addrs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_learns_every_primary_node_and_forgets_a_dead_standby_within_15s()
-> anyhow::Result<()> {
    let mut west = NodeRegion::start("west", 3, None, &[]).await?;
    let east = NodeRegion::start("east", 3, None, &[]).await?;
    assert_eq!(west.active(Duration::from_secs(5)).await?, 0);
    west.enable_primary().await?;
    east.follow(&west, "east").await?;
    east.wait_caught_up(&west).await?;
    let every: Vec<String> = west.nodes.iter().map(|n| n.cluster_addr()).collect();

    // The primary's heartbeat answer carries its active node first, then both standbys.
    let status = east
        .wait_status("the secondary to know all three primary nodes", |s| {
            let known = addrs(&s["known_primary_cluster_addrs"]);
            known.first() == Some(&every[0])
                && known.iter().collect::<BTreeSet<_>>() == every.iter().collect()
        })
        .await?;
    println!(
        "known_primary_cluster_addrs: {}",
        status["known_primary_cluster_addrs"]
    );

    // Stored under core/primary-addrs/perf (local) on the secondary, and logged.
    let east_active = &east.nodes[east.active(Duration::from_secs(5)).await?];
    let stored = wait_for("the addresses stored", Duration::from_secs(10), || async {
        let r = east_active
            .sidecar
            .storage()
            .get(GetRequest {
                key: "core/primary-addrs/perf".into(),
            })
            .await
            .ok()?
            .into_inner();
        let stored: Vec<String> = serde_json::from_slice(&r.value).ok()?;
        (stored.len() == 3).then_some(stored)
    })
    .await?;
    assert_eq!(
        stored.iter().collect::<BTreeSet<_>>(),
        every.iter().collect()
    );
    let log = east_active.sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("replication: successful heartbeat")
                && every.iter().all(|a| l.contains(a.as_str()))),
        "no successful heartbeat logged with all three addresses:\n{}",
        east_active.sidecar.log_tail(30)
    );

    // The primary's status lists its three nodes with their roles and the standbys' heartbeats.
    let primary = west
        .wait_status("the primary to list three nodes", |s| {
            s["nodes"].as_array().is_some_and(|n| n.len() == 3)
        })
        .await?;
    let nodes = primary["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["node_id"], "west-1");
    assert_eq!(nodes[0]["role"], "active");
    assert_eq!(nodes[0]["cluster_address"], every[0].as_str());
    for (node, expected) in nodes[1..].iter().zip(["west-2", "west-3"]) {
        assert_eq!(node["node_id"], expected);
        assert_eq!(node["role"], "standby");
        assert_eq!(node["connection_status"], "connected");
        assert!(node["last_heartbeat"].is_string(), "{node}");
        assert!(
            node["api_address"]
                .as_str()
                .is_some_and(|a| a.starts_with("http://127.0.0.1:")),
            "{node}"
        );
    }
    // The secondary's too (its standbys heartbeat its active node the same way).
    east.wait_status("the secondary to list three nodes", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await?;
    // A standby's own API tells its role, the mode it reads in etcd and its heartbeat.
    let standby = west.nodes[1]
        .api()
        .get("/v1/sys/replication/performance/status")
        .await?
        .ok()?;
    assert_eq!(standby.body["data"]["node_role"], "standby");
    assert_eq!(standby.body["data"]["mode"], "primary");
    assert_eq!(standby.body["data"]["active_node"]["node_id"], "west-1");

    // A member of the set asks a standby where the active node is: the standby answers.
    let token = west
        .call("primary/secondary-token", json!({ "id": "probe" }))
        .await?
        .ok()?;
    let member = TestMember::activate(token.body["wrap_info"]["token"].as_str().unwrap()).await?;
    let resolved = member
        .client(&every[1])?
        .remote_resolve(RemoteResolveRequest {
            secondary_id: member.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(resolved.address, every[0], "RemoteResolve on a standby");
    // Every other call is refused by the standby, with the typed refusal.
    let refused = member
        .client(&every[2])?
        .heartbeat(HeartbeatRequest {
            secondary_id: member.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a standby answered a heartbeat");
    assert!(ferry_proto::is_standby_refusal(&refused), "{refused:?}");
    let refused = member
        .client(&every[1])?
        .stream_wals(StreamWalsRequest {
            secondary_id: member.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a standby streamed");
    assert!(ferry_proto::is_standby_refusal(&refused), "{refused:?}");
    // The active node answers the heartbeat (no standby refusal there).
    member
        .client(&every[0])?
        .heartbeat(HeartbeatRequest {
            secondary_id: member.id.clone(),
            ..Default::default()
        })
        .await?;
    // Without a member's certificate a standby tells nothing.
    let anonymous = TlsMaterial {
        identity: None,
        ..member.tls.clone()
    };
    let err = client(&every[1], &anonymous)?
        .remote_resolve(RemoteResolveRequest {
            secondary_id: member.id.clone(),
        })
        .await
        .expect_err("a standby resolved for a caller without a certificate");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // kill -9 of a standby: it leaves the primary's nodes and the secondary's addresses when
    // its last heartbeat is 15 s old, not before.
    let dead = every[2].clone();
    west.nodes[2].kill();
    let killed = Instant::now();
    west.wait_status("the dead standby to leave the primary's nodes", |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["node_id"] != "west-3"))
    })
    .await?;
    let left_primary = killed.elapsed();
    east.wait_status("the dead standby to leave the known addresses", |s| {
        !addrs(&s["known_primary_cluster_addrs"]).contains(&dead)
    })
    .await?;
    let left_secondary = killed.elapsed();
    println!(
        "dead standby gone from the primary's nodes after {left_primary:?}, from the secondary's addresses after {left_secondary:?}"
    );
    // Its last heartbeat came at most one interval (0.5 s) before the kill.
    assert!(
        left_primary >= Duration::from_secs(14),
        "forgotten after only {left_primary:?}: before the 15 s expiry"
    );
    assert!(
        left_primary <= Duration::from_millis(15_500),
        "still listed {left_primary:?} after the kill"
    );
    assert!(
        left_secondary <= Duration::from_millis(16_500),
        "the secondary still had it {left_secondary:?} after the kill"
    );
    Ok(())
}
