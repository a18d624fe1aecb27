//! Differential API tests: one corpus of requests sent to a real OpenBao server, a ferry-vault
//! primary and its ferry-vault secondary, their answers compared by status code and by the
//! shape of the JSON (keys and value types at every pointer; see `ferry_tests::json_shape`),
//! then the same for hvac's own calls (`tests/py/differential_hvac.py`).
//!
//! OpenBao is the reference. Every difference is either fixed in ferry-vault or listed in
//! [`KNOWN_DIFFERENCES`] with its reason; the test fails on a difference that is not listed and
//! on a listed one that no longer occurs. The secondary must answer as the primary does (reads
//! served locally, writes forwarded): a difference between the two is never listed.
//!
//! Setup, not compared: OpenBao gets the mounts ferry-vault starts with (KV version 2 at
//! `secret/`, transit at `transit/`). The primary and the secondary share their replicated
//! data, so each server gets a namespace, a string in the names of what the corpus creates
//! (`{ns}` in a case), and each server's answers are read with the other servers' objects left
//! out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_tests::http::{JsonClient, JsonResponse};
use ferry_tests::json_shape::{Namespaces, Shape};
use ferry_tests::openbao::OpenBao;
use ferry_tests::vault::{EAST_ROOT_TOKEN, VaultPair, WEST_ROOT_TOKEN};
use serde_json::{Value, json};

/// The servers compared, in the order of every table: the reference first.
const SERVERS: [&str; 3] = ["openbao", "primary", "secondary"];
/// Each server's namespace, by the order of [`SERVERS`].
const NAMESPACES: [&str; 3] = ["dfo-", "dfp-", "dfs-"];

/// Differences from OpenBao that stay, each with its reason. A row lists cases (a corpus case's
/// name, `hvac: <call>` for hvac's, or `*` for every case) and pointers: `status` (the HTTP
/// status), `outcome` (hvac's result: `ok` or the exception's class) or a JSON pointer into the
/// answer, which also covers what lies below it (`""`: the whole body). Every case and every
/// pointer of a row must still differ somewhere, or the row is stale.
struct Known {
    cases: &'static [&'static str],
    pointers: &'static [&'static str],
    reason: &'static str,
}

const KNOWN_DIFFERENCES: &[Known] = &[
    Known {
        cases: &["health", "health with codes", "hvac: health"],
        pointers: &[
            "/cluster_id",
            "/cluster_name",
            "/replication_performance_mode",
        ],
        reason: "sys/health asks the sidecar for the node's role only; the cluster's name, id and \
                 replication mode are in sys/replication/status (sys/health would need them in \
                 the sidecar's Leader answer)",
    },
    Known {
        cases: &["health", "health with codes", "hvac: health"],
        pointers: &["/performance_standby"],
        reason: "ferry-vault has performance standbys and says whether it is one, as Vault does; \
                 OpenBao 2.7 has none and leaves the field out",
    },
    Known {
        cases: &["seal status", "hvac: seal status"],
        pointers: &["/cluster_id", "/cluster_name", "/commit_date"],
        reason: "no cluster name or id in sys/seal-status either (see sys/health), and \
                 ferry-vault's build carries no commit date",
    },
    Known {
        cases: &[
            "health with a bad code",
            "health write",
            "acl list-only bad list value",
        ],
        pointers: &["/errors/*"],
        reason: "OpenBao's HTTP layer refuses a bad query parameter or method with an empty \
                 errors list; ferry-vault says what was wrong",
    },
    Known {
        cases: &[
            "policy read",
            "policy read with a trailing slash",
            "policy read default",
            "policy read root",
            "acl policy read",
            "legacy policy read",
            "hvac: policy read",
            "hvac: legacy policy read",
        ],
        pointers: &[
            "/data/allow_slashes_in_identity_templates",
            "/data/allow_wildcards_in_identity_templates",
            "/data/cas_required",
            "/data/modified",
            "/data/version",
            "/allow_slashes_in_identity_templates",
            "/allow_wildcards_in_identity_templates",
            "/cas_required",
            "/modified",
            "/version",
        ],
        reason: "OpenBao-only policy features (check-and-set versions of a policy, its \
                 modification time, identity template options): Vault's API has none, nor has \
                 ferry-vault",
    },
    Known {
        cases: &["*"],
        pointers: &[
            "/cubbyhole~1",
            "/identity~1",
            "/sys~1",
            "/data/cubbyhole~1",
            "/data/identity~1",
            "/data/sys~1",
        ],
        reason: "ferry-vault's mount table lists the secrets engines it serves (KV version 2, \
                 transit): it has no cubbyhole or identity engine, and sys/ is built in",
    },
    Known {
        cases: &["mounts list after enable"],
        pointers: &["/{ns}tr~1/options", "/data/{ns}tr~1/options"],
        reason: "OpenBao echoes the options a mount was enabled with ({} when the request had \
                 none, null when it sent null); ferry-vault reports its engine's options, none \
                 for transit",
    },
    Known {
        cases: &["mount above a mount"],
        // "": the whole body (OpenBao's redirect has none).
        pointers: &["status", ""],
        reason: "OpenBao's HTTP server redirects a path with a `..` segment to its cleaned form \
                 (307); ferry-vault refuses dot segments (400) rather than resolve them",
    },
    Known {
        cases: &[
            "kv read with a trailing slash",
            "acl read with a trailing slash",
        ],
        pointers: &["status"],
        reason: "OpenBao fails (500, \"could not find version data\") on a read of \
                 `<mount>/data/<path>/`; ferry-vault refuses the path (400)",
    },
];

