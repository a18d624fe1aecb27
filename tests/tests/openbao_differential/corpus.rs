//! The differential test's corpus: every request sent to OpenBao, the ferry-vault primary and
//! its secondary, in order (later cases use what earlier ones created), by family: status
//! endpoints, ACL policies, mounts, KV version 2, transit, tokens, and what tokens holding one
//! policy may do.

use serde_json::{Value, json};

/// One request of the corpus. `{name}` in its path and in its body's strings is replaced by the
/// server's value of `name`: `ns` (its namespace), `root` (its root token), or what an earlier
/// case saved.
pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub body: Option<Value>,
    /// The variable holding the token sent; `None`: no token.
    pub token: Option<&'static str>,
    /// `(variable, JSON pointer)`: strings to save from the answer for later cases.
    pub save: Vec<(&'static str, &'static str)>,
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
        case("leader", "GET", "sys/leader").anonymous(),
        case("ha status", "GET", "sys/ha-status"),
        case("ha status without a token", "GET", "sys/ha-status").anonymous(),
        case("audit list", "GET", "sys/audit"),
        case("audit list without a token", "GET", "sys/audit").anonymous(),
        case("audit hash of no device", "POST", "sys/audit-hash/{ns}none")
            .body(json!({ "input": "x" })),
        // sys/replication/* is not here: OpenBao has no replication, and a primary and its
        // secondary answer it each by its role (the replication tests check those answers).
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
        case("mount a child first", "POST", "sys/mounts/{ns}deep/inner")
            .body(json!({ "type": "kv", "options": { "version": "2" } })),
        case("mount the parent of a mount", "POST", "sys/mounts/{ns}deep")
            .body(json!({ "type": "kv", "options": { "version": "2" } })),
        case("unmount the child", "DELETE", "sys/mounts/{ns}deep/inner"),
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
pub fn corpus() -> Vec<Case> {
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
