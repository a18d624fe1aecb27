//! Which Secret values the operator sends away, and where.
//!
//! A ReplicationCluster names Secrets by reference (`spec.cluster.tokenSecretRef`,
//! `spec.secondary.tokenSecretRef`), and the operator, which may read every Secret of its
//! namespace, sends their values to the cluster address the same resource names. Without a rule,
//! whoever may create ReplicationClusters but not read Secrets could point a resource at any
//! Secret and at a server of theirs, and have the operator deliver the value (a confused
//! deputy). So a value leaves only where its Secret allows:
//!
//! * the admin token: its Secret must carry the annotation [`SEND_TO`], a comma-separated list
//!   of addresses, one of which is the resource's `spec.cluster.address` (the chart annotates
//!   the root token Secret it makes). Annotating a Secret takes write access to it, which the
//!   would-be deputy's user lacks;
//! * the activation token: its value must have the shape of a Ferry activation token
//!   (`ferry1.<claims>.<signature>`, the claims a JSON object), so no other Secret's value is
//!   ever sent. Copies made by GitOps need nothing more. (A token carries no key and is good
//!   for one activation, so sending one to the wrong cluster gives nothing away.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

/// The annotation naming where the admin token in a Secret may be sent.
pub const SEND_TO: &str = "replication.ferry.dev/send-to";
/// How every activation token starts.
const ACTIVATION_PREFIX: &str = "ferry1.";
/// Longest activation token taken: the sidecar's limit, with room to spare.
const MAX_ACTIVATION_BYTES: usize = 64 * 1024;

/// Why a Secret's value is not sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("Secret {0:?} does not exist")]
    Missing(String),
    #[error("Secret {name:?} has no value under key {key:?}")]
    Empty { name: String, key: String },
    #[error(
        "Secret {name:?} does not allow its value to be sent to {address}: annotate it \
         {SEND_TO}={address} (the operator sends an admin token only where its Secret says)"
    )]
    NotForAddress { name: String, address: String },
    #[error(
        "Secret {name:?} key {key:?} does not hold a Ferry activation token ({ACTIVATION_PREFIX}…); \
         it is not sent"
    )]
    NotAnActivationToken { name: String, key: String },
}

/// The admin token in `secret` under `key`, if it may be sent to `address`.
pub fn admin_token(
    name: &str,
    secret: Option<&Secret>,
    key: &str,
    address: &str,
) -> Result<String, Refused> {
    let secret = secret.ok_or_else(|| Refused::Missing(name.into()))?;
    let value = value(name, secret, key)?;
    let wanted = address.trim_end_matches('/');
    let allowed = secret.annotations().get(SEND_TO).is_some_and(|list| {
        list.split(',')
            .any(|a| !a.trim().is_empty() && a.trim().trim_end_matches('/') == wanted)
    });
    if !allowed {
        return Err(Refused::NotForAddress {
            name: name.into(),
            address: wanted.into(),
        });
    }
    Ok(value)
}

/// The activation token in `secret` under `key`, if it has the shape of one.
pub fn activation_token(name: &str, secret: Option<&Secret>, key: &str) -> Result<String, Refused> {
    let secret = secret.ok_or_else(|| Refused::Missing(name.into()))?;
    let value = value(name, secret, key)?;
    if !looks_like_activation_token(&value) {
        return Err(Refused::NotAnActivationToken {
            name: name.into(),
            key: key.into(),
        });
    }
    Ok(value)
}

fn value(name: &str, secret: &Secret, key: &str) -> Result<String, Refused> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Refused::Empty {
            name: name.into(),
            key: key.into(),
        })
}

/// `ferry1.<base64url JSON object>.<base64url signature>`, within the size limit.
fn looks_like_activation_token(value: &str) -> bool {
    if value.len() > MAX_ACTIVATION_BYTES {
        return false;
    }
    let Some(rest) = value.strip_prefix(ACTIVATION_PREFIX) else {
        return false;
    };
    let Some((claims, signature)) = rest.split_once('.') else {
        return false;
    };
    let claims_are_an_object = B64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .is_some_and(|c| c.is_object());
    claims_are_an_object && B64.decode(signature).is_ok_and(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(value: &str, send_to: Option<&str>) -> Secret {
        let mut s = Secret {
            data: Some(BTreeMap::from([(
                "token".to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        if let Some(a) = send_to {
            s.annotations_mut().insert(SEND_TO.into(), a.into());
        }
        s
    }

    #[test]
    fn an_admin_token_goes_only_to_an_address_its_secret_names() {
        let s = secret("hvs.x\n", Some("https://a.svc:8200, https://b.svc:8200/"));
        assert_eq!(
            admin_token("admin", Some(&s), "token", "https://b.svc:8200"),
            Ok("hvs.x".into())
        );
        assert_eq!(
            admin_token("admin", Some(&s), "token", "https://a.svc:8200/"),
            Ok("hvs.x".into())
        );
        let refused = admin_token("admin", Some(&s), "token", "https://evil.example:8200");
        assert!(matches!(refused, Err(Refused::NotForAddress { .. })));
        let bare = secret("hvs.x", None);
        let refused = admin_token("admin", Some(&bare), "token", "https://a.svc:8200");
        assert!(
            refused.unwrap_err().to_string().contains(SEND_TO),
            "the message says how to allow it"
        );
        assert_eq!(
            admin_token("admin", None, "token", "https://a.svc:8200"),
            Err(Refused::Missing("admin".into()))
        );
        let empty = secret("  ", Some("https://a.svc:8200"));
        assert!(matches!(
            admin_token("admin", Some(&empty), "token", "https://a.svc:8200"),
            Err(Refused::Empty { .. })
        ));
        let blank_list = secret("hvs.x", Some(" , "));
        assert!(admin_token("admin", Some(&blank_list), "token", "").is_err());
    }

    #[test]
    fn only_what_has_an_activation_tokens_shape_is_sent_as_one() {
        let claims = B64.encode(br#"{"cluster_id":"c","secondary_id":"east"}"#);
        let token = format!("ferry1.{claims}.{}", B64.encode([7u8; 64]));
        let s = secret(&token, None);
        assert_eq!(activation_token("act", Some(&s), "token"), Ok(token));
        for other in [
            "a database password",
            "ferry1.",
            "ferry1.bm90IGpzb24.c2ln",
            &format!("ferry1.{}", B64.encode(b"[1]")),
            &format!("ferry1.{}.{}", B64.encode(b"[1]"), B64.encode(b"s")),
            &format!("ferry1.{claims}."),
            &format!("ferry2.{claims}.{}", B64.encode(b"s")),
        ] {
            let s = secret(other, None);
            assert!(
                matches!(
                    activation_token("act", Some(&s), "token"),
                    Err(Refused::NotAnActivationToken { .. })
                ),
                "{other:?}"
            );
        }
    }
}