impl Known {
    fn lists_case(&self, case: &str) -> bool {
        self.cases.iter().any(|c| *c == "*" || *c == case)
    }

    fn lists_pointer(listed: &str, pointer: &str) -> bool {
        pointer
            .strip_prefix(listed)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn lists(&self, d: &Difference) -> bool {
        self.lists_case(&d.case)
            && self
                .pointers
                .iter()
                .any(|p| Self::lists_pointer(p, &d.pointer))
    }

    /// The row's cases and pointers that no longer differ anywhere.
    fn stale(&self, differences: &[Difference]) -> Vec<String> {
        let listed: Vec<&Difference> = differences.iter().filter(|d| self.lists(d)).collect();
        let cases = self
            .cases
            .iter()
            .filter(|c| **c != "*" && !listed.iter().any(|d| d.case == **c))
            .map(|c| format!("case {c:?} ({})", self.reason));
        let pointers = self
            .pointers
            .iter()
            .filter(|p| !listed.iter().any(|d| Self::lists_pointer(p, &d.pointer)))
            .map(|p| format!("pointer {p:?} ({})", self.reason));
        cases.chain(pointers).collect()
    }
}

/// One request of the corpus. `{name}` in its path and in its body's strings is replaced by the
/// server's value of `name`: `ns` (its namespace), `root` (its root token), or what an earlier
/// case saved.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    /// The variable holding the token sent; `None`: no token.
    token: Option<&'static str>,
    /// `(variable, JSON pointer)`: strings to save from the answer for later cases.
    save: Vec<(&'static str, &'static str)>,
}

/// A case sent with the root token.
fn case(name: &'static str, method: &'static str, path: &'static str) -> Case {
    Case {
        name,
        method,
        path,
        body: None,
        token: Some("root"),
        save: Vec::new(),
    }
}

impl Case {
    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn token(mut self, variable: &'static str) -> Self {
        self.token = Some(variable);
        self
    }

    fn anonymous(mut self) -> Self {
        self.token = None;
        self
    }

    fn save(mut self, variable: &'static str, pointer: &'static str) -> Self {
        self.save.push((variable, pointer));
        self
    }
}

/// A policy document's `path` rules: `(path, capabilities)`.
fn policy(rules: &[(&str, &str)]) -> Value {
    let text: String = rules
        .iter()
        .map(|(path, caps)| format!("path \"{path}\" {{\n  capabilities = [{caps}]\n}}\n"))
        .collect();
    json!({ "policy": text })
}

fn status_cases() -> Vec<Case> {
    vec![
        case("health", "GET", "sys/health").anonymous(),
        case(
            "health with codes",
            "GET",
            "sys/health?activecode=299&standbyok=true",
        )
        .anonymous(),
        case("health with a bad code", "GET", "sys/health?activecode=abc").anonymous(),
        case("health head", "HEAD", "sys/health").anonymous(),
        case("health write", "POST", "sys/health").anonymous(),
        case("seal status", "GET", "sys/seal-status").anonymous(),
        case("init status", "GET", "sys/init").anonymous(),
    ]
}

fn mount_cases() -> Vec<Case> {
    vec![
        case("mounts list", "GET", "sys/mounts"),
        case("mount kv", "POST", "sys/mounts/{ns}kv")
            .body(json!({ "type": "kv", "options": { "version": "2" }, "description": "d" })),
        case("mount transit", "POST", "sys/mounts/{ns}tr").body(json!({ "type": "transit" })),
        case("mount an unknown type", "POST", "sys/mounts/{ns}bad")
            .body(json!({ "type": "nonsense" })),
        case("mount over a mount", "POST", "sys/mounts/{ns}kv")
            .body(json!({ "type": "kv", "options": { "version": "2" } })),
        case("mount inside a mount", "POST", "sys/mounts/{ns}kv/inner")
            .body(json!({ "type": "kv", "options": { "version": "2" } })),
        case("mount above a mount", "POST", "sys/mounts/{ns}tr/..").body(json!({ "type": "kv" })),
        case("mount at sys", "POST", "sys/mounts/sys").body(json!({ "type": "kv" })),
        case("mounts list after enable", "GET", "sys/mounts"),
        case("mount read", "GET", "sys/mounts/{ns}kv"),
        case("mount tune read", "GET", "sys/mounts/{ns}kv/tune"),
        case("mount tune", "POST", "sys/mounts/{ns}kv/tune")
            .body(json!({ "default_lease_ttl": "1h", "max_lease_ttl": "2h" })),
        case(
            "mount tune read after tune",
            "GET",
            "sys/mounts/{ns}kv/tune",
        ),
        case("mount tune of nothing", "GET", "sys/mounts/{ns}none/tune"),
        case("kv config read", "GET", "{ns}kv/config"),
        case("kv config write", "POST", "{ns}kv/config")
            .body(json!({ "max_versions": 4, "cas_required": false })),
        case("kv config read after write", "GET", "{ns}kv/config"),
        case("kv config bad", "POST", "{ns}kv/config").body(json!({ "max_versions": "x" })),
        case("transit on a new mount", "POST", "{ns}tr/keys/k").body(json!({})),
        case("unmount transit", "DELETE", "sys/mounts/{ns}tr"),
        case("unmount nothing", "DELETE", "sys/mounts/{ns}none"),
        case("read an unmounted path", "GET", "{ns}tr/keys/k"),
    ]
}

