//! The lines an audit device writes, in Vault's JSON shapes (pure: the facts of a request and
//! response in, one JSON object out, with every secret hashed by the device's [`Salt`]).
//!
//! ```text
//! request entry   {"time", "type": "request", "auth", "request", "error"}
//! response entry  {"time", "type": "response", "auth", "request", "response", "error"}
//!
//! auth      client_token*, accessor*, display_name, policies, token_policies, metadata,
//!           entity_id, token_type, token_ttl, token_issue_time
//! request   id, operation, mount_type, client_token*, client_token_accessor*, namespace,
//!           path, data**, remote_address, remote_port
//! response  mount_type, data**, auth (client_token*, accessor*, the rest as sent),
//!           wrap_info**, warnings
//! ```
//!
//! `*`: hashed (accessors only while the device's `hmac_accessor` is on, as in Vault);
//! `**`: every string in it, at any depth, hashed. Nothing else of a response body is written,
//! so a field a handler adds later cannot leak a secret into the log.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::hash::Salt;
use crate::token::TokenEntry;

/// What a request entry says, before hashing.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    /// The id that pairs a request entry with its response entry.
    pub id: String,
    /// Vault's operation name (`read`, `list`, `update`, `delete`).
    pub operation: String,
    /// The canonical path.
    pub path: String,
    pub mount_type: String,
    /// The caller's token (empty for a request executed for a secondary, or unauthenticated).
    pub client_token: String,
    /// The caller's token entry, `None` when it was not authenticated.
    pub caller: Option<TokenEntry>,
    /// The request body, when it is JSON.
    pub data: Option<Value>,
    pub remote: Option<SocketAddr>,
}

/// What a response entry adds.
#[derive(Clone, Debug, Default)]
pub struct ResponseFacts {
    /// The response body, when it is JSON.
    pub body: Option<Value>,
    /// The error the client was sent, empty on success.
    pub error: String,
}

/// How a device hashes: its salt and its `hmac_accessor` option.
pub struct Hashing<'a> {
    pub salt: &'a Salt,
    pub hmac_accessor: bool,
}

impl Hashing<'_> {
    fn accessor(&self, accessor: &str) -> String {
        if self.hmac_accessor {
            self.salt.hash_token(accessor)
        } else {
            accessor.to_owned()
        }
    }

    fn auth(&self, facts: &RequestFacts) -> Value {
        let Some(entry) = &facts.caller else {
            return json!({});
        };
        json!({
            "client_token": self.salt.hash_token(&facts.client_token),
            "accessor": self.accessor(&entry.accessor),
            "display_name": entry.display_name,
            "policies": entry.policies,
            "token_policies": entry.policies,
            "metadata": entry.meta,
            "entity_id": "",
            "token_type": "service",
            "token_ttl": entry.ttl,
            "token_issue_time": ferry_proto::time::rfc3339_micros(entry.creation_time, 0),
        })
    }

    fn request(&self, facts: &RequestFacts) -> Value {
        let accessor = facts.caller.as_ref().map_or("", |e| e.accessor.as_str());
        let mut request = json!({
            "id": facts.id,
            "operation": facts.operation,
            "mount_type": facts.mount_type,
            "client_token": self.salt.hash_token(&facts.client_token),
            "client_token_accessor": self.accessor(accessor),
            "namespace": {"id": "root"},
            "path": facts.path,
            "data": facts.data.as_ref().map(|d| self.salt.hash_json(d)),
        });
        if let Some(remote) = facts.remote {
            request["remote_address"] = remote.ip().to_string().into();
            request["remote_port"] = remote.port().into();
        }
        request
    }

    fn response(&self, facts: &RequestFacts, response: &ResponseFacts) -> Value {
        let mut out = Map::new();
        out.insert("mount_type".into(), facts.mount_type.clone().into());
        let body = response.body.as_ref().and_then(Value::as_object);
        let field = |name: &str| body.and_then(|b| b.get(name)).filter(|v| !v.is_null());
        if let Some(data) = field("data") {
            out.insert("data".into(), self.salt.hash_json(data));
        }
        if let Some(Value::Object(auth)) = field("auth") {
            let mut auth = auth.clone();
            if let Some(Value::String(token)) = auth.get("client_token") {
                let hashed = self.salt.hash_token(token);
                auth.insert("client_token".into(), hashed.into());
            }
            if let Some(Value::String(accessor)) = auth.get("accessor") {
                let hashed = self.accessor(accessor);
                auth.insert("accessor".into(), hashed.into());
            }
            out.insert("auth".into(), Value::Object(auth));
        }
        if let Some(wrap) = field("wrap_info") {
            out.insert("wrap_info".into(), self.salt.hash_json(wrap));
        }
        if let Some(warnings) = field("warnings") {
            out.insert("warnings".into(), warnings.clone());
        }
        Value::Object(out)
    }

    /// The request entry: written before the request runs.
    pub fn request_entry(&self, facts: &RequestFacts, error: &str, now: SystemTime) -> Value {
        json!({
            "time": format_time(now),
            "type": "request",
            "auth": self.auth(facts),
            "request": self.request(facts),
            "error": error,
        })
    }

    /// The response entry: written once the response is known.
    pub fn response_entry(
        &self,
        facts: &RequestFacts,
        response: &ResponseFacts,
        now: SystemTime,
    ) -> Value {
        json!({
            "time": format_time(now),
            "type": "response",
            "auth": self.auth(facts),
            "request": self.request(facts),
            "response": self.response(facts, response),
            "error": response.error,
        })
    }
}

