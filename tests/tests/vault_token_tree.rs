//! Tokens form Vault's tree: a token lives only while its parent does. Revoking a token (by
//! token, by accessor, or itself) revokes its descendants, and a parent's expiry ends its
//! children; `revoke-orphan` (which needs `sudo`) revokes one token and orphans its children.
//! An orphan is created only with `sudo` on `auth/token/create` or through `create-orphan`,
//! and a limited-use token creates no tokens at all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::VaultServer;
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.token-tree-test-root";

/// May create children (and nothing else beyond the `default` policy's self calls).
const CREATOR: &str = r#"path "auth/token/create" { capabilities = ["update"] }"#;

/// A real ferry-vault on a real sidecar and etcd, with the root token's client.
struct Server {
    vault: VaultServer,
    root: JsonClient,
    _sidecar: Sidecar,
    _etcd: EtcdServer,
}

impl Server {
    async fn start(root_key_byte: &str) -> anyhow::Result<Self> {
        let etcd = EtcdServer::start()?;
        let sidecar =
            Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
        let vault = VaultServer::start(&sidecar, &root_key_byte.repeat(32), ROOT_TOKEN).await?;
        let root = vault.api.with_token(ROOT_TOKEN);
        Ok(Self {
            vault,
            root,
            _sidecar: sidecar,
            _etcd: etcd,
        })
    }

    async fn write_policy(&self, name: &str, policy: &str) -> anyhow::Result<()> {
        self.root
            .post(
                &format!("/v1/sys/policies/acl/{name}"),
                json!({ "policy": policy }),
            )
            .await?
            .ok()?;
        Ok(())
    }

    /// The client of a token `creator` creates with `body`, and the `auth` block.
    async fn create(
        &self,
        creator: &JsonClient,
        body: Value,
    ) -> anyhow::Result<(JsonClient, Value)> {
        self.create_at(creator, "/v1/auth/token/create", body).await
    }

