//! Several nodes per cluster on one etcd: exactly one active node (the write fence's holder),
//! performance standbys that serve reads and forward writes to it, Vault's `sys/health`,
//! `sys/leader` and `sys/ha-status` per role, forwarding between nodes that serve TLS, failover
//! after `kill -9` of the active node, and a frozen former active node that cannot commit when it
//! wakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::storage::{GetRequest, PutRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::hvac::run_script;
use ferry_tests::nodes::{ROOT_TOKEN, start_node_with, start_nodes, wait_single_active};
use ferry_tests::pki::TestPki;
use ferry_tests::wait_for;
use serde_json::json;
use tokio::sync::Mutex;
use tonic::Code;

/// A short fence lease: failover takes about one lease (the target is 10 s from `kill -9` to
/// the first accepted write).
const TTL: &str = "--fence-ttl-seconds=4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_node_standbys_serve_reads_and_forward_writes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let nodes = start_nodes(&etcd, 3, &[]).await?;
    let [n1, n2, n3] = &nodes[..] else {
        unreachable!()
    };
    assert_eq!(
        wait_single_active(&[n1, n2, n3], Duration::from_secs(10)).await?,
        0
    );
    assert_eq!(n2.role().await?, "standby");
    assert_eq!(n3.role().await?, "standby");
    let active_addr = n1.vault.api.base().to_owned();

    // sys/health, Vault's codes per role and the query parameters that change them.
    let health = n1.vault.api.get("/v1/sys/health").await?;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["standby"], false);
    assert_eq!(health.body["performance_standby"], false);
    let health = n2.vault.api.get("/v1/sys/health").await?;
    assert_eq!(health.status, 473, "{:?}", health.body);
    assert_eq!(health.body["standby"], true);
    assert_eq!(health.body["performance_standby"], true);
    assert_eq!(
        n2.vault
            .api
            .get("/v1/sys/health?perfstandbyok=true")
            .await?
            .status,
        200
    );
    assert_eq!(
        n2.vault
            .api
            .get("/v1/sys/health?performancestandbycode=299")
            .await?
            .status,
        299
    );
    // standbyok is for plain standbys, not performance standbys (as in Vault).
    assert_eq!(
        n2.vault
            .api
            .get("/v1/sys/health?standbyok=true")
            .await?
            .status,
        473
    );
    assert_eq!(
        n1.vault
            .api
            .get("/v1/sys/health?activecode=204")
            .await?
            .status,
        204
    );

    // sys/leader, unauthenticated.
    let leader = n3.vault.api.get("/v1/sys/leader").await?.ok()?;
    assert_eq!(leader.body["ha_enabled"], true);
    assert_eq!(leader.body["is_self"], false);
    assert_eq!(leader.body["performance_standby"], true);
    assert_eq!(leader.body["leader_address"], active_addr.as_str());
    assert!(
        leader.body["leader_cluster_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("https://127.0.0.1:")),
        "{:?}",
        leader.body
    );
    let leader = n1.vault.api.get("/v1/sys/leader").await?.ok()?;
    assert_eq!(leader.body["is_self"], true);
    assert_eq!(leader.body["performance_standby"], false);
    assert_eq!(leader.body["leader_address"], active_addr.as_str());

    // sys/ha-status needs a token; every node lists every node, the active one first (each
    // node's presence record is written before it serves anything).
    assert_eq!(n2.vault.api.get("/v1/sys/ha-status").await?.status, 403);
    for asked in [n1, n2, n3] {
        let ha = asked.root().get("/v1/sys/ha-status").await?.ok()?;
        let listed = ha.body["data"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<_> = listed.iter().map(|n| n["hostname"].clone()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3"], "{:?}", ha.body);
        assert_eq!(listed[0]["active_node"], true);
        assert_eq!(listed[0]["last_echo"], serde_json::Value::Null);
        assert_eq!(listed[0]["api_address"], active_addr.as_str());
        for standby in &listed[1..] {
            assert_eq!(standby["active_node"], false);
            assert!(standby["last_echo"].is_string(), "{standby:?}");
        }
    }

    // A write on the active node is read on a standby.
    n1.root()
        .post("/v1/secret/data/app", json!({ "data": { "v": "one" } }))
        .await?
        .ok()?;
    let read = n2.root().get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], "one");

    // A write through a standby is forwarded, transparently, and then read on that standby.
    let written = n3
        .root()
        .post("/v1/secret/data/app", json!({ "data": { "v": "two" } }))
        .await?
        .ok()?;
    assert_eq!(written.body["data"]["version"], 2, "{:?}", written.body);
    assert!(written.header("x-vault-index").is_some());
    let read = n3.root().get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], "two", "read-your-write");
    assert_eq!(read.body["data"]["metadata"]["version"], 2);
    // The standby's own storage never wrote: the active node did.
    assert_eq!(n3.sidecar.status().await?.last_wal, 0);
    assert!(n1.sidecar.status().await?.last_wal > 0);

    // The client's own token travels: a token made through a standby works everywhere, and a
    // bad token is refused by the active node as it would be anywhere.
    let created = n2
        .root()
        .post("/v1/auth/token/create", json!({ "policies": ["default"] }))
        .await?
        .ok()?;
    let token = created.body["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let lookup = n3
        .vault
        .api
        .with_token(&token)
        .get("/v1/auth/token/lookup-self")
        .await?
        .ok()?;
    assert_eq!(lookup.body["data"]["policies"], json!(["default"]));
    let refused = n2
        .vault
        .api
        .with_token(&token)
        .post("/v1/secret/data/app", json!({ "data": { "v": "nope" } }))
        .await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);

    // hvac on a standby: health, leader status, and a forwarded write.
    let env = [
        ("VAULT_ADDR", n2.vault.api.base().to_owned()),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
        ("VAULT_ACTIVE_ADDR", active_addr.clone()),
    ];
    run_script("ha_hvac.py", &env, || {
        format!("{}\n--- active ---\n{}", n2.vault.log(), n1.vault.log())
    })
    .await?;

    // A node whose sidecar does not answer is neither active nor a performance standby: Vault's
    // plain standby, 429 unless standbyok or standbycode say otherwise.
    n3.sidecar.signal("KILL")?;
    let health = wait_for(
        "a node without its sidecar to answer 429",
        Duration::from_secs(10),
        || async {
            let h = n3.vault.api.get("/v1/sys/health").await.ok()?;
            (h.status == 429).then_some(h)
        },
    )
    .await?;
    assert_eq!(health.body["standby"], true, "{:?}", health.body);
    assert_eq!(health.body["performance_standby"], false);
    for (query, status) in [
        ("standbyok=true", 200),
        ("standbycode=299", 299),
        ("perfstandbyok=true", 429),
    ] {
        let h = n3.vault.api.get(&format!("/v1/sys/health?{query}")).await?;
        assert_eq!(h.status, status, "{query}: {:?}", h.body);
    }
    Ok(())
}