fn kv_cases() -> Vec<Case> {
    vec![
        case("kv write", "POST", "secret/data/{ns}a").body(json!({ "data": { "k": "v1" } })),
        case("kv write put", "PUT", "secret/data/{ns}a").body(json!({ "data": { "k": "v2" } })),
        case("kv read", "GET", "secret/data/{ns}a"),
        case("kv read a version", "GET", "secret/data/{ns}a?version=1"),
        case(
            "kv read a missing version",
            "GET",
            "secret/data/{ns}a?version=99",
        ),
        case(
            "kv read a bad version",
            "GET",
            "secret/data/{ns}a?version=x",
        ),
        case("kv read missing", "GET", "secret/data/{ns}missing"),
        case("kv read with a trailing slash", "GET", "secret/data/{ns}a/"),
        case("kv write without data", "POST", "secret/data/{ns}b").body(json!({ "k": "v" })),
        case("kv write non-object data", "POST", "secret/data/{ns}b")
            .body(json!({ "data": "text" })),
        case("kv write bad json", "POST", "secret/data/{ns}b").body(json!("not an object")),
        case("kv cas mismatch", "POST", "secret/data/{ns}a")
            .body(json!({ "options": { "cas": 0 }, "data": { "k": "v" } })),
        case("kv cas match", "POST", "secret/data/{ns}a")
            .body(json!({ "options": { "cas": 2 }, "data": { "k": "v3" } })),
        case("kv metadata read", "GET", "secret/metadata/{ns}a"),
        case("kv metadata write", "POST", "secret/metadata/{ns}a").body(json!({
            "max_versions": 2, "cas_required": true, "custom_metadata": { "team": "x" }
        })),
        case(
            "kv metadata read after write",
            "GET",
            "secret/metadata/{ns}a",
        ),
        case(
            "kv write without cas when required",
            "POST",
            "secret/data/{ns}a",
        )
        .body(json!({ "data": { "k": "v" } })),
        case(
            "kv write with cas when required",
            "POST",
            "secret/data/{ns}a",
        )
        .body(json!({ "options": { "cas": 3 }, "data": { "k": "v4" } })),
        case(
            "kv read a version beyond max_versions",
            "GET",
            "secret/data/{ns}a?version=1",
        ),
        case("kv delete versions", "POST", "secret/delete/{ns}a").body(json!({ "versions": [3] })),
        case(
            "kv read a deleted version",
            "GET",
            "secret/data/{ns}a?version=3",
        ),
        case("kv undelete versions", "POST", "secret/undelete/{ns}a")
            .body(json!({ "versions": [3] })),
        case(
            "kv read an undeleted version",
            "GET",
            "secret/data/{ns}a?version=3",
        ),
        case("kv destroy versions", "POST", "secret/destroy/{ns}a")
            .body(json!({ "versions": [3] })),
        case(
            "kv read a destroyed version",
            "GET",
            "secret/data/{ns}a?version=3",
        ),
        case(
            "kv undelete without versions",
            "POST",
            "secret/undelete/{ns}a",
        )
        .body(json!({})),
        case("kv delete latest", "DELETE", "secret/data/{ns}a"),
        case("kv read after delete latest", "GET", "secret/data/{ns}a"),
        case(
            "kv metadata read after deletes",
            "GET",
            "secret/metadata/{ns}a",
        ),
        case("kv list", "LIST", "secret/metadata/"),
        case("kv list with get", "GET", "secret/metadata/?list=true"),
        case("kv list nothing", "LIST", "secret/metadata/{ns}nothing/"),
        case("kv list on data", "LIST", "secret/data/"),
        case("kv metadata delete", "DELETE", "secret/metadata/{ns}a"),
        case(
            "kv metadata read after delete",
            "GET",
            "secret/metadata/{ns}a",
        ),
        case(
            "kv metadata read missing",
            "GET",
            "secret/metadata/{ns}missing",
        ),
        case("kv config read on secret", "GET", "secret/config"),
        case("kv unknown section", "GET", "secret/nothing/{ns}a"),
        case("kv write on config path", "DELETE", "secret/config"),
    ]
}

