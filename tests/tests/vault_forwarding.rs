//! Forwarding and read-after-write between two regions, each with its own etcd, sidecar and
//! ferry-vault: writes through the secondary reach the primary and are readable on the
//! secondary as soon as they are answered; `X-Vault-Index` states are honoured; policies are
//! checked on the secondary with its own tokens; without the primary, forwarded writes fail fast
//! and reads go on.

use std::time::{Duration, Instant};

use ferry_tests::vault::{EAST_ROOT_TOKEN, VaultPair, WEST_ROOT_TOKEN};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_secondary_reach_the_primary_and_are_read_back_at_once()
-> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let (west, east) = (pair.west_root(), pair.east_root());

    // A KV write through the secondary: the primary's response, and at once readable here.
    let written = east
        .post(
            "/v1/secret/data/app",
            json!({ "data": { "color": "blue" } }),
        )
        .await?
        .ok()?;
    assert_eq!(written.body["data"]["version"], 1, "{:?}", written.body);
    assert!(written.body["warnings"].is_null(), "{:?}", written.body);
    let index = written
        .header("x-vault-index")
        .expect("a forwarded write carries X-Vault-Index")
        .to_owned();
    let read = east.get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["color"], "blue");
    let on_primary = west.get("/v1/secret/data/app").await?.ok()?;
    assert_eq!(on_primary.body["data"]["data"]["color"], "blue");
    // A second write with check-and-set goes through the primary's rules.
    let stale = east
        .post(
            "/v1/secret/data/app",
            json!({ "options": { "cas": 0 }, "data": { "color": "red" } }),
        )
        .await?;
    assert_eq!(stale.status, 400, "{:?}", stale.body);
    assert!(stale.error().contains("check-and-set"), "{}", stale.error());

    // X-Vault-Index: a state both clusters hold is served; one ahead of them is 412; garbage 400.
    for api in [&west, &east] {
        let r = api
            .with_header("x-vault-index", &index)
            .get("/v1/secret/data/app")
            .await?;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let (prefix, number) = index.rsplit_once('.').expect("a dotted state");
    let ahead = format!("{prefix}.{}", number.parse::<u64>()? + 1_000_000);
    for api in [&west, &east] {
        let r = api
            .with_header("x-vault-index", &ahead)
            .get("/v1/secret/data/app")
            .await?;
        assert_eq!(r.status, 412, "{:?}", r.body);
        assert_eq!(r.error(), "required index state not present");
    }
    let r = east
        .with_header("x-vault-index", "not-a-state")
        .get("/v1/secret/data/app")
        .await?;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("X-Vault-Index"), "{}", r.error());

    // A policy written through the secondary, a token of the secondary that holds it: allowed
    // writes are forwarded, denied ones are refused here and never reach the primary.
    let policy = r#"path "secret/data/team/*" { capabilities = ["create", "update", "read"] }"#;
    east.post(
        "/v1/sys/policies/acl/team-writer",
        json!({ "policy": policy }),
    )
    .await?
    .ok()?;
    let token = east
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["team-writer"], "ttl": "1h" }),
        )
        .await?
        .ok()?;
    let team_token = token.body["auth"]["client_token"]
        .as_str()
        .expect("client_token")
        .to_owned();
    let team = pair.east_vault.api.with_token(&team_token);
    team.post("/v1/secret/data/team/db", json!({ "data": { "pw": "x" } }))
        .await?
        .ok()?;
    assert_eq!(
        west.get("/v1/secret/data/team/db").await?.body["data"]["data"]["pw"],
        "x"
    );
    let denied = team
        .post("/v1/secret/data/other", json!({ "data": { "pw": "y" } }))
        .await?;
    assert_eq!(denied.status, 403, "{:?}", denied.body);
    assert_eq!(west.get("/v1/secret/data/other").await?.status, 404);

    // Tokens are local: neither of the secondary's tokens works on the primary, and back.
    for token in [EAST_ROOT_TOKEN, team_token.as_str()] {
        let r = pair
            .west_vault
            .api
            .with_token(token)
            .get("/v1/secret/data/app")
            .await?;
        assert_eq!(r.status, 403, "a token of east used on west");
    }
    let r = pair
        .east_vault
        .api
        .with_token(WEST_ROOT_TOKEN)
        .get("/v1/secret/data/app")
        .await?;
    assert_eq!(r.status, 403, "a token of west used on east");

    // Transit: the key is created through the primary, encryption is served by the secondary
    // and the primary decrypts it.
    east.post("/v1/transit/keys/payments", json!({}))
        .await?
        .ok()?;
    let plaintext = "aGVsbG8gZmVycnk="; // "hello ferry"
    let sealed = east
        .post(
            "/v1/transit/encrypt/payments",
            json!({ "plaintext": plaintext }),
        )
        .await?
        .ok()?;
    let ciphertext = sealed.body["data"]["ciphertext"]
        .as_str()
        .expect("ciphertext");
    assert!(
        sealed.header("x-vault-index").is_none(),
        "encryption wrote nothing"
    );
    let opened = west
        .post(
            "/v1/transit/decrypt/payments",
            json!({ "ciphertext": ciphertext }),
        )
        .await?
        .ok()?;
    assert_eq!(opened.body["data"]["plaintext"], plaintext);

    // A mount enabled through the secondary is served by both at once.
    east.post("/v1/sys/mounts/apps", json!({ "type": "kv-v2" }))
        .await?
        .ok()?;
    east.post("/v1/apps/data/web", json!({ "data": { "port": 8080 } }))
        .await?
        .ok()?;
    assert_eq!(
        east.get("/v1/apps/data/web").await?.ok()?.body["data"]["data"]["port"],
        8080
    );
    assert_eq!(
        west.get("/v1/apps/data/web").await?.ok()?.body["data"]["data"]["port"],
        8080
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_primary_forwarded_writes_fail_fast_and_reads_go_on() -> anyhow::Result<()> {
    let mut pair = VaultPair::start(&[]).await?;
    let east = pair.east_root();
    east.post("/v1/secret/data/kept", json!({ "data": { "n": 1 } }))
        .await?
        .ok()?;

    // The primary's sidecar is up but its server is not.
    pair.west_vault.kill();
    let started = Instant::now();
    let r = east
        .post("/v1/secret/data/kept", json!({ "data": { "n": 2 } }))
        .await?;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.error().contains("primary"), "{}", r.error());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The primary's sidecar is gone too.
    pair.west.sidecar.kill();
    let started = Instant::now();
    let r = east
        .post("/v1/secret/data/kept", json!({ "data": { "n": 3 } }))
        .await?;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(
        r.error()
            .contains("error forwarding the request to the primary"),
        "{}",
        r.error()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let read = east.get("/v1/secret/data/kept").await?.ok()?;
    assert_eq!(
        read.body["data"]["data"]["n"], 1,
        "reads are served locally"
    );
    // Local writes (tokens) go on too.
    east.post("/v1/auth/token/create", json!({ "ttl": "10m" }))
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_that_has_not_arrived_in_2s_is_answered_with_a_warning()
-> anyhow::Result<()> {
    // East applies each streamed batch 4 s late.
    let pair = VaultPair::start(&["--debug-apply-delay-ms=4000"]).await?;
    let east = pair.east_root();
    let started = Instant::now();
    let r = east
        .post("/v1/secret/data/slow", json!({ "data": { "n": 1 } }))
        .await?
        .ok()?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "held for {took:?}"
    );
    assert_eq!(r.body["data"]["version"], 1, "the primary's response");
    let warning = r.body["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("may not be visible here yet"),
        "{:?}",
        r.body
    );
    let index = r.header("x-vault-index").expect("X-Vault-Index").to_owned();
    // Until it arrives, that state is not present here; then it is.
    let early = east
        .with_header("x-vault-index", &index)
        .get("/v1/secret/data/slow")
        .await?;
    assert_eq!(early.status, 412);
    ferry_tests::wait_for("the write to arrive", Duration::from_secs(30), || {
        let api = east.with_header("x-vault-index", &index);
        async move { (api.get("/v1/secret/data/slow").await.ok()?.status == 200).then_some(()) }
    })
    .await?;
    Ok(())
}
