//! ferry-operator end to end: each region has its own kube-apiserver (with its etcd), operator
//! (running as its ServiceAccount with the RBAC the project ships), etcd, sidecar and
//! ferry-vault. The tests apply ReplicationCluster resources, copy the activation token Secret
//! from one API server to the other as GitOps would, and flip roles by changing the resources.

use std::time::{Duration, Instant};

use ferry_operator::crd::{ClusterRef, ReplicationClusterSpec};
use ferry_tests::operator::{
    ADMIN_SECRET, Acked, LONG, NAMESPACE, OperatorRegion, Writer, cluster_ref, condition,
    condition_message, connect, create, flip, is_true, primary_spec, set_spec, state,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

/// After a switchover: east is the primary and Ready, west follows it, and every write either
/// side acknowledged is on both.
async fn check_switched(
    west: &OperatorRegion,
    east: &OperatorRegion,
    acked: &Acked,
    flipped: Instant,
    promoted: Instant,
) -> anyhow::Result<()> {
    east.wait_resource("east", "east the primary and Ready", LONG, |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
            && is_true(rc, "Ready")
            && condition(rc, "Promoting").is_some_and(|(s, _)| s == "False")
    })
    .await?;
    west.wait_resource("west", "west following east", LONG, |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;
    anyhow::ensure!(
        acked.values().any(|(_, at)| *at < flipped),
        "no write was acknowledged before the flip"
    );
    anyhow::ensure!(
        acked.values().any(|(_, at)| *at > promoted),
        "no write was acknowledged after the promotion"
    );
    let (e, w) = (east.vault_api(), west.vault_api());
    for n in acked.keys() {
        let path = format!("/v1/secret/data/load/{n}");
        let on_east = e.get(&path).await?;
        anyhow::ensure!(
            on_east.status == 200 && on_east.body["data"]["data"]["n"] == *n,
            "acknowledged write {n} (by {}) is missing on the new primary: {:?}",
            acked[n].0,
            on_east.body
        );
    }
    // West catches up with east, including east's own writes.
    let last = *acked.keys().last().expect("writes");
    ferry_tests::wait_for("west to have every write", LONG, || async {
        (w.get(&format!("/v1/secret/data/load/{last}"))
            .await
            .ok()?
            .status
            == 200)
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_connect_two_regions_and_switch_over_without_losing_writes() -> anyhow::Result<()>
{
    let (west, east) =
        tokio::try_join!(OperatorRegion::start("west"), OperatorRegion::start("east"))?;
    let (mut west, mut east) = (west, east);
    west.start_operator("west-operator")?;
    east.start_operator("east-operator")?;
    let took = connect(&west, &east).await?;
    eprintln!("applied to stream-wals: {took:.2}s");

    let writer = Writer::start(west.vault_api(), east.vault_api());
    tokio::time::sleep(Duration::from_millis(500)).await; // let some writes land on west first
    let flipped = Instant::now();
    flip(&west, &east).await?;
    east.wait_resource("east", "east promoted", LONG, |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
    })
    .await?;
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await; // writes on the new primary
    let (acked, first_on_east) = writer.stop().await;
    let accepted = first_on_east.map(|t| t.duration_since(flipped).as_secs_f64());
    eprintln!(
        "flip to writes accepted on the new primary: {accepted:?}s; {} writes acknowledged",
        acked.len()
    );
    check_switched(&west, &east, &acked, flipped, promoted).await?;

    // The steps show in the metrics.
    let metrics = reqwest_text(&east.operators[0].metrics_port, "/metrics").await?;
    assert!(
        metrics.contains(r#"ferry_operator_steps_total{step="Promote",result="ok"} 1"#),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_restarted_mid_promotion_finishes_it() -> anyhow::Result<()> {
    let (west, east) =
        tokio::try_join!(OperatorRegion::start("west"), OperatorRegion::start("east"))?;
    let (mut west, mut east) = (west, east);
    west.start_operator("west-operator")?;
    east.start_operator("east-operator-1")?;
    connect(&west, &east).await?;
    let writer = Writer::start(west.vault_api(), east.vault_api());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // East's operator is down while the roles flip: west demotes and waits for a new primary.
    east.operators[0].kill();
    let flipped = Instant::now();
    flip(&west, &east).await?;
    west.wait_resource("west", "west demoted, waiting", LONG, |rc| {
        condition(rc, "Promoting").is_some_and(|(s, _)| s == "True")
            && rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("secondary")
    })
    .await?;
    // West's operator restarts too, in the middle.
    west.operators[0].kill();
    west.start_operator("west-operator-2")?;
    east.start_operator("east-operator-2")?;
    east.wait_resource("east", "east promoted", LONG, |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
    })
    .await?;
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, _) = writer.stop().await;
    check_switched(&west, &east, &acked, flipped, promoted).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_resources_are_refused_or_marked_and_change_nothing() -> anyhow::Result<()> {
    let mut west = OperatorRegion::start("west").await?;
    west.start_operator("west-operator")?;
    // The schema refuses what it can express.
    for (bad, says) in [
        (r#""role": "tertiary""#, "role"),
        (r#""role": "primary", "mode": "async""#, "mode"),
    ] {
        let yaml = format!(
            r#"{{"apiVersion": "replication.ferry.dev/v1alpha1", "kind": "ReplicationCluster",
                "metadata": {{"name": "bad", "namespace": "{NAMESPACE}"}},
                "spec": {{"cluster": {{"address": "{}", "tokenSecretRef": {{"name": "{ADMIN_SECRET}"}}}}, {bad}}}}}"#,
            west.vault.api.base()
        );
        let e = west
            .kube
            .apply_yaml(&yaml)
            .await
            .expect_err("the schema refuses it");
        assert!(format!("{e:#}").contains(says), "{e:#}");
    }
    let bad_address = ReplicationClusterSpec {
        cluster: ClusterRef {
            address: "vault:8200".into(),
            ..cluster_ref(&west)
        },
        ..primary_spec(&west, &[])
    };
    assert!(
        create(&west, "bad", bad_address).await.is_err(),
        "the address pattern"
    );

    // The controller marks what the schema cannot: a secondary with no way to join, a token
    // lifetime beyond the sidecar's limit (720h).
    let mut spec = primary_spec(&west, &["east"]);
    spec.primary.as_mut().expect("primary").secondaries[0].ttl = "721h".into();
    create(&west, "west", spec).await?;
    let rc = west
        .wait_resource("west", "InvalidSpec", LONG, |rc| is_true(rc, "InvalidSpec"))
        .await?;
    let (_, reason) = condition(&rc, "Ready").expect("Ready");
    assert_eq!(reason, "InvalidSpec");
    let message = condition_message(&rc, "InvalidSpec");
    assert!(message.contains("between 1s and 720h"), "{message}");
    // Nothing changed in the cluster, and no token Secret was written.
    let status = west
        .vault
        .api
        .get("/v1/sys/replication/performance/status")
        .await?;
    assert_eq!(status.body["data"]["mode"], "disabled");
    assert!(west.secrets().get_opt("east-activation").await?.is_none());
    // A Warning event says what is wrong.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(west.client.clone(), NAMESPACE);
    let warned = ferry_tests::wait_for("the InvalidSpec event", LONG, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
        })
    })
    .await?;
    assert!(
        warned
            .note
            .unwrap_or_default()
            .contains("between 1s and 720h")
    );

    // Fixing the spec clears the condition and the operator goes ahead.
    set_spec(&west, "west", &primary_spec(&west, &["east"])).await?;
    west.wait_resource("west", "valid and Ready", LONG, |rc| {
        condition(rc, "InvalidSpec").is_some_and(|(s, _)| s == "False") && is_true(rc, "Ready")
    })
    .await?;
    let first = token_of(&west, "east-activation").await?;
    // A token Secret that goes missing is issued afresh.
    west.secrets()
        .delete("east-activation", &Default::default())
        .await?;
    let second = ferry_tests::wait_for("a fresh token Secret", LONG, || async {
        token_of(&west, "east-activation").await.ok()
    })
    .await?;
    assert_ne!(first, second, "a new token");
    // A secondary dropped from the spec is revoked, and its Secret deleted.
    set_spec(&west, "west", &primary_spec(&west, &[])).await?;
    west.wait_resource("west", "east revoked", LONG, |rc| {
        rc.status
            .as_ref()
            .is_some_and(|s| !s.issued_tokens.contains_key("east"))
            && is_true(rc, "Ready")
    })
    .await?;
    assert!(west.secrets().get_opt("east-activation").await?.is_none());
    let status = west
        .vault
        .api
        .get("/v1/sys/replication/performance/status")
        .await?;
    assert_eq!(
        status.body["data"]["known_secondaries"],
        serde_json::json!([])
    );
    set_spec(&west, "west", &primary_spec(&west, &["east"])).await?;
    ferry_tests::wait_for("the token Secret again", LONG, || async {
        token_of(&west, "east-activation").await.ok()
    })
    .await?;

    // Deleting the resource runs the finalizer: the token Secret it wrote is gone.
    delete_west_and_wait(&west).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operator_replicas_elect_one_leader() -> anyhow::Result<()> {
    let mut west = OperatorRegion::start("west").await?;
    west.start_operator("replica-a")?;
    west.start_operator("replica-b")?;
    let leases: Api<Lease> = Api::namespaced(west.client.clone(), NAMESPACE);
    let holder = ferry_tests::wait_for("a leader", LONG, || async {
        leases
            .get_opt("ferry-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await?;
    let leader = west
        .operators
        .iter()
        .position(|o| o.identity == holder)
        .expect("a replica leads");
    let follower = 1 - leader;
    let ready = |i: usize| {
        let port = west.operators[i].metrics_port;
        async move { reqwest_status(&port, "/readyz").await }
    };
    // The lease is written before the replica that took it notes that it leads.
    ferry_tests::wait_for("the leader to be ready", LONG, || async {
        (ready(leader).await.ok()? == 200).then_some(())
    })
    .await?;
    assert_eq!(ready(follower).await?, 503, "only the leader is ready");
    // The leader goes away; the other takes over and reconciles.
    west.operators[leader].kill();
    let new_holder = ferry_tests::wait_for("the other replica to lead", LONG, || async {
        let h = leases
            .get_opt("ferry-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (h != holder).then_some(h)
    })
    .await?;
    assert_eq!(new_holder, west.operators[follower].identity);
    create(&west, "west", primary_spec(&west, &[])).await?;
    west.wait_resource("west", "reconciled by the new leader", LONG, |rc| {
        is_true(rc, "Ready")
    })
    .await?;
    Ok(())
}

/// GET `path` on the operator's metrics port: the body.
async fn reqwest_text(port: &u16, path: &str) -> anyhow::Result<String> {
    let (_, body) = get_raw(*port, path).await?;
    Ok(body)
}

async fn reqwest_status(port: &u16, path: &str) -> anyhow::Result<u16> {
    Ok(get_raw(*port, path).await?.0)
}

async fn get_raw(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}").parse()?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The token in Secret `name`, if it exists.
async fn token_of(r: &OperatorRegion, name: &str) -> anyhow::Result<String> {
    let secret = r
        .secrets()
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no Secret {name}"))?;
    Ok(String::from_utf8(
        secret.data.unwrap_or_default()["token"].0.clone(),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_waits_for_an_unreachable_old_primary_unless_forced() -> anyhow::Result<()> {
    let (west, east) =
        tokio::try_join!(OperatorRegion::start("west"), OperatorRegion::start("east"))?;
    let (mut west, mut east) = (west, east);
    west.start_operator("west-operator")?;
    east.start_operator("east-operator")?;
    connect(&west, &east).await?;
    // West's region is lost: its server and sidecar are gone.
    west.vault.kill();
    west.region.sidecar.kill();
    set_spec(&east, "east", &primary_spec(&east, &[])).await?;
    let rc = east
        .wait_resource("east", "a waiting promotion", LONG, |rc| {
            condition(rc, "Promoting")
                .is_some_and(|(s, r)| s == "True" && r == "WaitingForOldPrimary")
        })
        .await?;
    let message = condition_message(&rc, "Promoting");
    assert!(message.contains("spec.promotion.force"), "{message}");
    let status = east
        .vault
        .api
        .get("/v1/sys/replication/performance/status")
        .await?;
    assert_eq!(
        status.body["data"]["mode"], "secondary",
        "not promoted without force"
    );
    // Forced, it goes ahead, once west has not answered for FORCE_AFTER: a moment's silence
    // (pods rolling, a demotion under way) is not taken for a dead primary.
    let mut forced = primary_spec(&east, &[]);
    forced.promotion.force = true;
    let asked = std::time::Instant::now();
    set_spec(&east, "east", &forced).await?;
    let waiting = east
        .wait_resource("east", "a promotion waiting to force", LONG, |rc| {
            condition_message(rc, "Promoting").contains("spec.promotion.force promotes without it")
        })
        .await?;
    assert_ne!(
        waiting.status.as_ref().and_then(|s| s.role.as_deref()),
        Some("primary")
    );
    east.wait_resource("east", "east promoted by force", LONG, |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
            && is_true(rc, "Ready")
    })
    .await?;
    assert!(
        asked.elapsed() >= ferry_operator::FORCE_AFTER,
        "forced after {:?}, before west had been unreachable for {:?}",
        asked.elapsed(),
        ferry_operator::FORCE_AFTER
    );
    let written = east
        .vault_api()
        .post(
            "/v1/secret/data/after",
            serde_json::json!({ "data": { "ok": true } }),
        )
        .await?;
    anyhow::ensure!(
        written.status == 200,
        "a write on the promoted primary: {:?}\n{}",
        written.body,
        east.vault.log()
    );
    // Deleting west's resource finishes although its cluster is gone; its Secret goes with it.
    delete_west_and_wait(&west).await?;
    Ok(())
}

/// Deletes west's resource and waits until it and the token Secret it wrote are gone (the
/// finalizer ran).
async fn delete_west_and_wait(west: &OperatorRegion) -> anyhow::Result<()> {
    west.clusters().delete("west", &Default::default()).await?;
    ferry_tests::wait_for("the resource and its token Secret to go", LONG, || async {
        let gone = west.clusters().get_opt("west").await.ok()?.is_none();
        let secret_gone = west
            .secrets()
            .get_opt("east-activation")
            .await
            .ok()?
            .is_none();
        (gone && secret_gone).then_some(())
    })
    .await?;
    Ok(())
}