fn transit_cases() -> Vec<Case> {
    vec![
        case("transit create", "POST", "transit/keys/{ns}k").body(json!({})),
        case("transit create typed", "POST", "transit/keys/{ns}typed")
            .body(json!({ "type": "aes256-gcm96" })),
        case(
            "transit create unknown type",
            "POST",
            "transit/keys/{ns}bad",
        )
        .body(json!({ "type": "nonsense" })),
        case("transit read", "GET", "transit/keys/{ns}k"),
        case("transit read missing", "GET", "transit/keys/{ns}missing"),
        case("transit list", "LIST", "transit/keys"),
        case("transit list with get", "GET", "transit/keys?list=true"),
        case("transit encrypt", "POST", "transit/encrypt/{ns}k")
            .body(json!({ "plaintext": "aGVsbG8=" }))
            .save("ct1", "/data/ciphertext"),
        case(
            "transit encrypt bad base64",
            "POST",
            "transit/encrypt/{ns}k",
        )
        .body(json!({ "plaintext": "***" })),
        case("transit encrypt batch", "POST", "transit/encrypt/{ns}k").body(json!({
            "batch_input": [{ "plaintext": "aGVsbG8=" }, { "plaintext": "d29ybGQ=" }]
        })),
        case(
            "transit encrypt creates a key",
            "POST",
            "transit/encrypt/{ns}upsert",
        )
        .body(json!({ "plaintext": "aGVsbG8=" })),
        case("transit decrypt", "POST", "transit/decrypt/{ns}k")
            .body(json!({ "ciphertext": "{ct1}" })),
        case("transit decrypt garbage", "POST", "transit/decrypt/{ns}k")
            .body(json!({ "ciphertext": "vault:v1:AAAA" })),
        case(
            "transit decrypt with a missing key",
            "POST",
            "transit/decrypt/{ns}missing",
        )
        .body(json!({ "ciphertext": "{ct1}" })),
        case("transit rotate", "POST", "transit/keys/{ns}k/rotate"),
        case("transit read after rotate", "GET", "transit/keys/{ns}k"),
        case("transit rewrap", "POST", "transit/rewrap/{ns}k")
            .body(json!({ "ciphertext": "{ct1}" })),
        case("transit config", "POST", "transit/keys/{ns}k/config")
            .body(json!({ "min_decryption_version": 2 })),
        case(
            "transit decrypt below min version",
            "POST",
            "transit/decrypt/{ns}k",
        )
        .body(json!({ "ciphertext": "{ct1}" })),
        case("transit config bad", "POST", "transit/keys/{ns}k/config")
            .body(json!({ "min_decryption_version": 9 })),
        case("transit delete not allowed", "DELETE", "transit/keys/{ns}k"),
        case(
            "transit allow deletion",
            "POST",
            "transit/keys/{ns}k/config",
        )
        .body(json!({ "deletion_allowed": true })),
        case("transit delete", "DELETE", "transit/keys/{ns}k"),
        case("transit read deleted", "GET", "transit/keys/{ns}k"),
        case(
            "transit rotate missing",
            "POST",
            "transit/keys/{ns}missing/rotate",
        ),
    ]
}

fn token_cases() -> Vec<Case> {
    vec![
        case("token lookup-self root", "GET", "auth/token/lookup-self"),
        case("token create", "POST", "auth/token/create")
            .body(json!({ "policies": ["{ns}creator"], "ttl": "1h", "display_name": "diff" }))
            .save("parent", "/auth/client_token")
            .save("parent_accessor", "/auth/accessor"),
        case("token create a child", "POST", "auth/token/create")
            .token("parent")
            .body(json!({ "policies": ["{ns}creator"], "ttl": "30m" }))
            .save("child", "/auth/client_token"),
        case("token create with uses", "POST", "auth/token/create")
            .body(json!({ "policies": ["default"], "num_uses": 2 }))
            .save("twice", "/auth/client_token"),
        case("token create orphan", "POST", "auth/token/create-orphan")
            .body(json!({ "policies": ["default"], "ttl": 600 }))
            .save("orphan", "/auth/client_token"),
        case("token create no_parent", "POST", "auth/token/create")
            .body(json!({ "policies": ["default"], "no_parent": true })),
        case("token create with a bad ttl", "POST", "auth/token/create")
            .body(json!({ "ttl": "soon" })),
        case(
            "token create orphan without sudo",
            "POST",
            "auth/token/create-orphan",
        )
        .token("parent")
        .body(json!({ "policies": ["{ns}creator"] })),
        case(
            "token create with more policies",
            "POST",
            "auth/token/create",
        )
        .token("parent")
        .body(json!({ "policies": ["{ns}creator", "{ns}sudo"] })),
        case("token lookup-self", "GET", "auth/token/lookup-self").token("parent"),
        case("token lookup-self post", "POST", "auth/token/lookup-self").token("parent"),
        case("token lookup", "POST", "auth/token/lookup").body(json!({ "token": "{child}" })),
        case("token lookup get", "GET", "auth/token/lookup?token={child}"),
        case("token lookup bad", "POST", "auth/token/lookup").body(json!({ "token": "nope" })),
        case(
            "token lookup accessor",
            "POST",
            "auth/token/lookup-accessor",
        )
        .body(json!({ "accessor": "{parent_accessor}" })),
        case(
            "token lookup bad accessor",
            "POST",
            "auth/token/lookup-accessor",
        )
        .body(json!({ "accessor": "nope" })),
        case("token renew", "POST", "auth/token/renew")
            .body(json!({ "token": "{parent}", "increment": "2h" })),
        case("token renew-self", "POST", "auth/token/renew-self")
            .token("child")
            .body(json!({ "increment": "10m" })),
        case("token renew root", "POST", "auth/token/renew-self"),
        case("token use 1 of 2", "GET", "auth/token/lookup-self").token("twice"),
        case("token use 2 of 2", "GET", "auth/token/lookup-self").token("twice"),
        case("token use 3 of 2", "GET", "auth/token/lookup-self").token("twice"),
        case("token accessors", "LIST", "auth/token/accessors"),
        case(
            "token accessors get",
            "GET",
            "auth/token/accessors?list=true",
        ),
        case("token accessors read", "GET", "auth/token/accessors"),
        case(
            "token accessors without sudo",
            "LIST",
            "auth/token/accessors",
        )
        .token("parent"),
        case("token create with sudo", "POST", "auth/token/create")
            .body(json!({ "policies": ["{ns}sudo"] }))
            .save("sudoer", "/auth/client_token"),
        case("token accessors with sudo", "LIST", "auth/token/accessors").token("sudoer"),
        case(
            "token create orphan with sudo",
            "POST",
            "auth/token/create-orphan",
        )
        .token("sudoer")
        .body(json!({ "policies": ["default"] })),
        case("token revoke parent", "POST", "auth/token/revoke")
            .body(json!({ "token": "{parent}" })),
        case(
            "token child after parent revoked",
            "GET",
            "auth/token/lookup-self",
        )
        .token("child"),
        case("token lookup revoked", "POST", "auth/token/lookup")
            .body(json!({ "token": "{child}" })),
        case(
            "token revoke accessor",
            "POST",
            "auth/token/revoke-accessor",
        )
        .body(json!({ "accessor": "{parent_accessor}" })),
        case("token revoke orphan", "POST", "auth/token/revoke-orphan")
            .body(json!({ "token": "{orphan}" })),
        case("token revoke-self", "POST", "auth/token/revoke-self").token("sudoer"),
        case("token after revoke-self", "GET", "auth/token/lookup-self").token("sudoer"),
        case("token unknown route", "GET", "auth/token/nothing"),
        case("token create with get", "GET", "auth/token/create"),
        case("token without a token", "GET", "auth/token/lookup-self").anonymous(),
        // The namespace, sent as a token: no server's.
        case("token with a bad token", "GET", "auth/token/lookup-self").token("ns"),
    ]
}