    async fn create_at(
        &self,
        creator: &JsonClient,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(JsonClient, Value)> {
        let created = creator.post(path, body).await?.ok()?;
        let auth = created.body["auth"].clone();
        let token = auth["client_token"].as_str().expect("a client token");
        Ok((self.vault.api.with_token(token), auth))
    }
}

/// Whether the token of `client` is accepted.
async fn alive(client: &JsonClient) -> anyhow::Result<bool> {
    let me = client.get("/v1/auth/token/lookup-self").await?;
    anyhow::ensure!(
        me.status == 200 || me.status == 403,
        "lookup-self: HTTP {}: {}",
        me.status,
        me.body
    );
    Ok(me.status == 200)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_revokes_its_descendants() -> anyhow::Result<()> {
    let server = Server::start("a1").await?;
    server.write_policy("creator", CREATOR).await?;
    let creator = json!({ "policies": ["creator"], "ttl": "1h" });
    let root = &server.root;

    // By token: the child and the grandchild go with the parent; a sibling stays.
    let (parent, parent_auth) = server.create(root, creator.clone()).await?;
    let (child, child_auth) = server.create(&parent, creator.clone()).await?;
    let (grandchild, _) = server.create(&child, creator.clone()).await?;
    let (sibling, _) = server.create(root, creator.clone()).await?;
    assert_eq!(child_auth["orphan"], false);
    root.post(
        "/v1/auth/token/revoke",
        json!({ "token": parent_auth["client_token"] }),
    )
    .await?
    .ok()?;
    assert!(!alive(&parent).await?);
    assert!(!alive(&child).await?, "a child outlived its revoked parent");
    assert!(
        !alive(&grandchild).await?,
        "a grandchild outlived its revoked grandparent"
    );
    assert!(
        alive(&sibling).await?,
        "revoking a token revoked its sibling"
    );
    // Its accessor went with it.
    let by_accessor = root
        .post(
            "/v1/auth/token/lookup-accessor",
            json!({ "accessor": child_auth["accessor"] }),
        )
        .await?;
    assert_eq!(by_accessor.status, 400, "{:?}", by_accessor.body);

    // By accessor.
    let (parent, parent_auth) = server.create(root, creator.clone()).await?;
    let (child, _) = server.create(&parent, creator.clone()).await?;
    root.post(
        "/v1/auth/token/revoke-accessor",
        json!({ "accessor": parent_auth["accessor"] }),
    )
    .await?
    .ok()?;
    assert!(
        !alive(&child).await?,
        "a child outlived revoke-accessor of its parent"
    );

    // Itself.
    let (parent, _) = server.create(root, creator.clone()).await?;
    let (child, _) = server.create(&parent, creator).await?;
    parent
        .post("/v1/auth/token/revoke-self", json!({}))
        .await?
        .ok()?;
    assert!(
        !alive(&child).await?,
        "a child outlived revoke-self of its parent"
    );
    assert!(alive(root).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_expiry_ends_its_children() -> anyhow::Result<()> {
    let server = Server::start("a2").await?;
    server.write_policy("creator", CREATOR).await?;
    let (parent, _) = server
        .create(
            &server.root,
            json!({ "policies": ["creator"], "ttl": "2s" }),
        )
        .await?;
    let deadline = now() + 2;
    // The child's own TTL is not capped by its parent's: it ends with its parent instead.
    let (child, child_auth) = server
        .create(&parent, json!({ "policies": ["creator"], "ttl": "1h" }))
        .await?;
    assert!(child_auth["lease_duration"].as_u64().unwrap() > 3500);
    assert!(alive(&child).await?);

    // Expiry is the behaviour under test: wait for the parent's own deadline.
    while now() <= deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(&child).await?, "a child outlived its expired parent");
    let lookup = server
        .root
        .post(
            "/v1/auth/token/lookup-accessor",
            json!({ "accessor": child_auth["accessor"] }),
        )
        .await?;
    assert_eq!(lookup.status, 400, "{:?}", lookup.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_orphan_needs_sudo_and_keeps_the_children_as_orphans() -> anyhow::Result<()> {
    let server = Server::start("a3").await?;
    server.write_policy("creator", CREATOR).await?;
    server
        .write_policy(
            "orphaner",
            r#"path "auth/token/revoke-orphan" { capabilities = ["update"] }"#,
        )
        .await?;
    server
        .write_policy(
            "sudo-orphaner",
            r#"path "auth/token/revoke-orphan" { capabilities = ["update", "sudo"] }"#,
        )
        .await?;
    let creator = json!({ "policies": ["creator"], "ttl": "1h" });
    let root = &server.root;
    let (parent, parent_auth) = server.create(root, creator.clone()).await?;
    let (child, child_auth) = server.create(&parent, creator.clone()).await?;
    let (grandchild, _) = server.create(&child, creator.clone()).await?;
    let revoke_parent = json!({ "token": parent_auth["client_token"] });

    // `update` alone is not enough: Vault makes it a root path.
    let (orphaner, _) = server
        .create(root, json!({ "policies": ["orphaner"], "ttl": "1h" }))
        .await?;
    let refused = orphaner
        .post("/v1/auth/token/revoke-orphan", revoke_parent.clone())
        .await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert!(alive(&parent).await?);

    let (sudo, _) = server
        .create(root, json!({ "policies": ["sudo-orphaner"], "ttl": "1h" }))
        .await?;
    sudo.post("/v1/auth/token/revoke-orphan", revoke_parent.clone())
        .await?
        .ok()?;
    assert!(!alive(&parent).await?);
    assert!(alive(&child).await?, "revoke-orphan revoked a child");
    assert!(
        alive(&grandchild).await?,
        "revoke-orphan revoked a grandchild"
    );
    let me = child.get("/v1/auth/token/lookup-self").await?.ok()?;
    assert_eq!(me.body["data"]["orphan"], true, "{:?}", me.body);
    assert_eq!(
        me.body["data"]["accessor"], child_auth["accessor"],
        "{:?}",
        me.body
    );
    // Gone is gone.
    let again = root
        .post("/v1/auth/token/revoke-orphan", revoke_parent)
        .await?;
    assert_eq!(again.status, 400, "{:?}", again.body);
    assert_eq!(again.error(), "token to revoke not found");

    // The orphan still heads its own tree.
    child
        .post("/v1/auth/token/revoke-self", json!({}))
        .await?
        .ok()?;
    assert!(!alive(&grandchild).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_need_sudo_or_create_orphan() -> anyhow::Result<()> {
    let server = Server::start("a4").await?;
    server.write_policy("creator", CREATOR).await?;
    server
        .write_policy(
            "sudo-creator",
            r#"path "auth/token/create" { capabilities = ["update", "sudo"] }"#,
        )
        .await?;
    server
        .write_policy(
            "orphan-creator",
            r#"path "auth/token/create-orphan" { capabilities = ["update"] }"#,
        )
        .await?;
    let root = &server.root;

    // Without sudo, `no_parent` is refused as Vault refuses it.
    let (creator, _) = server
        .create(root, json!({ "policies": ["creator"], "ttl": "1h" }))
        .await?;
    let refused = creator
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["creator"], "no_parent": true }),
        )
        .await?;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(
        refused.error(),
        "root or sudo privileges required to create orphan token"
    );
    // Nor may it use create-orphan without a grant on that path.
    let no_grant = creator
        .post(
            "/v1/auth/token/create-orphan",
            json!({ "policies": ["creator"] }),
        )
        .await?;
    assert_eq!(no_grant.status, 403, "{:?}", no_grant.body);

    // With sudo on auth/token/create, it may.
    let (sudo, sudo_auth) = server
        .create(root, json!({ "policies": ["sudo-creator"], "ttl": "1h" }))
        .await?;
    let (sudo_orphan, auth) = server
        .create(
            &sudo,
            json!({ "policies": ["sudo-creator"], "no_parent": true }),
        )
        .await?;
    assert_eq!(auth["orphan"], true, "{auth}");

    // create-orphan needs only its own path.
    let (maker, maker_auth) = server
        .create(root, json!({ "policies": ["orphan-creator"], "ttl": "1h" }))
        .await?;
    let (made, auth) = server
        .create_at(
            &maker,
            "/v1/auth/token/create-orphan",
            json!({ "policies": ["orphan-creator"] }),
        )
        .await?;
    assert_eq!(auth["orphan"], true, "{auth}");
    let me = made.get("/v1/auth/token/lookup-self").await?.ok()?;
    assert_eq!(me.body["data"]["orphan"], true);
    assert_eq!(me.body["data"]["path"], "auth/token/create-orphan");

    // Orphans outlive their creators.
    for creator in [&sudo_auth, &maker_auth] {
        root.post(
            "/v1/auth/token/revoke",
            json!({ "token": creator["client_token"] }),
        )
        .await?
        .ok()?;
    }
    assert!(
        alive(&sudo_orphan).await?,
        "an orphan died with its creator"
    );
    assert!(alive(&made).await?, "an orphan died with its creator");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_use_tokens_create_no_tokens() -> anyhow::Result<()> {
    let server = Server::start("a5").await?;
    server.write_policy("creator", CREATOR).await?;
    let (limited, _) = server
        .create(
            &server.root,
            json!({ "policies": ["creator"], "ttl": "1h", "num_uses": 5 }),
        )
        .await?;
    for body in [
        json!({ "policies": ["creator"] }),
        json!({ "policies": ["creator"], "num_uses": 1 }),
    ] {
        let refused = limited.post("/v1/auth/token/create", body).await?;
        assert_eq!(refused.status, 400, "{:?}", refused.body);
        assert_eq!(
            refused.error(),
            "restricted use token cannot generate child tokens"
        );
    }
    // The same policy on an unlimited token creates.
    let (unlimited, _) = server
        .create(
            &server.root,
            json!({ "policies": ["creator"], "ttl": "1h" }),
        )
        .await?;
    server
        .create(&unlimited, json!({ "policies": ["creator"] }))
        .await?;
    Ok(())
}
