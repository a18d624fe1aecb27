//! ferry-operator end to end: each region has its own kube-apiserver (with its etcd), operator
//! (running as its ServiceAccount with the RBAC the project ships), etcd, sidecar and
//! ferry-vault. The tests apply ReplicationCluster resources, copy the activation token Secret
//! from one API server to the other as GitOps would, and flip roles by changing the resources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_operator::crd::{
    ClusterRef, PrimarySpec, ReplicationCluster, ReplicationClusterSpec, Role, SecondaryGrant,
    SecondarySpec, SecretKeyRef,
};
use ferry_tests::operator::{ADMIN_SECRET, NAMESPACE, OperatorRegion, condition, secret};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Mutex;

const LONG: Duration = Duration::from_secs(90);

/// Acknowledged writes: number → the region that answered, and when.
type Acked = BTreeMap<u64, (&'static str, Instant)>;

fn cluster_ref(r: &OperatorRegion) -> ClusterRef {
    ClusterRef {
        address: r.vault.api.base().to_owned(),
        token_secret_ref: SecretKeyRef {
            name: ADMIN_SECRET.into(),
            key: "token".into(),
        },
        ca_bundle: None,
    }
}

fn primary_spec(r: &OperatorRegion, secondaries: &[&str]) -> ReplicationClusterSpec {
    ReplicationClusterSpec {
        cluster: cluster_ref(r),
        role: Role::Primary,
        primary: Some(PrimarySpec {
            primary_cluster_addr: Some(r.region.cluster_addr()),
            secondaries: secondaries
                .iter()
                .map(|id| SecondaryGrant {
                    id: (*id).into(),
                    token_secret_name: format!("{id}-activation"),
                    ttl: "30m".into(),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn secondary_spec(r: &OperatorRegion, id: &str) -> ReplicationClusterSpec {
    ReplicationClusterSpec {
        cluster: cluster_ref(r),
        role: Role::Secondary,
        secondary: Some(SecondarySpec {
            token_secret_ref: Some(SecretKeyRef {
                name: format!("{id}-activation"),
                key: "token".into(),
            }),
            primary_addrs: Vec::new(),
        }),
        ..Default::default()
    }
}

async fn create(
    r: &OperatorRegion,
    name: &str,
    spec: ReplicationClusterSpec,
) -> anyhow::Result<()> {
    r.clusters()
        .create(&PostParams::default(), &ReplicationCluster::new(name, spec))
        .await?;
    Ok(())
}

async fn set_spec(
    r: &OperatorRegion,
    name: &str,
    spec: &ReplicationClusterSpec,
) -> anyhow::Result<()> {
    r.clusters()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

fn state(rc: &ReplicationCluster) -> Option<&str> {
    rc.status.as_ref()?.state.as_deref()
}

fn is_true(rc: &ReplicationCluster, type_: &str) -> bool {
    condition(rc, type_).is_some_and(|(s, _)| s == "True")
}

/// West primary, east its secondary, both through their operators: the token Secret is copied
/// from west's API server to east's. Returns the seconds from applying to `stream-wals`.
async fn connect(west: &OperatorRegion, east: &OperatorRegion) -> anyhow::Result<f64> {
    let started = Instant::now();
    create(west, "west", primary_spec(west, &["east"])).await?;
    create(east, "east", secondary_spec(east, "east")).await?;
    // The primary's operator writes the activation token into a Secret it owns.
    let token_secret = ferry_tests::wait_for("the activation token Secret", LONG, || async {
        west.secrets().get_opt("east-activation").await.ok()?
    })
    .await?;
    let labels = token_secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("replication.ferry.dev/secondary-id")
            .map(String::as_str),
        Some("east")
    );
    let owner = &token_secret
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ReplicationCluster", "west")
    );
    // GitOps copies it to the secondary's region.
    let token = String::from_utf8(token_secret.data.unwrap_or_default()["token"].0.clone())?;
    east.secrets()
        .create(
            &PostParams::default(),
            &secret("east-activation", "token", &token),
        )
        .await?;
    east.wait_resource("east", "east streaming and Ready", LONG, |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready") && is_true(rc, "Replicating")
    })
    .await?;
    let took = started.elapsed().as_secs_f64();
    let rc = west
        .wait_resource("west", "west reporting east connected", LONG, |rc| {
            rc.status.as_ref().is_some_and(|s| {
                s.secondaries
                    .iter()
                    .any(|x| x.id == "east" && x.connection_state == "connected")
            }) && is_true(rc, "Ready")
                && is_true(rc, "Replicating")
        })
        .await?;
    let status = rc.status.expect("status");
    assert_eq!(status.role.as_deref(), Some("primary"));
    assert!(status.issued_tokens.contains_key("east"));
    assert_eq!(status.observed_generation, rc.metadata.generation);
    Ok(took)
}

/// Writes numbered secrets to whichever region accepts them (directly or forwarded),
/// remembering every acknowledged one: where and when.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    first_on_east: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(west: ferry_tests::http::JsonClient, east: ferry_tests::http::JsonClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let first_on_east = Arc::new(Mutex::new(None));
        let task = {
            let (stop, acked, first_on_east) = (stop.clone(), acked.clone(), first_on_east.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = format!("/v1/secret/data/load/{n}");
                    let body = json!({ "data": { "n": n } });
                    for (name, api) in [("west", &west), ("east", &east)] {
                        let Ok(r) = api.post(&path, body.clone()).await else {
                            continue;
                        };
                        if r.status == 200 {
                            acked.lock().await.insert(n, (name, Instant::now()));
                            if name == "east" {
                                first_on_east.lock().await.get_or_insert_with(Instant::now);
                            }
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Self {
            stop,
            acked,
            first_on_east,
            task,
        }
    }

    async fn stop(self) -> (Acked, Option<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.acked.lock().await.clone(),
            *self.first_on_east.lock().await,
        )
    }
}

/// Flips the roles as GitOps would: west becomes a secondary following east, east the primary.
async fn flip(west: &OperatorRegion, east: &OperatorRegion) -> anyhow::Result<()> {
    let mut w = secondary_spec(west, "west");
    w.secondary = Some(SecondarySpec {
        token_secret_ref: None,
        primary_addrs: vec![east.region.cluster_addr()],
    });
    set_spec(west, "west", &w).await?;
    set_spec(east, "east", &primary_spec(east, &[])).await?;
    Ok(())
}

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
    // lifetime beyond the cluster's limit.
    let mut spec = primary_spec(&west, &["east"]);
    spec.primary.as_mut().expect("primary").secondaries[0].ttl = "1000h".into();
    create(&west, "west", spec).await?;
    let rc = west
        .wait_resource("west", "InvalidSpec", LONG, |rc| is_true(rc, "InvalidSpec"))
        .await?;
    let (_, reason) = condition(&rc, "Ready").expect("Ready");
    assert_eq!(reason, "InvalidSpec");
    let message = rc
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("768h"), "{message}");
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
    assert!(warned.note.unwrap_or_default().contains("768h"));

    // Fixing the spec clears the condition and the operator goes ahead.
    set_spec(&west, "west", &primary_spec(&west, &["east"])).await?;
    west.wait_resource("west", "valid and Ready", LONG, |rc| {
        condition(rc, "InvalidSpec").is_some_and(|(s, _)| s == "False") && is_true(rc, "Ready")
    })
    .await?;
    assert!(west.secrets().get_opt("east-activation").await?.is_some());

    // Deleting the resource runs the finalizer: the token Secret it wrote is gone.
    west.clusters().delete("west", &Default::default()).await?;
    ferry_tests::wait_for("the resource and its Secret to go", LONG, || async {
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
    assert_eq!(ready(leader).await?, 200);
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