fn policy_cases() -> Vec<Case> {
    vec![
        case("policy write", "PUT", "sys/policies/acl/{ns}creator").body(policy(&[
            ("auth/token/create", "\"update\""),
            ("auth/token/create-orphan", "\"update\""),
            ("auth/token/accessors", "\"list\""),
            ("auth/token/lookup-self", "\"read\""),
        ])),
        case("policy write sudo", "PUT", "sys/policies/acl/{ns}sudo").body(policy(&[
            ("auth/token/accessors", "\"list\", \"sudo\""),
            ("auth/token/create-orphan", "\"update\", \"sudo\""),
        ])),
        case(
            "policy write list-only",
            "PUT",
            "sys/policies/acl/{ns}list-only",
        )
        .body(policy(&[
            ("secret/data/{ns}l/*", "\"list\""),
            ("secret/metadata/{ns}l/*", "\"list\""),
            ("transit/keys/*", "\"list\""),
        ])),
        case("policy write globs", "POST", "sys/policies/acl/{ns}globs").body(policy(&[
            ("secret/data/{ns}g/*", "\"read\", \"create\", \"update\""),
            ("secret/data/{ns}g/denied", "\"deny\""),
            ("secret/data/{ns}p/+/leaf", "\"read\", \"create\""),
            ("secret/metadata/{ns}g/", "\"list\""),
            ("secret/metadata/{ns}g/ro", "\"read\""),
            ("transit/encrypt/{ns}gk", "\"update\""),
            ("sys/policies/acl/*", "\"read\", \"list\""),
            ("sys/mounts", "\"read\""),
        ])),
        case("policy read", "GET", "sys/policies/acl/{ns}globs"),
        case(
            "policy read with a trailing slash",
            "GET",
            "sys/policies/acl/{ns}globs/",
        ),
        case("policy read missing", "GET", "sys/policies/acl/{ns}missing"),
        case("policy read default", "GET", "sys/policies/acl/default"),
        case("policy read root", "GET", "sys/policies/acl/root"),
        case("policy list", "LIST", "sys/policies/acl"),
        case("policy list with get", "GET", "sys/policies/acl?list=true"),
        case("policy list read", "GET", "sys/policies/acl"),
        case("policy write bad hcl", "PUT", "sys/policies/acl/{ns}bad")
            .body(json!({ "policy": "path {" })),
        case("policy write empty", "PUT", "sys/policies/acl/{ns}bad").body(json!({})),
        case("policy write root", "PUT", "sys/policies/acl/root")
            .body(json!({ "policy": "path \"x\" { capabilities = [\"read\"] }" })),
        case(
            "policy delete default",
            "DELETE",
            "sys/policies/acl/default",
        ),
        case("policy write to delete", "PUT", "sys/policies/acl/{ns}gone")
            .body(json!({ "policy": "path \"x\" { capabilities = [\"read\"] }" })),
        case("policy delete", "DELETE", "sys/policies/acl/{ns}gone"),
        case(
            "policy delete missing",
            "DELETE",
            "sys/policies/acl/{ns}gone",
        ),
        case(
            "policy write with list=true",
            "POST",
            "sys/policies/acl/{ns}gone?list=true",
        )
        .body(json!({ "policy": "path \"x\" { capabilities = [\"read\"] }" })),
        case(
            "policy delete with list=true",
            "DELETE",
            "sys/policies/acl/{ns}gone?list=true",
        ),
        case("legacy policy list", "GET", "sys/policy"),
        case("legacy policy read", "GET", "sys/policy/{ns}globs"),
        case("legacy policy write", "PUT", "sys/policy/{ns}legacy")
            .body(json!({ "rules": "path \"x\" { capabilities = [\"read\"] }" })),
        case("legacy policy delete", "DELETE", "sys/policy/{ns}legacy"),
    ]
}

