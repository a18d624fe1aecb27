//! The cluster port speaks only mutual TLS with certificates of the replication CA: a peer with
//! another CA's certificate, or none, gets nothing; a revoked secondary is cut off.

use ferry_proto::replication::HeartbeatRequest;
use ferry_sidecar::replication::pki::ReplicationCa;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::region::primary_and_secondary;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_replication_cas_certificate_are_refused() -> anyhow::Result<()> {
    let (primary, secondary) = primary_and_secondary(&[]).await?;
    let address = primary.cluster_addr();
    let heartbeat = || HeartbeatRequest {
        secondary_id: "east".into(),
        ..Default::default()
    };

    // A certificate from another CA (which the client trusts, so only the server can refuse).
    let stranger = ReplicationCa::generate("elsewhere")?;
    let material = TlsMaterial {
        ca_cert_pem: stranger.key.cert_pem.clone(),
        identity: stranger.issue("east")?,
    };
    let err = client(&address, &material)?
        .heartbeat(heartbeat())
        .await
        .expect_err("a foreign CA's certificate must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    // Plaintext gRPC to the cluster port gets nothing either.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await;
    if let Ok(channel) = plain {
        let err = ferry_proto::replication::replication_client::ReplicationClient::new(channel)
            .heartbeat(heartbeat())
            .await
            .expect_err("plaintext must be refused");
        assert_ne!(err.code(), tonic::Code::Ok);
    }

    // Revoking the secondary cuts it off: the primary refuses its calls from then on.
    primary
        .call("primary/revoke-secondary", json!({ "id": "east" }))
        .await?
        .ok()?;
    secondary
        .wait_status("the revoked secondary to lose its primary", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not activated"))
        })
        .await?;
    Ok(())
}