/// `now` in RFC 3339, UTC, to the microsecond: `2026-12-05T09:30:00.123456Z`.
pub fn format_time(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    ferry_proto::time::rfc3339_micros(since.as_secs(), since.subsec_micros())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts() -> RequestFacts {
        RequestFacts {
            id: "0b5e1c9a-0000-0000-0000-000000000001".into(),
            operation: "update".into(),
            path: "secret/data/app".into(),
            mount_type: "kv".into(),
            client_token: "hvs.rawtoken".into(),
            caller: Some(TokenEntry {
                accessor: "rawaccessor".into(),
                policies: vec!["root".into()],
                display_name: "root".into(),
                creation_time: 0,
                ..TokenEntry::default()
            }),
            data: Some(json!({"data": {"password": "s3cret"}, "options": {"cas": 1}})),
            remote: Some("127.0.0.1:40000".parse().expect("an address")),
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            ferry_proto::time::rfc3339_micros(0, 0),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            ferry_proto::time::rfc3339_micros(951_782_400, 5),
            "2000-02-29T00:00:00.000005Z"
        );
        assert_eq!(
            ferry_proto::time::rfc3339_micros(1_735_689_599, 999_999),
            "2024-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_micros(4_102_444_800_000_001)),
            "2100-01-01T00:00:00.000001Z"
        );
    }

    #[test]
    fn a_request_entry_has_vaults_shape_and_no_raw_secret() {
        let salt = Salt::new(b"salt");
        let hashing = Hashing {
            salt: &salt,
            hmac_accessor: true,
        };
        let entry = hashing.request_entry(&facts(), "", UNIX_EPOCH);
        assert_eq!(entry["type"], "request");
        assert_eq!(entry["auth"]["client_token"], salt.hash("hvs.rawtoken"));
        assert_eq!(entry["auth"]["accessor"], salt.hash("rawaccessor"));
        assert_eq!(entry["auth"]["policies"], json!(["root"]));
        assert_eq!(entry["request"]["client_token"], salt.hash("hvs.rawtoken"));
        assert_eq!(
            entry["request"]["client_token_accessor"],
            salt.hash("rawaccessor")
        );
        assert_eq!(
            entry["request"]["data"]["data"]["password"],
            salt.hash("s3cret")
        );
        assert_eq!(entry["request"]["data"]["options"]["cas"], 1);
        assert_eq!(entry["request"]["remote_address"], "127.0.0.1");
        assert_eq!(entry["request"]["operation"], "update");
        let line = entry.to_string();
        for raw in ["hvs.rawtoken", "rawaccessor", "s3cret"] {
            assert!(!line.contains(raw), "{raw} in {line}");
        }
    }

    #[test]
    fn accessors_stay_in_clear_only_without_hmac_accessor() {
        let salt = Salt::new(b"salt");
        let hashing = Hashing {
            salt: &salt,
            hmac_accessor: false,
        };
        let entry = hashing.request_entry(&facts(), "", UNIX_EPOCH);
        assert_eq!(entry["auth"]["accessor"], "rawaccessor");
        assert_eq!(entry["auth"]["client_token"], salt.hash("hvs.rawtoken"));
    }

    #[test]
    fn a_response_entry_hashes_data_and_a_new_tokens_secrets() {
        let salt = Salt::new(b"salt");
        let hashing = Hashing {
            salt: &salt,
            hmac_accessor: true,
        };
        let response = ResponseFacts {
            body: Some(json!({
                "request_id": "x",
                "data": {"id": "hvs.child", "n": 3},
                "auth": {"client_token": "hvs.child", "accessor": "childacc", "policies": ["p"]},
                "wrap_info": null,
                "warnings": ["w"],
                "unlisted": "not logged",
            })),
            error: String::new(),
        };
        let entry = hashing.response_entry(&facts(), &response, UNIX_EPOCH);
        assert_eq!(entry["type"], "response");
        let logged = &entry["response"];
        assert_eq!(
            logged["data"],
            json!({"id": salt.hash("hvs.child"), "n": 3})
        );
        assert_eq!(logged["auth"]["client_token"], salt.hash("hvs.child"));
        assert_eq!(logged["auth"]["accessor"], salt.hash("childacc"));
        assert_eq!(logged["auth"]["policies"], json!(["p"]));
        assert_eq!(logged["warnings"], json!(["w"]));
        let line = entry.to_string();
        for raw in ["hvs.child", "childacc", "not logged"] {
            assert!(!line.contains(raw), "{raw} in {line}");
        }
    }

    #[test]
    fn an_unauthenticated_request_has_an_empty_auth() {
        let salt = Salt::new(b"salt");
        let hashing = Hashing {
            salt: &salt,
            hmac_accessor: true,
        };
        let facts = RequestFacts {
            caller: None,
            client_token: String::new(),
            ..facts()
        };
        let entry = hashing.request_entry(&facts, "permission denied", UNIX_EPOCH);
        assert_eq!(entry["auth"], json!({}));
        assert_eq!(entry["request"]["client_token"], "");
        assert_eq!(entry["error"], "permission denied");
    }
}
