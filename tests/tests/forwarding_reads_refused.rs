//! A primary executes for another cluster only writes, which a secondary cannot make itself:
//! a forwarded read is refused, even with a member's valid credentials and a root identity (the
//! attack of issue 16: the key inside a used activation token let anyone read secrets and
//! decrypt as root through `Replication.Forward`).

use ferry_proto::forward::{ForwardedRequest, Identity};
use ferry_sidecar::replication::token::TokenClaims;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::region::Region;
use ferry_tests::vault::VaultPair;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_read_is_refused_even_with_a_members_credentials() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    // A member activated with a token whose key the caller kept.
    let token = pair.west.token("south").await?;
    let south = Region::start("south", &[]).await?;
    south.enable_secondary(&token).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = TokenClaims::verify(&token, now)?;
    let tls = TlsMaterial {
        ca_cert_pem: claims.ca_cert_pem,
        identity: claims.client,
    };
    let mut primary = client(&pair.west.cluster_addr(), &tls)?;
    let as_root = |method: &str| ForwardedRequest {
        method: method.into(),
        path_and_query: "/v1/secret/data/pair-canary".into(),
        identity: Some(Identity {
            policies: vec!["root".into()],
            display_name: "mallory".into(),
            accessor: String::new(),
        }),
        secondary_id: "south".into(),
        ..ForwardedRequest::default()
    };
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
    Ok(())
}
