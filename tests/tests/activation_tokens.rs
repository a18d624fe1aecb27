//! Activation tokens: each kind of bad token gets a 400 saying which, and leaves the secondary
//! exactly as it was.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ferry_tests::region::Region;
use serde_json::{Value, json};

async fn refused(secondary: &Region, token: &str, expected: &str) -> anyhow::Result<()> {
    let before = secondary.status().await?;
    let reply = secondary
        .call("secondary/enable", json!({ "token": token }))
        .await?;
    assert_eq!(reply.status, 400, "{expected}: {:?}", reply.body);
    assert!(
        reply.error().contains(expected),
        "expected {expected:?} in {:?}",
        reply.error()
    );
    assert_eq!(secondary.status().await?, before, "the secondary changed");
    Ok(())
}

/// `token` with its claims edited by `edit` and the original signature kept.
fn tampered(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let rest = token.strip_prefix("ferry1.").unwrap();
    let (claims, signature) = rest.split_once('.').unwrap();
    let mut claims: Value = serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
    edit(&mut claims);
    let claims = B64.encode(serde_json::to_vec(&claims).unwrap());
    format!("ferry1.{claims}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let primary = Region::start("west", &[]).await?;
    let secondary = Region::start("east", &[]).await?;
    secondary.put("logical/mine", b"kept").await?;
    primary.enable_primary().await?;

    refused(&secondary, "hello", "garbled").await?;
    refused(&secondary, "ferry1.!!!.???", "garbled").await?;

    let token = primary.token("east").await?;
    let forged = tampered(&token, |c| c["secondary_id"] = json!("someone-else"));
    refused(&secondary, &forged, "wrongly signed").await?;

    // A token that expired.
    let short = primary
        .call(
            "primary/secondary-token",
            json!({ "id": "short", "ttl": "1s" }),
        )
        .await?
        .ok()?
        .body["wrap_info"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires_at = {
        let claims = short
            .strip_prefix("ferry1.")
            .unwrap()
            .split_once('.')
            .unwrap()
            .0;
        let claims: Value = serde_json::from_slice(&B64.decode(claims)?)?;
        claims["expires_at"].as_u64().unwrap()
    };
    // Expiry is the behaviour under test: wait until the token's own deadline has passed.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        < expires_at
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    refused(&secondary, &short, "expired").await?;

    // A revoked token.
    let revoked = primary.token("gone").await?;
    primary
        .call("primary/revoke-secondary", json!({ "id": "gone" }))
        .await?
        .ok()?;
    refused(&secondary, &revoked, "revoked").await?;
    // A token replaced by a newer one for the same id.
    let old = primary.token("again").await?;
    let _new = primary.token("again").await?;
    refused(&secondary, &old, "revoked or replaced").await?;

    // The good token works once; used again (on another cluster) it is a replay.
    secondary.enable_secondary(&token).await?;
    secondary.wait_caught_up(&primary).await?;
    let third = Region::start("north", &[]).await?;
    refused(&third, &token, "already used").await?;

    // A token from another replication set is foreign to this secondary.
    let other = Region::start("south", &[]).await?;
    other.enable_primary().await?;
    let foreign = other.token("east").await?;
    let before = secondary.status().await?["cluster_id"].clone();
    let reply = secondary
        .call("secondary/update-primary", json!({ "token": foreign }))
        .await?;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert!(
        reply.error().contains("another replication cluster"),
        "{}",
        reply.error()
    );
    assert_eq!(secondary.status().await?["cluster_id"], before);

    // Role mistakes and malformed bodies are 400s too, and name the problem.
    let reply = secondary
        .call("primary/secondary-token", json!({ "id": "x" }))
        .await?;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("not an active performance primary"),
        "{}",
        reply.error()
    );
    let reply = primary
        .call("primary/secondary-token", json!({ "id": "a/b" }))
        .await?;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("may hold only"), "{}", reply.error());
    let reply = primary
        .call(
            "primary/secondary-token",
            json!({ "id": "x", "ttl": "soon" }),
        )
        .await?;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("ttl"), "{}", reply.error());
    let reply = primary
        .api
        .post_raw(
            "/v1/sys/replication/performance/primary/secondary-token",
            b"{not json",
        )
        .await?;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("invalid request body"),
        "{}",
        reply.error()
    );
    assert_eq!(
        secondary.get("logical/mine").await?,
        None,
        "enable wiped the secondary's replicated data"
    );
    Ok(())
}