/// What tokens holding one policy may do: globs, `deny`, `list` against `read`, trailing
/// slashes and `?list=true` on every method.
fn acl_cases() -> Vec<Case> {
    vec![
        case("acl token list-only", "POST", "auth/token/create")
            .body(json!({ "policies": ["{ns}list-only"] }))
            .save("lister", "/auth/client_token"),
        case("acl token globs", "POST", "auth/token/create")
            .body(json!({ "policies": ["{ns}globs"] }))
            .save("globber", "/auth/client_token"),
        case("acl seed l/x", "POST", "secret/data/{ns}l/x").body(json!({ "data": { "a": "1" } })),
        case("acl seed g/ro", "POST", "secret/data/{ns}g/ro").body(json!({ "data": { "a": "1" } })),
        case("acl seed g/denied", "POST", "secret/data/{ns}g/denied")
            .body(json!({ "data": { "a": "1" } })),
        // list-only: a list is allowed, nothing else, whatever `?list=` says.
        case("acl list-only list", "LIST", "secret/metadata/{ns}l").token("lister"),
        case(
            "acl list-only list with get",
            "GET",
            "secret/metadata/{ns}l/?list=true",
        )
        .token("lister"),
        case("acl list-only read", "GET", "secret/data/{ns}l/x").token("lister"),
        case(
            "acl list-only get data with list=true",
            "GET",
            "secret/data/{ns}l/x?list=true",
        )
        .token("lister"),
        case(
            "acl list-only post with list=true",
            "POST",
            "secret/data/{ns}l/x?list=true",
        )
        .token("lister")
        .body(json!({ "data": { "a": "2" } })),
        case(
            "acl list-only put with list=true",
            "PUT",
            "secret/data/{ns}l/x?list=true",
        )
        .token("lister")
        .body(json!({ "data": { "a": "2" } })),
        case(
            "acl list-only delete with list=true",
            "DELETE",
            "secret/data/{ns}l/x?list=true",
        )
        .token("lister"),
        case(
            "acl list-only metadata read",
            "GET",
            "secret/metadata/{ns}l/x",
        )
        .token("lister"),
        case("acl list-only transit list", "LIST", "transit/keys").token("lister"),
        case(
            "acl list-only transit read",
            "GET",
            "transit/keys/{ns}typed",
        )
        .token("lister"),
        case(
            "acl list-only bad list value",
            "GET",
            "secret/metadata/{ns}l/?list=maybe",
        )
        .token("lister"),
        // globs and deny.
        case("acl glob read", "GET", "secret/data/{ns}g/ro").token("globber"),
        case("acl glob create", "POST", "secret/data/{ns}g/new")
            .token("globber")
            .body(json!({ "data": { "a": "1" } })),
        case(
            "acl glob delete not granted",
            "DELETE",
            "secret/data/{ns}g/new",
        )
        .token("globber"),
        case(
            "acl deny wins over a glob",
            "GET",
            "secret/data/{ns}g/denied",
        )
        .token("globber"),
        case(
            "acl deny wins for writes",
            "POST",
            "secret/data/{ns}g/denied",
        )
        .token("globber")
        .body(json!({ "data": { "a": "1" } })),
        case("acl plus one segment", "POST", "secret/data/{ns}p/one/leaf")
            .token("globber")
            .body(json!({ "data": { "a": "1" } })),
        case("acl plus read", "GET", "secret/data/{ns}p/one/leaf").token("globber"),
        case(
            "acl plus update not granted",
            "POST",
            "secret/data/{ns}p/one/leaf",
        )
        .token("globber")
        .body(json!({ "data": { "a": "2" } })),
        case(
            "acl plus two segments",
            "GET",
            "secret/data/{ns}p/one/two/leaf",
        )
        .token("globber"),
        case("acl plus no segment", "GET", "secret/data/{ns}p/leaf").token("globber"),
        // list against read, and trailing slashes.
        case(
            "acl list an exact folder rule",
            "LIST",
            "secret/metadata/{ns}g",
        )
        .token("globber"),
        case("acl list with a slash", "LIST", "secret/metadata/{ns}g/").token("globber"),
        case("acl read a list rule", "GET", "secret/metadata/{ns}g/").token("globber"),
        case("acl read metadata", "GET", "secret/metadata/{ns}g/ro").token("globber"),
        case("acl list a read rule", "LIST", "secret/metadata/{ns}g/ro").token("globber"),
        case(
            "acl read with a trailing slash",
            "GET",
            "secret/data/{ns}g/ro/",
        )
        .token("globber"),
        // update without create: encrypt to a missing key is a create.
        case(
            "acl encrypt without create",
            "POST",
            "transit/encrypt/{ns}gk",
        )
        .token("globber")
        .body(json!({ "plaintext": "aGVsbG8=" })),
        case("acl sys read", "GET", "sys/mounts").token("globber"),
        case("acl sys write not granted", "POST", "sys/mounts/{ns}x")
            .token("globber")
            .body(json!({ "type": "kv" })),
        case("acl policy list", "LIST", "sys/policies/acl").token("globber"),
        case("acl policy read", "GET", "sys/policies/acl/{ns}globs").token("globber"),
        case(
            "acl policy write not granted",
            "PUT",
            "sys/policies/acl/{ns}x",
        )
        .token("globber")
        .body(json!({ "policy": "path \"x\" { capabilities = [\"read\"] }" })),
    ]
}

