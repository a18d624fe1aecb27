//! A primary executes for another cluster only writes, which a secondary cannot make itself:
//! a forwarded read is refused, even from an activated member with a root identity (the attack
//! of issue 16: the key inside a used activation token let anyone read secrets and decrypt as
//! root through `Replication.Forward`). And a used token no longer gets anyone that far.

use ferry_proto::forward::{ForwardedRequest, Identity};
use ferry_proto::replication::ActivateRequest;
use ferry_sidecar::replication::membership::NewMember;
use ferry_sidecar::replication::token::TokenClaims;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::member::TestMember;
use ferry_tests::vault::VaultPair;
use tonic::Code;

fn as_root(method: &str) -> ForwardedRequest {
    ForwardedRequest {
        method: method.into(),
        path_and_query: "/v1/secret/data/pair-canary".into(),
        identity: Some(Identity {
            policies: vec!["root".into()],
            display_name: "mallory".into(),
            accessor: String::new(),
        }),
        secondary_id: "south".into(),
        ..ForwardedRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_read_is_refused_even_from_an_activated_member() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let token = pair.west.token("south").await?;
    let claims = TokenClaims::verify(&token, ferry_sidecar::replication::unix_now())?;
    let address = pair.west.cluster_addr();
    // Without a client certificate, the token is all a caller has: nothing but Activate.
    let anonymous = TlsMaterial {
        ca_cert_pem: claims.ca_cert_pem.clone(),
        identity: None,
    };
    let refused = client(&address, &anonymous)?
        .forward(as_root("POST"))
        .await
        .expect_err("a call without a client certificate was executed");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // This test activates as "south" itself, as a secondary does: its own key, a CSR.
    let south = TestMember::activate(&token).await?;
    let mut primary = south.client(&address)?;
    for method in ["GET", "LIST"] {
        let refused = primary
            .forward(as_root(method))
            .await
            .expect_err("a forwarded read was executed");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("only writes are forwarded"),
            "{}",
            refused.message()
        );
    }

    // The used token gets a second key nothing.
    let other = NewMember::generate(&claims.cluster_id, "south")?;
    let replayed = client(&address, &anonymous)?
        .activate(ActivateRequest {
            token,
            csr_pem: other.identity.csr_pem()?,
            ca_cert_pem: other.ca.key.cert_pem.clone(),
        })
        .await
        .expect_err("a used token was accepted again");
    assert_eq!(replayed.code(), Code::InvalidArgument, "{replayed:?}");
    assert!(
        replayed.message().contains("already used"),
        "{}",
        replayed.message()
    );
    Ok(())
}
