//! Who holds which key in a replication set (issue 16, points 1 and 2): an activation token
//! carries no key and the primary keeps only its hash; a secondary makes its own key and gets a
//! short-lived client certificate for it, renewed at half-life over the live connection; each
//! cluster's CA key stays in that cluster, through a promotion too.

use base64::Engine;
use ferry_sidecar::replication::pki::ReplicationCa;
use ferry_tests::etcd::EtcdServer;
use ferry_tests::inspect::opened_values;
use ferry_tests::member::TestMember;
use ferry_tests::region::{Region, primary_and_secondary};
use serde_json::{Value, json};

/// The CA a cluster keeps for itself, opened.
async fn own_ca(etcd: &EtcdServer, cluster: &str) -> anyhow::Result<ReplicationCa> {
    let values = opened_values(etcd, cluster).await?;
    let (_, ca) = values
        .iter()
        .find(|(path, _)| path == "core/cluster/replicated/ca")
        .ok_or_else(|| anyhow::anyhow!("{cluster} keeps no CA"))?;
    Ok(serde_json::from_str(ca)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_token_holds_no_key_and_the_primary_keeps_only_its_hash() -> anyhow::Result<()>
{
    let primary = Region::start("west", &[]).await?;
    primary.enable_primary().await?;
    let token = primary.token("south").await?;
    let claims = token
        .strip_prefix("ferry1.")
        .and_then(|rest| rest.split('.').next())
        .ok_or_else(|| anyhow::anyhow!("token {token:?} has no claims part"))?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?;
    let claims: Value = serde_json::from_slice(&claims)?;
    let text = claims.to_string();
    assert!(
        !text.contains("PRIVATE KEY"),
        "the token carries a key: {text}"
    );
    assert!(
        claims.get("client").is_none(),
        "the token carries a certificate: {text}"
    );

    let values = opened_values(&primary.etcd, "west").await?;
    let (_, record) = values
        .iter()
        .find(|(path, _)| path.ends_with("secondaries/south"))
        .ok_or_else(|| anyhow::anyhow!("no record for south"))?;
    let record: Value = serde_json::from_str(record)?;
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    assert_eq!(record["token_hash"], json!(hash), "{record}");
    for (path, value) in &values {
        assert!(
            !value.contains(&token),
            "the primary stores the token at {path}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clusters_ca_key_stays_in_that_cluster_through_a_promotion() -> anyhow::Result<()> {
    let (primary, secondary) = primary_and_secondary(&[]).await?;
    primary.put("app/config", b"v1").await?;
    secondary.wait_caught_up(&primary).await?;
    secondary
        .call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    secondary.put("app/config", b"v2").await?;

    let west_ca = own_ca(&primary.etcd, "west").await?;
    let east_ca = own_ca(&secondary.etcd, "east").await?;
    assert_ne!(west_ca.key.key_pem, east_ca.key.key_pem);
    for (region, etcd, foreign) in [
        ("east", &secondary.etcd, &west_ca),
        ("west", &primary.etcd, &east_ca),
    ] {
        for (path, value) in opened_values(etcd, region).await? {
            assert!(
                !value.contains(foreign.key.key_pem.trim()),
                "{region} holds the other cluster's CA key at {path}"
            );
        }
    }
    Ok(())
}

/// When `status` says the cluster's client certificate expires.
fn expires(status: &Value) -> Option<String> {
    status["client_certificate_expires"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_short_lived_and_renewed_before_they_expire() -> anyhow::Result<()>
{
    const TTL_SECONDS: u64 = 6;
    let ttl = TTL_SECONDS.to_string();
    let flags = ["--replication-client-cert-ttl-seconds", ttl.as_str()];
    let (primary, mut secondary) = primary_and_secondary(&flags).await?;
    let first = expires(&secondary.status().await?)
        .ok_or_else(|| anyhow::anyhow!("the secondary reports no certificate expiry"))?;
    let primary_first = expires(&primary.status().await?);
    assert!(
        primary_first.is_some(),
        "the primary reports no certificate expiry"
    );

    // Both renew at half-life, the secondary at the primary over its connection.
    secondary
        .wait_status("the secondary to renew its certificate", |s| {
            expires(s).is_some_and(|e| e > first)
        })
        .await?;
    primary
        .wait_status("the primary to renew its own certificate", |s| {
            expires(s) > primary_first
        })
        .await?;

    // Once the first certificate has expired, a restarted secondary connects with its renewed
    // one, and replication goes on.
    // (A wait for the clock, not for readiness: the first certificate was issued before now.)
    tokio::time::sleep(std::time::Duration::from_secs(TTL_SECONDS)).await;
    secondary.restart().await?;
    primary.put("after/renewal", b"still replicating").await?;
    secondary.wait_caught_up(&primary).await?;
    assert_eq!(
        secondary.get("after/renewal").await?.as_deref(),
        Some(&b"still replicating"[..])
    );
    let status = secondary.status().await?;
    assert!(
        status["last_error"].is_null(),
        "the secondary reports an error: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_is_refused_and_its_ca_trusted_no_more() -> anyhow::Result<()> {
    let primary = Region::start("west", &[]).await?;
    primary.enable_primary().await?;
    let address = primary.cluster_addr();
    let alice = TestMember::activate(&primary.token("alice").await?).await?;
    let mallory = TestMember::activate(&primary.token("mallory").await?).await?;
    let heartbeat = |id: &str| ferry_proto::replication::HeartbeatRequest {
        secondary_id: id.into(),
        ..Default::default()
    };
    let mallory_ca = mallory.keys.ca.key.cert_pem.trim().to_owned();
    let members = alice
        .client(&address)?
        .heartbeat(heartbeat("alice"))
        .await?
        .into_inner()
        .member_cas_pem;
    assert!(
        members.contains(&mallory_ca),
        "a new member's CA is not shared"
    );

    primary
        .call("primary/revoke-secondary", json!({ "id": "mallory" }))
        .await?
        .ok()?;
    let refused = mallory
        .client(&address)?
        .heartbeat(heartbeat("mallory"))
        .await
        .expect_err("a revoked member was answered");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let members = alice
        .client(&address)?
        .heartbeat(heartbeat("alice"))
        .await?
        .into_inner()
        .member_cas_pem;
    assert!(
        !members.contains(&mallory_ca),
        "a revoked member's CA is still shared"
    );
    Ok(())
}