/// The whole corpus, in order: later cases use what earlier ones created.
fn corpus() -> Vec<Case> {
    [
        status_cases(),
        policy_cases(),
        mount_cases(),
        kv_cases(),
        transit_cases(),
        token_cases(),
        acl_cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// One server under comparison, with the variables the corpus saved for it.
struct Server {
    api: JsonClient,
    namespace: &'static str,
    vars: HashMap<String, String>,
}

impl Server {
    fn new(api: JsonClient, namespace: &'static str, root: &str) -> Self {
        let vars = HashMap::from([
            ("ns".to_owned(), namespace.to_owned()),
            ("root".to_owned(), root.to_owned()),
        ]);
        Self {
            api,
            namespace,
            vars,
        }
    }

    /// `text` with each `{name}` replaced by this server's variable `name`.
    fn fill(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    fn fill_json(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.fill(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.fill_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    async fn send(&mut self, case: &Case) -> anyhow::Result<JsonResponse> {
        let api = match case.token.and_then(|name| self.vars.get(name)) {
            Some(token) => self.api.with_token(token),
            None => self.api.clone(),
        };
        let path = format!("/v1/{}", self.fill(case.path));
        let body = case.body.as_ref().map(|b| self.fill_json(b));
        let response = api
            .send_json(case.method, &path, body)
            .await
            .with_context(|| format!("{}: {} {path}", case.name, case.method))?;
        for (name, pointer) in &case.save {
            if let Some(value) = response.body.pointer(pointer).and_then(Value::as_str) {
                self.vars.insert((*name).to_owned(), value.to_owned());
            }
        }
        Ok(response)
    }

    fn namespaces<'a>(&'a self, foreign: &'a [&'a str]) -> Namespaces<'a> {
        Namespaces {
            own: self.namespace,
            foreign,
        }
    }
}

/// One observed difference: at `pointer` of case `case`, what each server answered (`None`:
/// nothing there).
#[derive(Debug)]
struct Difference {
    case: String,
    pointer: String,
    answers: [Option<String>; 3],
}

/// The answers of the three servers to one case, as compared.
struct Compared {
    case: String,
    request: String,
    shapes: [Shape; 3],
    bodies: [Value; 3],
}

impl Compared {
    fn differences(&self) -> Vec<Difference> {
        let pointers: BTreeSet<&String> = self.shapes.iter().flat_map(|s| s.0.keys()).collect();
        pointers
            .into_iter()
            .filter_map(|pointer| {
                let answers = [0, 1, 2].map(|i| self.shapes[i].get(pointer).map(str::to_owned));
                (answers[0] != answers[1] || answers[1] != answers[2]).then(|| Difference {
                    case: self.case.clone(),
                    pointer: pointer.clone(),
                    answers,
                })
            })
            .collect()
    }
}

/// The shape of an HTTP answer: its status as `status`, then its body's pointers.
fn answer_shape(response: &JsonResponse, namespaces: Namespaces<'_>) -> Shape {
    let mut shape = Shape::of(&response.body, namespaces);
    shape
        .0
        .insert("status".to_owned(), response.status.to_string());
    shape
}

/// Sends every case to every server, in order, and returns the answers.
async fn run_corpus(servers: &mut [Server; 3]) -> anyhow::Result<Vec<Compared>> {
    let mut compared = Vec::new();
    for case in corpus() {
        let mut shapes: [Shape; 3] = Default::default();
        let mut bodies: [Value; 3] = Default::default();
        for i in 0..3 {
            let response = servers[i].send(&case).await?;
            let foreign: Vec<&str> = (0..3).filter(|&j| j != i).map(|j| NAMESPACES[j]).collect();
            shapes[i] = answer_shape(&response, servers[i].namespaces(&foreign));
            bodies[i] = json!({ "status": response.status, "body": response.body });
        }
        let body = case
            .body
            .as_ref()
            .map(|b| format!(" {b}"))
            .unwrap_or_default();
        compared.push(Compared {
            case: case.name.to_owned(),
            request: format!("{} /v1/{}{body}", case.method, case.path),
            shapes,
            bodies,
        });
    }
    Ok(compared)
}

/// Runs `tests/py/differential_hvac.py` against each server; the script prints one JSON object
/// per hvac call: `{"call": name, "outcome": "ok" or the exception's class, "value": ...}`.
async fn run_hvac(servers: &[Server; 3]) -> anyhow::Result<Vec<Compared>> {
    let mut results: Vec<BTreeMap<String, (Shape, Value)>> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let env = [
            ("VAULT_ADDR", server.api.base().to_owned()),
            ("VAULT_TOKEN", server.vars["root"].clone()),
            ("DIFF_NS", server.namespace.to_owned()),
        ];
        let output = ferry_tests::hvac::script_output("differential_hvac.py", &env).await?;
        let foreign: Vec<&str> = (0..3).filter(|&j| j != i).map(|j| NAMESPACES[j]).collect();
        let mut calls = BTreeMap::new();
        for line in output.lines().filter(|l| l.starts_with('{')) {
            let record: Value = serde_json::from_str(line)
                .with_context(|| format!("unreadable line from the hvac script: {line}"))?;
            let call = record["call"].as_str().unwrap_or_default().to_owned();
            let mut shape = Shape::of(&record["value"], server.namespaces(&foreign));
            let outcome = record["outcome"].as_str().unwrap_or_default().to_owned();
            shape.0.insert("outcome".to_owned(), outcome);
            if i == 0 {
                order.push(call.clone());
            }
            calls.insert(call, (shape, record));
        }
        results.push(calls);
    }
    Ok(order
        .into_iter()
        .map(|call| {
            let get = |i: usize| results[i].get(&call).cloned().unwrap_or_default();
            let [(s0, b0), (s1, b1), (s2, b2)] = [get(0), get(1), get(2)];
            Compared {
                case: format!("hvac: {call}"),
                request: format!("hvac {call}"),
                shapes: [s0, s1, s2],
                bodies: [b0, b1, b2],
            }
        })
        .collect())
}

/// OpenBao with the mounts ferry-vault starts with; ready once KV version 2 answers at
/// `secret/`.
async fn openbao_like_ferry(bao: &OpenBao) -> anyhow::Result<()> {
    let root = bao.root();
    root.post(
        "/v1/sys/mounts/secret",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await?
    .ok()?;
    // No options, as ferry-vault's own transit mount (OpenBao reports them as sent).
    root.post(
        "/v1/sys/mounts/transit",
        json!({ "type": "transit", "options": null }),
    )
    .await?
    .ok()?;
    // A new KV version 2 mount answers 4xx until its backend has set itself up.
    ferry_tests::wait_for("openbao's kv mount", Duration::from_secs(30), || {
        let root = root.clone();
        async move { (root.get("/v1/secret/config").await.ok()?.status == 200).then_some(()) }
    })
    .await
}

/// A readable report of the unexpected differences: the request, then each differing pointer
/// with the three answers, then the three answers themselves.
fn report(compared: &[Compared], unexpected: &[&Difference]) -> String {
    let mut out = String::new();
    for c in compared {
        let diffs: Vec<_> = unexpected.iter().filter(|d| d.case == c.case).collect();
        if diffs.is_empty() {
            continue;
        }
        out.push_str(&format!("\n== {} ({})\n", c.case, c.request));
        for d in diffs {
            let show = |a: &Option<String>| a.clone().unwrap_or_else(|| "-".to_owned());
            out.push_str(&format!(
                "  {:<40} openbao: {:<10} primary: {:<10} secondary: {}\n",
                d.pointer,
                show(&d.answers[0]),
                show(&d.answers[1]),
                show(&d.answers[2])
            ));
        }
        for (name, body) in SERVERS.iter().zip(&c.bodies) {
            let text = body.to_string();
            let cut: String = text.chars().take(600).collect();
            out.push_str(&format!("  {name}: {cut}\n"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_vault_answers_like_openbao() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("openbao-").tempdir()?;
    let (bao, pair) = tokio::try_join!(OpenBao::start(dir.path()), VaultPair::start(&[]))?;
    openbao_like_ferry(&bao).await?;
    let mut servers = [
        Server::new(bao.api.clone(), NAMESPACES[0], bao.root_token()),
        Server::new(pair.west_vault.api.clone(), NAMESPACES[1], WEST_ROOT_TOKEN),
        Server::new(pair.east_vault.api.clone(), NAMESPACES[2], EAST_ROOT_TOKEN),
    ];
    eprintln!("servers up after {:?}", started.elapsed());
    let mut compared = run_corpus(&mut servers).await?;
    eprintln!("corpus done after {:?}", started.elapsed());
    compared.extend(run_hvac(&servers).await?);
    eprintln!("hvac done after {:?}", started.elapsed());

    let differences: Vec<Difference> = compared.iter().flat_map(Compared::differences).collect();
    // Between the primary and its secondary, any difference is a bug: never listed.
    let unexpected: Vec<&Difference> = differences
        .iter()
        .filter(|d| d.answers[1] != d.answers[2] || !KNOWN_DIFFERENCES.iter().any(|k| k.lists(d)))
        .collect();
    let stale: Vec<String> = KNOWN_DIFFERENCES
        .iter()
        .flat_map(|k| k.stale(&differences))
        .collect();
    assert!(
        unexpected.is_empty() && stale.is_empty(),
        "{} unlisted difference(s) from OpenBao:{}\nlisted differences that no longer occur: \
         {stale:#?}\n--- primary log tail ---\n{}",
        unexpected.len(),
        report(&compared, &unexpected),
        pair.west_vault
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    Ok(())
}