/// Nodes that serve TLS (as the chart's examples do) forward over HTTPS: a standby trusts the
/// active node because it serves the same certificate, and one serving another certificate is
/// not trusted, whoever signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_forward_writes_over_tls_to_a_node_with_the_same_certificate() -> anyhow::Result<()>
{
    let pki = TestPki::new("nodes")?;
    let shared = pki.server("node")?;
    let other = pki.server("other")?;
    let etcd = EtcdServer::start()?;
    let n1 = start_node_with(&etcd, "node-1", &[], Some((shared.clone(), &pki.ca))).await?;
    let n2 = start_node_with(&etcd, "node-2", &[], Some((shared, &pki.ca))).await?;
    let n3 = start_node_with(&etcd, "node-3", &[], Some((other, &pki.ca))).await?;
    assert_eq!(
        wait_single_active(&[&n1, &n2, &n3], Duration::from_secs(10)).await?,
        0
    );
    assert!(n1.vault.api.base().starts_with("https://"));

    let written = n2
        .root()
        .post(
            "/v1/secret/data/app",
            json!({ "data": { "v": "over tls" } }),
        )
        .await?
        .ok()?;
    assert_eq!(written.body["data"]["version"], 1, "{:?}", written.body);
    let read = n2.root().get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], "over tls");
    assert_eq!(
        n2.sidecar.status().await?.last_wal,
        0,
        "the active node wrote"
    );

    // Same CA, other certificate: refused before anything is sent, saying why.
    let refused = n3
        .root()
        .post("/v1/secret/data/app", json!({ "data": { "v": "never" } }))
        .await?;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    let text = refused.body.to_string();
    assert!(
        text.contains("certificate other than this node's"),
        "{text}"
    );
    let read = n1.root().get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], "over tls");
    assert_eq!(read.body["data"]["metadata"]["version"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_10s_of_kill_9_and_no_acknowledged_write_is_lost()
-> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut nodes = start_nodes(&etcd, 3, &[TTL]).await?;
    assert_eq!(
        wait_single_active(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await?,
        0
    );

    // A small write load through the two standbys (forwarded to the active node): each
    // acknowledged write with the moment it was sent.
    let clients = [nodes[1].root(), nodes[2].root()];
    let acknowledged = Arc::new(Mutex::new(Vec::<(usize, Instant, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, client) in clients.into_iter().enumerate() {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let answer = client
                    .post(
                        &format!("/v1/secret/data/load-{i}"),
                        json!({ "data": { "i": i } }),
                    )
                    .await;
                if answer.is_ok_and(|a| a.status == 200) {
                    acknowledged.lock().await.push((i, sent, Instant::now()));
                }
                i += 2;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acknowledged.lock().await.len();
    assert!(before > 0, "no write was acknowledged before the kill");

    nodes[0].kill();
    let killed = Instant::now();
    let survivors = [&nodes[1], &nodes[2]];
    let new_active = wait_single_active(&survivors, Duration::from_secs(30)).await?;
    // The first write sent after the kill and acknowledged: from the kill to its answer.
    let failover = ferry_tests::wait_for(
        "a write accepted after the kill",
        Duration::from_secs(30),
        || {
            let acknowledged = acknowledged.clone();
            async move {
                acknowledged
                    .lock()
                    .await
                    .iter()
                    .find(|(_, sent, _)| *sent > killed)
                    .map(|(_, _, acked)| *acked - killed)
            }
        },
    )
    .await?;
    println!(
        "failover: node-{} active, first write accepted {failover:?} after kill -9 of the active node (fence TTL 4 s)",
        new_active + 2
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await?;
    }
    assert!(
        failover < Duration::from_secs(10),
        "writes resumed only {failover:?} after the kill"
    );

    // Every acknowledged write is there, on both survivors.
    let acknowledged = acknowledged.lock().await.clone();
    assert!(
        acknowledged.len() > before,
        "no write acknowledged after the failover"
    );
    for node in survivors {
        for (i, _, _) in &acknowledged {
            let read = node
                .root()
                .get(&format!("/v1/secret/data/load-{i}"))
                .await?;
            assert_eq!(
                read.status, 200,
                "acknowledged write load-{i} lost on {}",
                node.id
            );
            assert_eq!(read.body["data"]["data"]["i"], *i);
        }
    }
    println!("{} acknowledged writes, none lost", acknowledged.len());

    // sys/ha-status drops the killed node once its presence lease expires (15 s after its
    // last echo), and lists the new active node first.
    let listed = ferry_tests::wait_for(
        "sys/ha-status without the killed node",
        Duration::from_secs(25),
        || async {
            let ha = nodes[1].root().get("/v1/sys/ha-status").await.ok()?;
            let names: Vec<String> = ha.body["data"]["nodes"]
                .as_array()?
                .iter()
                .filter_map(|n| n["hostname"].as_str().map(str::to_owned))
                .collect();
            (!names.contains(&"node-1".to_owned())).then_some(names)
        },
    )
    .await?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], format!("node-{}", new_active + 2));
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "the killed node was listed for {:?}",
        killed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_former_active_node_cannot_commit_when_it_wakes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let nodes = start_nodes(&etcd, 2, &[TTL]).await?;
    let [old, new] = &nodes[..] else {
        unreachable!()
    };
    old.root()
        .post("/v1/secret/data/before", json!({ "data": { "v": 1 } }))
        .await?
        .ok()?;

    // Frozen past its lease: the standby takes over.
    old.signal("STOP")?;
    new.sidecar.wait_active(Duration::from_secs(30)).await?;
    new.root()
        .post("/v1/secret/data/after", json!({ "data": { "v": 2 } }))
        .await?
        .ok()?;
    let wal_before = new.sidecar.status().await?.last_wal;

    // It wakes up believing it is active: its sidecar's writes do not commit.
    old.signal("CONT")?;
    let err = old
        .sidecar
        .storage()
        .put(PutRequest {
            key: "core/from-the-frozen-node".into(),
            value: b"x".to_vec(),
        })
        .await
        .expect_err("the former active node committed a write");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("write fence"), "{}", err.message());
    let found = new
        .sidecar
        .storage()
        .get(GetRequest {
            key: "core/from-the-frozen-node".into(),
        })
        .await?
        .into_inner()
        .found;
    assert!(!found, "the frozen node's write reached etcd");
    assert_eq!(new.sidecar.status().await?.last_wal, wal_before);

    // It now serves as a standby (once it has seen who holds the fence): its role and health
    // say so, and a write through it is forwarded to the new active node.
    old.sidecar
        .wait_status("the former active node to name the new one", |s| {
            s.role == "standby" && s.active.as_ref().is_some_and(|a| a.node_id == "node-2")
        })
        .await?;
    assert_eq!(old.vault.api.get("/v1/sys/health").await?.status, 473);
    old.root()
        .post("/v1/secret/data/via-old", json!({ "data": { "v": 3 } }))
        .await?
        .ok()?;
    let read = new.root().get("/v1/secret/data/via-old").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], 3);
    let read = old.root().get("/v1/secret/data/after").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], 2);
    Ok(())
}
