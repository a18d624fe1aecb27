//! The cluster port speaks only TLS, and answers only members: a peer with another CA's
//! certificate fails the handshake, one without a certificate gets nothing but Activate, a
//! member's own certificate is client-only, and a revoked secondary is cut off.

use ferry_proto::replication::HeartbeatRequest;
use ferry_sidecar::replication::membership::NewMember;
use ferry_sidecar::replication::pki::CertifiedKey;
use ferry_sidecar::replication::token::TokenClaims;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::region::primary_and_secondary;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_replication_cas_certificate_are_refused() -> anyhow::Result<()> {
    let (primary, secondary) = primary_and_secondary(&[]).await?;
    let address = primary.cluster_addr();
    let heartbeat = || HeartbeatRequest {
        secondary_id: "intruder".into(),
        ..Default::default()
    };

    // The client trusts the primary (its CA rides in a token), so only the server can refuse.
    let token = primary.token("intruder").await?;
    let primary_ca =
        TokenClaims::verify(&token, ferry_sidecar::replication::unix_now())?.ca_cert_pem;

    // A client certificate from another CA, for the caller's own key: the handshake fails.
    let stranger = NewMember::generate("elsewhere", "east")?;
    let (foreign_cert, _) = stranger.ca.sign_client(
        &stranger.identity.csr_pem()?,
        "east",
        std::time::Duration::from_secs(3600),
        ferry_sidecar::replication::unix_now(),
    )?;
    let material = TlsMaterial {
        ca_cert_pem: primary_ca.clone(),
        identity: Some(CertifiedKey {
            cert_pem: foreign_cert,
            key_pem: stranger.identity.key_pem.clone(),
        }),
    };
    let err = client(&address, &material)?
        .heartbeat(heartbeat())
        .await
        .expect_err("a foreign CA's certificate must be refused");
    assert_handshake_refused(&err);

    // A member's server certificate, from a CA the primary trusts, is no client certificate:
    // the handshake fails too. (The test activates a member of its own for that.)
    let member = NewMember::generate("-", "intruder")?;
    client(
        &address,
        &TlsMaterial {
            ca_cert_pem: primary_ca.clone(),
            identity: None,
        },
    )?
    .activate(ferry_proto::replication::ActivateRequest {
        token,
        csr_pem: member.identity.csr_pem()?,
        ca_cert_pem: member.ca.key.cert_pem.clone(),
    })
    .await?;
    let material = TlsMaterial {
        ca_cert_pem: primary_ca.clone(),
        identity: Some(member.identity.clone()),
    };
    let err = client(&address, &material)?
        .heartbeat(heartbeat())
        .await
        .expect_err("a server certificate must not authenticate a client");
    assert_handshake_refused(&err);

    // No certificate at all: the connection is up, and every call but Activate is refused.
    let material = TlsMaterial {
        ca_cert_pem: primary_ca,
        identity: None,
    };
    let err = client(&address, &material)?
        .heartbeat(heartbeat())
        .await
        .expect_err("a call without a certificate must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

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

/// With TLS 1.3 the client learns that the server refused its certificate only when it next
/// uses the connection: the call fails with a transport error (unavailable, broken pipe or
/// cancelled, as the timing falls), never with an answer from the service.
fn assert_handshake_refused(err: &tonic::Status) {
    assert!(
        std::error::Error::source(err).is_some_and(|e| e.to_string().contains("transport error")),
        "{err}"
    );
}
