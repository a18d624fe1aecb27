//! A primary executes for another cluster only writes, which a secondary cannot make itself:
//! a forwarded read is refused, even from an activated member with a root identity (the attack
//! of issue 16: the key inside a used activation token let anyone read secrets and decrypt as
//! root through `Replication.Forward`), and so is a POST that writes nothing (transit's decrypt,
//! rewrap and encrypt with an existing key). And a used token no longer gets anyone that far.

use ferry_proto::forward::{ForwardedRequest, Identity};
use ferry_proto::replication::ActivateRequest;
use ferry_sidecar::replication::membership::NewMember;
use ferry_sidecar::replication::token::TokenClaims;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use ferry_tests::member::TestMember;
use ferry_tests::vault::VaultPair;
use serde_json::json;
use tonic::Code;

fn as_root(method: &str) -> ForwardedRequest {
    as_root_to(
        method,
        "/v1/secret/data/pair-canary",
        serde_json::Value::Null,
    )
}

fn as_root_to(method: &str, path: &str, body: serde_json::Value) -> ForwardedRequest {
    ForwardedRequest {
        method: method.into(),
        path_and_query: path.into(),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
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

    // A POST that writes nothing is not answered: no decrypting as root.
    let west = pair.west_root();
    west.post("/v1/transit/keys/pair-key", json!({}))
        .await?
        .ok()?;
    let plaintext = "c2VjcmV0IHBsYWludGV4dA=="; // "secret plaintext"
    let ciphertext = west
        .post(
            "/v1/transit/encrypt/pair-key",
            json!({ "plaintext": plaintext }),
        )
        .await?
        .ok()?
        .body["data"]["ciphertext"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
    for (path, body) in [
        (
            "/v1/transit/decrypt/pair-key",
            json!({ "ciphertext": ciphertext }),
        ),
        (
            "/v1/transit/rewrap/pair-key",
            json!({ "ciphertext": ciphertext }),
        ),
        (
            "/v1/transit/encrypt/pair-key",
            json!({ "plaintext": plaintext }),
        ),
    ] {
        let answer = primary
            .forward(as_root_to("POST", path, body))
            .await?
            .into_inner();
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 412, "{path}: {text}");
        assert!(text.contains("only what writes"), "{path}: {text}");
        assert!(
            !text.contains(plaintext) && !text.contains("vault:v1:"),
            "{path}: {text}"
        );
    }
    // A write is still executed for the member: a new key, created by encrypt.
    let created = primary
        .forward(as_root_to(
            "POST",
            "/v1/transit/encrypt/pair-new-key",
            json!({ "plaintext": plaintext }),
        ))
        .await?
        .into_inner();
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    west.get("/v1/transit/keys/pair-new-key").await?.ok()?;

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
