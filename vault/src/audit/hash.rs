//! What an audit device writes in place of secrets: `hmac-sha256:<hex>`, the HMAC-SHA256 of the
//! value under the device's salt, as Vault writes it. The same value always gives the same
//! hash on one device, so an operator can find a known secret or token in the log (through
//! `sys/audit-hash/<path>`) without the log ever holding it; another device, or the same path
//! enabled again, has another salt and gives other hashes.

use ring::hmac;
use serde_json::Value;

/// The prefix of every hashed value.
pub const PREFIX: &str = "hmac-sha256:";
/// Bytes of random salt a device gets when it is enabled.
pub const SALT_BYTES: usize = 32;

/// A device's HMAC key.
#[derive(Clone)]
pub struct Salt(hmac::Key);

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// The salt made of `bytes` (what the audit table stores, sealed).
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// `hmac-sha256:<hex>` of `value`.
    pub fn hash(&self, value: &str) -> String {
        let tag = hmac::sign(&self.0, value.as_bytes());
        let mut out = String::with_capacity(PREFIX.len() + 64);
        out.push_str(PREFIX);
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// [`Self::hash`] of a token or accessor; an empty one stays empty (there is nothing to
    /// hide, and an empty field says "none" as in Vault's entries).
    pub fn hash_token(&self, value: &str) -> String {
        if value.is_empty() {
            String::new()
        } else {
            self.hash(value)
        }
    }

    /// `value` with every string in it, at any depth, replaced by its hash: object keys,
    /// numbers, booleans, nulls and the shape are kept (Vault's `HashStructure`).
    pub fn hash_json(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.hash(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.hash_json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.hash_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Whether `hashed` is `original` with every string replaced by its hash under `salt`.
    fn hashed_in_place(salt: &Salt, original: &Value, hashed: &Value) -> bool {
        match (original, hashed) {
            (Value::String(s), Value::String(h)) => *h == salt.hash(s),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| hashed_in_place(salt, x, y))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, x)| b.get(k).is_some_and(|y| hashed_in_place(salt, x, y)))
            }
            (x, y) => x == y,
        }
    }

    /// Every string leaf, as it ends up in `value`.
    fn strings(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    proptest! {
        /// Any JSON keeps its shape, keys and non-string leaves, and every string leaf becomes
        /// `hmac-sha256:` and 64 hex digits of that string; never a panic.
        #[test]
        fn every_string_leaf_is_hashed_and_the_shape_is_kept(
            value in json_value(),
            salt in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let salt = Salt::new(&salt);
            let hashed = salt.hash_json(&value);
            prop_assert!(hashed_in_place(&salt, &value, &hashed), "{value} -> {hashed}");
            let mut leaves = Vec::new();
            strings(&hashed, &mut leaves);
            for leaf in leaves {
                let hex = leaf.strip_prefix(PREFIX).expect("prefixed");
                prop_assert_eq!(hex.len(), 64);
                prop_assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
        }

        /// Another salt gives another hash of the same value.
        #[test]
        fn another_salt_hashes_differently(value in ".{0,20}", a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assume!(a != b);
            prop_assert_ne!(Salt::new(&a).hash(&value), Salt::new(&b).hash(&value));
        }
    }

    #[test]
    fn a_hash_is_hmac_sha256_of_the_value_under_the_salt() {
        // RFC 4231, test case 2.
        let salt = Salt::new(b"Jefe");
        assert_eq!(
            salt.hash("what do ya want for nothing?"),
            "hmac-sha256:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nested_secrets_are_hashed_and_numbers_kept() {
        let salt = Salt::new(b"salt");
        let hashed = salt.hash_json(&json!({
            "data": {"password": "s3cret", "list": ["a", 1, true, null]},
            "options": {"cas": 1},
        }));
        assert_eq!(
            hashed,
            json!({
                "data": {"password": salt.hash("s3cret"), "list": [salt.hash("a"), 1, true, null]},
                "options": {"cas": 1},
            })
        );
        assert!(!hashed.to_string().contains("s3cret"));
        assert_eq!(salt.hash_token(""), "");
    }
}
