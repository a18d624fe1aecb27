//! The transit engine at a mount (`transit/` by default): named AES-256-GCM keys with versions, and encryption as a
//! service. Ciphertext is `vault:v<version>:<base64(nonce || ciphertext+tag)>`, as in Vault.
//!
//! Keys are replicated (`logical/<mount uuid>/keys/<name>`, sealed by the replicated keyring), so a
//! secondary encrypts and decrypts locally: both only read storage.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// Longest plaintext accepted per item (base64-decoded).
pub const MAX_PLAINTEXT_BYTES: usize = 256 * 1024;

/// A named key with all its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitKey {
    pub name: String,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub deletion_allowed: bool,
    /// Version → (creation time, key hex).
    versions: BTreeMap<u32, (u64, String)>,
}

/// Why a transit operation failed: always the caller's input (a 400).
#[derive(Debug, PartialEq, Eq)]
pub struct TransitError(pub String);

impl TransitKey {
    pub fn new(name: &str, now: u64) -> Self {
        let mut key = Self {
            name: name.to_owned(),
            latest_version: 0,
            min_decryption_version: 1,
            deletion_allowed: false,
            versions: BTreeMap::new(),
        };
        key.rotate(now);
        key
    }

    pub fn rotate(&mut self, now: u64) {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the operating system's random source failed");
        self.latest_version += 1;
        self.versions.insert(
            self.latest_version,
            (now, raw.iter().map(|b| format!("{b:02x}")).collect()),
        );
    }

    /// Version → creation time, for reads.
    pub fn version_times(&self) -> BTreeMap<u32, u64> {
        self.versions.iter().map(|(v, (t, _))| (*v, *t)).collect()
    }

    fn aead(&self, version: u32) -> Option<LessSafeKey> {
        let (_, hex) = self.versions.get(&version)?;
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("stored hex"))
            .collect();
        Some(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte key"),
        ))
    }

    /// Encrypts `plaintext` with the latest version; `context` is the associated data.
    pub fn encrypt(&self, plaintext: &[u8], context: &[u8]) -> Result<String, TransitError> {
        if plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(TransitError(format!(
                "plaintext is {} bytes, over the limit of {MAX_PLAINTEXT_BYTES}",
                plaintext.len()
            )));
        }
        let key = self
            .aead(self.latest_version)
            .expect("the latest version exists");
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut body,
        )
        .expect("AES-GCM sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        Ok(format!(
            "vault:v{}:{}",
            self.latest_version,
            B64.encode(out)
        ))
    }

    /// Decrypts a `vault:vN:...` ciphertext.
    pub fn decrypt(&self, ciphertext: &str, context: &[u8]) -> Result<Vec<u8>, TransitError> {
        let bad = |m: &str| TransitError(format!("invalid ciphertext: {m}"));
        let rest = ciphertext
            .strip_prefix("vault:v")
            .ok_or_else(|| bad("it does not start with \"vault:v\""))?;
        let (version, data) = rest
            .split_once(':')
            .ok_or_else(|| bad("no version separator"))?;
        let version: u32 = version
            .parse()
            .map_err(|_| bad("the version is not a number"))?;
        if version < self.min_decryption_version {
            return Err(TransitError(format!(
                "ciphertext version {version} is disallowed by policy (min_decryption_version {})",
                self.min_decryption_version
            )));
        }
        let key = self.aead(version).ok_or_else(|| {
            TransitError(format!(
                "invalid ciphertext: key version {version} does not exist"
            ))
        })?;
        let raw = B64
            .decode(data)
            .map_err(|_| bad("the payload is not base64"))?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(bad("the payload is too short"));
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce.try_into().expect("nonce length")),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| TransitError("cipher: message authentication failed".into()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A key with two versions, the first no longer allowed: making one is cheap, but the
    /// properties share it so that a failure names the same key.
    fn key() -> TransitKey {
        let mut key = TransitKey::new("k", 1);
        key.rotate(2);
        key.rotate(3);
        key.min_decryption_version = 2;
        key
    }

    proptest! {
        /// Whatever a client sends as ciphertext, decryption refuses it with a message, or
        /// it is a real ciphertext of this key: text that merely looks like one never decrypts.
        #[test]
        fn arbitrary_ciphertexts_are_refused(
            text in prop_oneof![
                ".{0,80}",
                "vault:v[0-9+-]{0,12}:[A-Za-z0-9+/=]{0,80}",
                (0u32..5, proptest::collection::vec(any::<u8>(), 0..64))
                    .prop_map(|(v, raw)| format!("vault:v{v}:{}", B64.encode(raw))),
            ],
        ) {
            let e = key().decrypt(&text, b"").unwrap_err();
            prop_assert!(!e.0.is_empty());
        }

        /// A real ciphertext changed anywhere (a character replaced, the end cut, garbage
        /// appended) or decrypted with another context does not decrypt.
        #[test]
        fn changed_ciphertexts_do_not_decrypt(
            plain in proptest::collection::vec(any::<u8>(), 0..48),
            at in any::<proptest::sample::Index>(),
            with in "[A-Za-z0-9+/=:v]",
            how in 0u8..3,
        ) {
            let key = key();
            let ciphertext = key.encrypt(&plain, b"ctx").unwrap();
            prop_assert_eq!(key.decrypt(&ciphertext, b"ctx").unwrap(), plain);
            prop_assert!(key.decrypt(&ciphertext, b"other").is_err());
            let at = at.index(ciphertext.len());
            let changed = match how {
                0 => format!("{}{with}{}", &ciphertext[..at], &ciphertext[at + 1..]),
                1 => ciphertext[..at].to_owned(),
                _ => format!("{ciphertext}{with}"),
            };
            prop_assume!(changed != ciphertext);
            prop_assert!(key.decrypt(&changed, b"ctx").is_err(), "{changed:?}");
        }
    }

    #[test]
    fn round_trips_across_rotation_and_refuses_tampering() {
        let mut key = TransitKey::new("k", 1);
        let c1 = key.encrypt(b"hello", b"").unwrap();
        assert!(c1.starts_with("vault:v1:"));
        key.rotate(2);
        let c2 = key.encrypt(b"hello", b"").unwrap();
        assert!(c2.starts_with("vault:v2:"));
        assert_eq!(key.decrypt(&c1, b"").unwrap(), b"hello");
        assert_eq!(key.decrypt(&c2, b"").unwrap(), b"hello");
        key.min_decryption_version = 2;
        assert!(key.decrypt(&c1, b"").unwrap_err().0.contains("disallowed"));
        assert!(key.decrypt("vault:v2:AAAA", b"").is_err());
        assert!(
            key.decrypt("nonsense", b"")
                .unwrap_err()
                .0
                .contains("invalid ciphertext")
        );
        assert!(key.decrypt(&c2, b"other context").is_err());
    }
}
