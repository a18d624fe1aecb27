//! The authorization matrix: every route family (KV, transit, tokens, policies, mounts,
//! replication, forwarding) asked by five callers (no token, a token of the other cluster, a
//! list-only token, a read-only token and a root token) on a primary and on its secondary. The
//! expected outcome of every cell is written in one table, [`table::MATRIX`], as Vault answers;
//! every cell runs, and the test fails listing every cell that answered otherwise.
//!
//! The list-only and read-only policies grant their one capability on every path a row asks,
//! so that an outcome follows from the capability, never from a missing rule. Tokens are local
//! to their cluster: each cluster's callers hold tokens its own root minted, and "other cluster"
//! is the other region's root token, valid one replication link away. A write on the secondary
//! is forwarded to the primary with the caller's identity, so each secondary row that writes
//! must answer as its primary twin does; a read there is served locally (the primary refuses
//! forwarded reads: `forwarding_reads_refused`).
//!
//! The sidecar's sockets have no tokens: [`the_sidecars_sockets_are_private_and_nothing_else_listens`]
//! checks who may open them and that no TCP listener serves the admin API.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use ferry_tests::http::{JsonClient, JsonResponse};
use ferry_tests::process::tcp_listening_ports;
use ferry_tests::vault::{EAST_ROOT_TOKEN, VaultPair, VaultServer, WEST_ROOT_TOKEN};
use ferry_tests::wait_for;
use serde_json::{Value, json};

/// What a cell answered, by status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 2xx.
    Ok,
    /// 400.
    BadRequest,
    /// 403.
    Denied,
    /// 404.
    NotFound,
    /// 405.
    Unsupported,
    /// Anything else: never expected.
    Other(u16),
}

impl Outcome {
    fn of(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            400 => Self::BadRequest,
            403 => Self::Denied,
            404 => Self::NotFound,
            405 => Self::Unsupported,
            other => Self::Other(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cluster {
    Primary,
    Secondary,
}

/// The callers, in the order of each row's outcomes.
const CALLERS: [&str; 5] = ["none", "other", "list", "read", "root"];

/// One request and what each caller gets: family, cluster, method, path, body (JSON text, `""`
/// for none) and the outcomes for [`CALLERS`]. In paths and bodies, `{cluster}` is the
/// cluster's name (`west`, `east`), `{caller}` the caller's, `{victim}` a token of the cluster
/// and `{ciphertext}` a ciphertext of the transit key `matrix`.
type Row = (
    &'static str,
    Cluster,
    &'static str,
    &'static str,
    &'static str,
    [Outcome; 5],
);

/// A row whose expectation is Vault's and where ferry-vault answers otherwise: cluster, method
/// and path of the row, what ferry-vault answers, and why. The test holds ferry-vault to these
/// answers (a change is a failure either way) and fails once a row matches Vault, so that the
/// entry is removed.
type KnownDifference = (
    Cluster,
    &'static str,
    &'static str,
    [Outcome; 5],
    &'static str,
);

mod table {
    // `Ok` below is the outcome, not `Result::Ok`.
    use super::Cluster::{Primary as P, Secondary as S};
    use super::Outcome::*;
    use super::{KnownDifference, Row};

    const BY_CALLER: &str = r#"{"data": {"by": "{caller}"}}"#;
    const ENCRYPT: &str = r#"{"plaintext": "bWF0cml4"}"#;
    const DECRYPT: &str = r#"{"ciphertext": "{ciphertext}"}"#;
    const NEW_TOKEN: &str = r#"{"policies": ["matrix-read"], "ttl": "10m"}"#;
    const VICTIM: &str = r#"{"token": "{victim}"}"#;
    const NO_SUCH_TOKEN: &str = r#"{"token": "hvs.matrix-no-such-token"}"#;
    const POLICY: &str = r#"{"policy": "path \"matrix/*\" { capabilities = [\"read\"] }"}"#;
    const KV_MOUNT: &str = r#"{"type": "kv-v2"}"#;
    const TUNE: &str = r#"{"description": "tuned by {caller}"}"#;
    const SECONDARY_ID: &str = r#"{"id": "matrix-{cluster}"}"#;

    #[rustfmt::skip]
    pub const MATRIX: &[Row] = &[
        // family       on  method    path                                             body           none    other   list         read         root
        ("kv",          P, "GET",    "/v1/secret/data/matrix",                         "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("kv",          S, "GET",    "/v1/secret/data/matrix",                         "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("kv",          P, "POST",   "/v1/secret/data/matrix-{cluster}",               BY_CALLER,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          S, "POST",   "/v1/secret/data/matrix-{cluster}",               BY_CALLER,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          P, "LIST",   "/v1/secret/metadata/",                           "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("kv",          S, "LIST",   "/v1/secret/metadata/",                           "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("kv",          P, "GET",    "/v1/secret/metadata?list=true",                  "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("kv",          S, "GET",    "/v1/secret/metadata?list=true",                  "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("kv",          P, "GET",    "/v1/secret/metadata/matrix",                     "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("kv",          S, "GET",    "/v1/secret/metadata/matrix",                     "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("kv",          P, "DELETE", "/v1/secret/data/matrix-victim-{cluster}",        "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          S, "DELETE", "/v1/secret/data/matrix-victim-{cluster}",        "",            [Denied, Denied, Denied,      Denied,      Ok]),
        // `?list=true` lists on GET only (KV v2 lists nothing under `data/`); on POST and
        // DELETE it means nothing and the write or delete needs its own capability.
        ("kv",          P, "GET",    "/v1/secret/data/matrix?list=true",               "",            [Denied, Denied, Unsupported, Denied,      Unsupported]),
        ("kv",          S, "GET",    "/v1/secret/data/matrix?list=true",               "",            [Denied, Denied, Unsupported, Denied,      Unsupported]),
        ("kv",          P, "POST",   "/v1/secret/data/matrix-{cluster}-q?list=true",   BY_CALLER,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          S, "POST",   "/v1/secret/data/matrix-{cluster}-q?list=true",   BY_CALLER,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          P, "DELETE", "/v1/secret/data/matrix-victim2-{cluster}?list=true", "",        [Denied, Denied, Denied,      Denied,      Ok]),
        ("kv",          S, "DELETE", "/v1/secret/data/matrix-victim2-{cluster}?list=true", "",        [Denied, Denied, Denied,      Denied,      Ok]),

        ("transit",     P, "POST",   "/v1/transit/keys/matrix-{cluster}",              "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     S, "POST",   "/v1/transit/keys/matrix-{cluster}",              "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     P, "POST",   "/v1/transit/encrypt/matrix",                     ENCRYPT,       [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     S, "POST",   "/v1/transit/encrypt/matrix",                     ENCRYPT,       [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     P, "POST",   "/v1/transit/decrypt/matrix",                     DECRYPT,       [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     S, "POST",   "/v1/transit/decrypt/matrix",                     DECRYPT,       [Denied, Denied, Denied,      Denied,      Ok]),
        ("transit",     P, "GET",    "/v1/transit/keys/matrix",                        "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("transit",     S, "GET",    "/v1/transit/keys/matrix",                        "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("transit",     P, "LIST",   "/v1/transit/keys",                               "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("transit",     S, "LIST",   "/v1/transit/keys",                               "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("transit",     P, "GET",    "/v1/transit/keys?list=true",                     "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("transit",     S, "GET",    "/v1/transit/keys?list=true",                     "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("transit",     P, "LIST",   "/v1/transit/keys/",                              "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("transit",     S, "LIST",   "/v1/transit/keys/",                              "",            [Denied, Denied, Ok,          Denied,      Ok]),
        // A trailing slash names another path, which no handler serves.
        ("transit",     P, "GET",    "/v1/transit/keys/matrix/",                       "",            [Denied, Denied, Denied,      NotFound,    NotFound]),
        ("transit",     S, "GET",    "/v1/transit/keys/matrix/",                       "",            [Denied, Denied, Denied,      NotFound,    NotFound]),
        ("transit",     P, "POST",   "/v1/transit/encrypt/matrix/",                    ENCRYPT,       [Denied, Denied, Denied,      Denied,      NotFound]),
        ("transit",     S, "POST",   "/v1/transit/encrypt/matrix/",                    ENCRYPT,       [Denied, Denied, Denied,      Denied,      NotFound]),
        // Keys are not deletable until their config says so (`deletion_allowed`).
        ("transit",     P, "DELETE", "/v1/transit/keys/matrix",                        "",            [Denied, Denied, Denied,      Denied,      BadRequest]),
        ("transit",     S, "DELETE", "/v1/transit/keys/matrix",                        "",            [Denied, Denied, Denied,      Denied,      BadRequest]),

        // Tokens are local: nothing here is forwarded. The default policy grants lookup-self.
        ("tokens",      P, "POST",   "/v1/auth/token/create",                          NEW_TOKEN,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      S, "POST",   "/v1/auth/token/create",                          NEW_TOKEN,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      P, "GET",    "/v1/auth/token/lookup-self",                     "",            [Denied, Denied, Ok,          Ok,          Ok]),
        ("tokens",      S, "GET",    "/v1/auth/token/lookup-self",                     "",            [Denied, Denied, Ok,          Ok,          Ok]),
        // A list of `lookup-self/` is decided by the default policy's exact rule on
        // `lookup-self` (read), before any glob: Vault's ACL does the same.
        ("tokens",      P, "GET",    "/v1/auth/token/lookup-self?list=true",           "",            [Denied, Denied, Denied,      Denied,      NotFound]),
        ("tokens",      S, "GET",    "/v1/auth/token/lookup-self?list=true",           "",            [Denied, Denied, Denied,      Denied,      NotFound]),
        ("tokens",      P, "POST",   "/v1/auth/token/lookup",                          VICTIM,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      S, "POST",   "/v1/auth/token/lookup",                          VICTIM,        [Denied, Denied, Denied,      Denied,      Ok]),
        // A GET takes its parameters from the query; without a token, a lookup is of the
        // caller's own; an unknown token is refused as a permission (Vault's "bad token").
        ("tokens",      P, "GET",    "/v1/auth/token/lookup?token={victim}",           "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("tokens",      S, "GET",    "/v1/auth/token/lookup?token={victim}",           "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("tokens",      P, "GET",    "/v1/auth/token/lookup",                          "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("tokens",      S, "GET",    "/v1/auth/token/lookup",                          "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("tokens",      P, "POST",   "/v1/auth/token/lookup",                          "{}",          [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      S, "POST",   "/v1/auth/token/lookup",                          "{}",          [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      P, "POST",   "/v1/auth/token/lookup",                          NO_SUCH_TOKEN, [Denied, Denied, Denied,      Denied,      Denied]),
        ("tokens",      S, "POST",   "/v1/auth/token/lookup",                          NO_SUCH_TOKEN, [Denied, Denied, Denied,      Denied,      Denied]),
        ("tokens",      P, "POST",   "/v1/auth/token/revoke",                          NO_SUCH_TOKEN, [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      S, "POST",   "/v1/auth/token/revoke",                          NO_SUCH_TOKEN, [Denied, Denied, Denied,      Denied,      Ok]),
        // Listing accessors needs sudo besides list.
        ("tokens",      P, "LIST",   "/v1/auth/token/accessors",                       "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("tokens",      S, "LIST",   "/v1/auth/token/accessors",                       "",            [Denied, Denied, Denied,      Denied,      Ok]),

        ("policies",    P, "GET",    "/v1/sys/policies/acl/matrix-read",               "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("policies",    S, "GET",    "/v1/sys/policies/acl/matrix-read",               "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("policies",    P, "POST",   "/v1/sys/policies/acl/matrix-{cluster}",          POLICY,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    S, "POST",   "/v1/sys/policies/acl/matrix-{cluster}",          POLICY,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    P, "LIST",   "/v1/sys/policies/acl",                           "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("policies",    S, "LIST",   "/v1/sys/policies/acl",                           "",            [Denied, Denied, Ok,          Denied,      Ok]),
        // Policies are listed by a list only.
        ("policies",    P, "GET",    "/v1/sys/policies/acl",                           "",            [Denied, Denied, Denied,      Unsupported, Unsupported]),
        ("policies",    S, "GET",    "/v1/sys/policies/acl",                           "",            [Denied, Denied, Denied,      Unsupported, Unsupported]),
        ("policies",    P, "DELETE", "/v1/sys/policies/acl/matrix-{cluster}",          "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    S, "DELETE", "/v1/sys/policies/acl/matrix-{cluster}",          "",            [Denied, Denied, Denied,      Denied,      Ok]),
        // Vault's older path for the same policies: a GET of the directory lists too (a read
        // of `sys/policy`, which no rule of the callers' names).
        ("policies",    P, "GET",    "/v1/sys/policy/matrix-read",                     "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("policies",    S, "GET",    "/v1/sys/policy/matrix-read",                     "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("policies",    P, "LIST",   "/v1/sys/policy",                                 "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("policies",    S, "LIST",   "/v1/sys/policy",                                 "",            [Denied, Denied, Ok,          Denied,      Ok]),
        ("policies",    P, "GET",    "/v1/sys/policy",                                 "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    S, "GET",    "/v1/sys/policy",                                 "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    P, "POST",   "/v1/sys/policy/matrix-legacy-{cluster}",         POLICY,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    S, "POST",   "/v1/sys/policy/matrix-legacy-{cluster}",         POLICY,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    P, "DELETE", "/v1/sys/policy/matrix-legacy-{cluster}",         "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("policies",    S, "DELETE", "/v1/sys/policy/matrix-legacy-{cluster}",         "",            [Denied, Denied, Denied,      Denied,      Ok]),

        ("mounts",      P, "GET",    "/v1/sys/mounts",                                 "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      S, "GET",    "/v1/sys/mounts",                                 "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      P, "GET",    "/v1/sys/mounts/secret",                          "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      S, "GET",    "/v1/sys/mounts/secret",                          "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      P, "POST",   "/v1/sys/mounts/matrix-{cluster}",                KV_MOUNT,      [Denied, Denied, Denied,      Denied,      Ok]),
        ("mounts",      S, "POST",   "/v1/sys/mounts/matrix-{cluster}",                KV_MOUNT,      [Denied, Denied, Denied,      Denied,      Ok]),
        ("mounts",      P, "POST",   "/v1/sys/mounts/matrix-{cluster}/tune",           TUNE,          [Denied, Denied, Denied,      Denied,      Ok]),
        ("mounts",      S, "POST",   "/v1/sys/mounts/matrix-{cluster}/tune",           TUNE,          [Denied, Denied, Denied,      Denied,      Ok]),
        ("mounts",      P, "GET",    "/v1/sys/mounts/matrix-{cluster}/tune",           "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      S, "GET",    "/v1/sys/mounts/matrix-{cluster}/tune",           "",            [Denied, Denied, Denied,      Ok,          Ok]),
        ("mounts",      P, "DELETE", "/v1/sys/mounts/matrix-{cluster}",                "",            [Denied, Denied, Denied,      Denied,      Ok]),
        ("mounts",      S, "DELETE", "/v1/sys/mounts/matrix-{cluster}",                "",            [Denied, Denied, Denied,      Denied,      Ok]),

        // The status reads are unauthenticated; everything else needs sudo (Vault documents it
        // for secondary-token; ferry-vault asks it of every other call, the list and read
        // tokens have neither), and the sidecar refuses a role's call on the other role.
        ("replication", P, "GET",    "/v1/sys/replication/status",                     "",            [Ok,     Ok,     Ok,          Ok,          Ok]),
        ("replication", S, "GET",    "/v1/sys/replication/status",                     "",            [Ok,     Ok,     Ok,          Ok,          Ok]),
        ("replication", P, "GET",    "/v1/sys/replication/performance/status",         "",            [Ok,     Ok,     Ok,          Ok,          Ok]),
        ("replication", S, "GET",    "/v1/sys/replication/performance/status",         "",            [Ok,     Ok,     Ok,          Ok,          Ok]),
        ("replication", P, "POST",   "/v1/sys/replication/performance/primary/secondary-token", SECONDARY_ID, [Denied, Denied, Denied,      Denied,      Ok]),
        ("replication", S, "POST",   "/v1/sys/replication/performance/primary/secondary-token", SECONDARY_ID, [Denied, Denied, Denied,      Denied,      BadRequest]),
        ("replication", P, "POST",   "/v1/sys/replication/performance/secondary/promote", "",           [Denied, Denied, Denied,      Denied,      BadRequest]),

        // Writes on the secondary go to the primary with the caller's identity (every write
        // above on S too); reads and encryption are served where they are asked.
        ("forwarding",  S, "POST",   "/v1/secret/data/matrix-forwarded",               BY_CALLER,     [Denied, Denied, Denied,      Denied,      Ok]),
        ("forwarding",  S, "POST",   "/v1/sys/policies/acl/matrix-forwarded",          POLICY,        [Denied, Denied, Denied,      Denied,      Ok]),
        ("forwarding",  S, "GET",    "/v1/secret/data/matrix",                         "",            [Denied, Denied, Denied,      Ok,          Ok]),
    ];

    /// None at present: every row answers as Vault.
    pub const KNOWN_DIFFERENCES: &[KnownDifference] = &[];
}

/// Every path prefix a row asks, for the list-only and read-only policies.
const POLICY_PATHS: [&str; 9] = [
    "secret/*",
    "transit/*",
    "auth/token/*",
    "sys/policies/acl",
    "sys/policies/acl/*",
    "sys/policy/*",
    "sys/mounts",
    "sys/mounts/*",
    "sys/replication/*",
];

/// A policy granting `capability` alone on every path of [`POLICY_PATHS`].
fn policy_granting(capability: &str) -> String {
    POLICY_PATHS
        .iter()
        .map(|p| format!("path \"{p}\" {{ capabilities = [\"{capability}\"] }}\n"))
        .collect()
}

/// One cluster's callers and the values its rows substitute.
struct Callers {
    name: &'static str,
    /// In the order of [`CALLERS`].
    apis: [JsonClient; 5],
    victim: String,
}

/// A token of `policy` minted by `root` (its cluster's), with one hour to live.
async fn mint(root: &JsonClient, policies: &[&str]) -> anyhow::Result<String> {
    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": policies, "ttl": "1h" }),
        )
        .await?
        .ok()?;
    Ok(created.body["auth"]["client_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no client_token in {}", created.body))?
        .to_owned())
}

async fn callers(
    name: &'static str,
    vault: &VaultServer,
    root_token: &str,
    other_root_token: &str,
) -> anyhow::Result<Callers> {
    let root = vault.api.with_token(root_token);
    let list = mint(&root, &["matrix-list"]).await?;
    let read = mint(&root, &["matrix-read"]).await?;
    let victim = mint(&root, &["default"]).await?;
    Ok(Callers {
        name,
        apis: [
            vault.api.clone(),
            vault.api.with_token(other_root_token),
            vault.api.with_token(&list),
            vault.api.with_token(&read),
            root,
        ],
        victim,
    })
}

/// Sends `method path` with `body` (JSON text; none when empty).
async fn send(
    api: &JsonClient,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<JsonResponse> {
    if body.is_empty() {
        return api.send(method, path).await;
    }
    let body: Value = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("the table's body {body:?} is not JSON: {e}"))?;
    anyhow::ensure!(
        method == "POST",
        "a body is sent with POST only, not {method}"
    );
    api.post(path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_family_answers_each_caller_as_the_table_says() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let west = pair.west_root();

    // Everything the rows read, written on the primary, and on the secondary once the last
    // write has arrived there (the WAL is applied in order).
    for (name, capability) in [("matrix-list", "list"), ("matrix-read", "read")] {
        west.post(
            &format!("/v1/sys/policies/acl/{name}"),
            json!({ "policy": policy_granting(capability) }),
        )
        .await?
        .ok()?;
    }
    for path in [
        "matrix",
        "matrix-victim-west",
        "matrix-victim-east",
        "matrix-victim2-west",
        "matrix-victim2-east",
    ] {
        west.post(
            &format!("/v1/secret/data/{path}"),
            json!({ "data": { "v": path } }),
        )
        .await?
        .ok()?;
    }
    west.post("/v1/transit/keys/matrix", json!({}))
        .await?
        .ok()?;
    let encrypted = west
        .post(
            "/v1/transit/encrypt/matrix",
            json!({ "plaintext": "bWF0cml4" }),
        )
        .await?
        .ok()?;
    let ciphertext = encrypted.body["data"]["ciphertext"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no ciphertext in {}", encrypted.body))?
        .to_owned();
    west.post("/v1/secret/data/matrix-ready", json!({ "data": {} }))
        .await?
        .ok()?;
    let east = pair.east_root();
    wait_for(
        "the secondary to hold the matrix's data",
        ferry_tests::region::REPLICATION_TIMEOUT,
        || {
            let east = east.clone();
            async move {
                let r = east.get("/v1/secret/data/matrix-ready").await.ok()?;
                (r.status == 200).then_some(())
            }
        },
    )
    .await?;

    let west_callers = callers("west", &pair.west_vault, WEST_ROOT_TOKEN, EAST_ROOT_TOKEN).await?;
    let east_callers = callers("east", &pair.east_vault, EAST_ROOT_TOKEN, WEST_ROOT_TOKEN).await?;

    let mut mismatches = Vec::new();
    let mut known_seen = Vec::new();
    for &(family, on, method, path, body, vault_expects) in table::MATRIX {
        let cluster = match on {
            Cluster::Primary => &west_callers,
            Cluster::Secondary => &east_callers,
        };
        let known = table::KNOWN_DIFFERENCES
            .iter()
            .find(|(c, m, p, _, _)| *c == on && *m == method && *p == path);
        let expected = known.map_or(vault_expects, |k| k.3);
        let fill = |text: &str, caller: &str| {
            text.replace("{cluster}", cluster.name)
                .replace("{caller}", caller)
                .replace("{victim}", &cluster.victim)
                .replace("{ciphertext}", &ciphertext)
        };
        let mut answered = [Outcome::Other(0); 5];
        for (i, caller) in CALLERS.iter().enumerate() {
            let (path, body) = (fill(path, caller), fill(body, caller));
            let response = send(&cluster.apis[i], method, &path, &body).await?;
            answered[i] = Outcome::of(response.status);
            let cell = format!("{family}: {method} {path} on {on:?} as {caller}");
            if answered[i] != expected[i] {
                mismatches.push(format!(
                    "{cell}: expected {:?}, got {} {}",
                    expected[i], response.status, response.body
                ));
            }
            // A write the secondary forwarded says which replicated state it produced.
            if family == "forwarding"
                && method == "POST"
                && answered[i] == Outcome::Ok
                && response.header("x-vault-index").is_none()
            {
                mismatches.push(format!("{cell}: a forwarded write without X-Vault-Index"));
            }
        }
        if let Some((_, _, _, _, why)) = known {
            if answered == vault_expects {
                mismatches.push(format!(
                    "{family}: {method} {path} on {on:?} now answers as Vault: drop it from \
                     KNOWN_DIFFERENCES ({why})"
                ));
            } else {
                known_seen.push(format!("{method} {path} on {on:?}: {why}"));
            }
        }
    }

    // What the forwarded writes did on the primary: only root's landed, once each; root's
    // deletes through the secondary deleted there.
    for path in [
        "matrix-west",
        "matrix-east",
        "matrix-west-q",
        "matrix-east-q",
        "matrix-forwarded",
    ] {
        let r = west.get(&format!("/v1/secret/data/{path}")).await?;
        let data = &r.body["data"];
        if r.status != 200 || data["data"]["by"] != "root" || data["metadata"]["version"] != 1 {
            mismatches.push(format!(
                "secret/data/{path} on the primary: expected root's write alone, got {} {}",
                r.status, r.body
            ));
        }
    }
    for path in [
        "matrix-victim-west",
        "matrix-victim-east",
        "matrix-victim2-west",
        "matrix-victim2-east",
    ] {
        let r = west.get(&format!("/v1/secret/data/{path}")).await?;
        if r.status != 404 {
            mismatches.push(format!(
                "secret/data/{path} on the primary: expected deleted (404), got {} {}",
                r.status, r.body
            ));
        }
    }
    let policy = west.get("/v1/sys/policies/acl/matrix-forwarded").await?;
    if policy.status != 200 {
        mismatches.push(format!(
            "the policy written through the secondary is not on the primary: {} {}",
            policy.status, policy.body
        ));
    }

    for k in &known_seen {
        eprintln!("known difference from Vault: {k}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of the matrix's cells answered otherwise:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}

/// The mode bits of `path`, its owner and whether it is a socket.
fn stat(path: &Path) -> anyhow::Result<(u32, u32, bool)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("failed to stat {}: {e}", path.display()))?;
    Ok((
        meta.permissions().mode() & 0o7777,
        meta.uid(),
        meta.file_type().is_socket(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_sockets_are_private_and_nothing_else_listens() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    // This process's user, who started every process here.
    let me = std::fs::metadata("/proc/self")?.uid();
    let mut problems = Vec::new();
    for (region, vault) in [
        (&pair.west, &pair.west_vault),
        (&pair.east, &pair.east_vault),
    ] {
        let storage = region.sidecar.socket();
        // Each socket, and whether its directory is private (0700) or only closed to writes by
        // others. The storage socket's directory, which ferry-vault's forward socket shares, is
        // the deployment's; both sockets are bound 0600 from the start (staged in a private
        // directory and renamed into place, `ferry_proto::bind_private_unix`).
        for (socket, private_directory) in [
            (storage.clone(), false),
            (region.sidecar.api_socket(), true),
            (ferry_proto::forward_socket(&storage), false),
        ] {
            let (mode, owner, is_socket) = stat(&socket)?;
            if !is_socket || mode & 0o177 != 0 || owner != me {
                problems.push(format!(
                    "{}: {}: socket {is_socket}, mode {mode:o}, owner {owner} (expected a socket, \
                     0600 or stricter, owner {me})",
                    region.name,
                    socket.display()
                ));
            }
            let dir = socket.parent().expect("a socket's directory");
            let (mode, owner, _) = stat(dir)?;
            let closed = if private_directory {
                mode & 0o7777 == 0o700
            } else {
                mode & 0o022 == 0
            };
            if !closed || owner != me {
                problems.push(format!(
                    "{}: {}: mode {mode:o}, owner {owner} (expected {}, owner {me})",
                    region.name,
                    dir.display(),
                    if private_directory {
                        "0700"
                    } else {
                        "no write by others"
                    }
                ));
            }
        }
        // The admin API answers its owner on the socket...
        region.status().await?;
        // ... and on no TCP port: the sidecar listens on its cluster port alone (the admin
        // API was once on 127.0.0.1:8202), ferry-vault on its API port alone.
        for (process, pid, expected) in [
            ("ferry-sidecar", region.sidecar.pid(), region.cluster_port),
            ("ferry-vault", vault.pid(), vault.port()),
        ] {
            let pid = pid.ok_or_else(|| anyhow::anyhow!("{process} is not running"))?;
            let ports = tcp_listening_ports(pid)?;
            if ports != BTreeSet::from([expected]) {
                problems.push(format!(
                    "{}: {process} listens on TCP ports {ports:?}, expected only {expected}",
                    region.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
