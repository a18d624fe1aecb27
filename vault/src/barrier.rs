//! The barrier: every value ferry-vault stores is sealed with AES-256-GCM before it reaches the
//! sidecar, so the sidecar, etcd and every WAL shipment hold only ciphertext.
//!
//! Two keyrings, both sealed by the root key (read from a file at start-up, the same in every
//! region of a replication set):
//!
//! * the **replicated keyring** at `core/keyring` seals replicated paths; the primary creates it
//!   and secondaries receive it with the data;
//! * the **local keyring** at `core/local/keyring` seals local paths (tokens, leases), so that a
//!   cluster's own data stays readable when it joins a replication set and takes the primary's
//!   replicated keyring.
//!
//! Sealed value layout (the storage path is the associated data, so a value moved to another
//! path does not open):
//!
//! ```text
//! 1   version (1)
//! 4   key term, big-endian (0 = the root key, for the keyrings themselves)
//! 12  nonce (random)
//! n   ciphertext with the 16-byte GCM tag
//! ```

use std::collections::BTreeMap;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + NONCE_LEN;
/// The term the root key seals with.
pub const ROOT_TERM: u32 = 0;

/// Why a value could not be sealed or opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BarrierError {
    #[error("sealed value at {path:?} is truncated ({len} bytes)")]
    Truncated { path: String, len: usize },
    #[error("sealed value at {path:?} has unknown version {version}")]
    Version { path: String, version: u8 },
    #[error("sealed value at {path:?} needs key term {term}, which the keyring does not hold")]
    UnknownTerm { path: String, term: u32 },
    #[error("sealed value at {path:?} does not open: wrong key, or the value was altered")]
    Open { path: String },
    #[error("root key file: {0}")]
    RootKey(String),
}

/// A 256-bit AES key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self(key)
    }

    /// Parses a root key file: 32 bytes as 64 hex digits or as base64, surrounding whitespace
    /// ignored.
    pub fn parse_root(text: &str) -> Result<Self, BarrierError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex checked"))
                .collect()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    BarrierError::RootKey("expected 32 bytes as 64 hex digits or as base64".into())
                })?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            BarrierError::RootKey(format!("the key is {} bytes; it must be 32", b.len()))
        })?;
        Ok(Self(key))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("a 32-byte key"))
    }
}

/// Seals `plaintext` for `path` with `key`, tagging it with `term`.
pub fn seal(key: &Key, term: u32, path: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    let mut out = Vec::with_capacity(HEADER + plaintext.len() + 16);
    out.push(VERSION);
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(path.as_bytes()),
            &mut body,
        )
        .expect("AES-GCM sealing cannot fail for in-memory data");
    out.extend_from_slice(&body);
    out
}

/// The key term a sealed value needs.
pub fn term_of(path: &str, sealed: &[u8]) -> Result<u32, BarrierError> {
    if sealed.len() < HEADER + 16 {
        return Err(BarrierError::Truncated {
            path: path.into(),
            len: sealed.len(),
        });
    }
    if sealed[0] != VERSION {
        return Err(BarrierError::Version {
            path: path.into(),
            version: sealed[0],
        });
    }
    Ok(u32::from_be_bytes(
        sealed[1..5].try_into().expect("4 bytes"),
    ))
}

/// Opens a value sealed for `path` with `key`.
pub fn open(key: &Key, path: &str, sealed: &[u8]) -> Result<Vec<u8>, BarrierError> {
    term_of(path, sealed)?;
    let nonce: [u8; NONCE_LEN] = sealed[5..HEADER].try_into().expect("nonce length");
    let mut body = sealed[HEADER..].to_vec();
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(path.as_bytes()),
            &mut body,
        )
        .map_err(|_| BarrierError::Open { path: path.into() })?;
    Ok(plain.to_vec())
}

/// A keyring: every key term ever used, and the one new values are sealed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    pub active: u32,
    /// Term → key, hex.
    keys: BTreeMap<u32, String>,
}

impl Keyring {
    /// A keyring with one fresh key, term 1.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, hex(&Key::random().0));
        Self { active: 1, keys }
    }

    fn key(&self, term: u32) -> Option<Key> {
        let text = self.keys.get(&term)?;
        Key::parse_root(text).ok()
    }

    /// Seals `plaintext` for `path` with the active key.
    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = self
            .key(self.active)
            .expect("the active key is in the keyring");
        seal(&key, self.active, path, plaintext)
    }

    /// Opens a value sealed with any term of this keyring.
    pub fn open(&self, path: &str, sealed: &[u8]) -> Result<Vec<u8>, BarrierError> {
        let term = term_of(path, sealed)?;
        let key = self.key(term).ok_or(BarrierError::UnknownTerm {
            path: path.into(),
            term,
        })?;
        open(&key, path, sealed)
    }

    /// The keyring sealed by the root key, for storage at `path`.
    pub fn seal_with_root(&self, root: &Key, path: &str) -> Vec<u8> {
        seal(
            root,
            ROOT_TERM,
            path,
            &serde_json::to_vec(self).expect("keyring serialises"),
        )
    }

    /// Opens a keyring stored at `path` with the root key.
    pub fn open_with_root(root: &Key, path: &str, sealed: &[u8]) -> Result<Self, BarrierError> {
        let plain = open(root, path, sealed)?;
        serde_json::from_slice(&plain).map_err(|_| BarrierError::Open { path: path.into() })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever storage returns for a sealed path, the keyring opens it or refuses it by
        /// name; a sealed value changed in any byte never opens.
        #[test]
        fn stored_bytes_open_only_as_sealed(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            plain in proptest::collection::vec(any::<u8>(), 0..32),
            at in any::<proptest::sample::Index>(),
            mask in 1..=u8::MAX,
            cut in any::<proptest::sample::Index>(),
        ) {
            let ring = Keyring::generate();
            prop_assert!(ring.open("secret/a", &bytes).is_err());
            let sealed = ring.seal("secret/a", &plain);
            let mut flipped = sealed.clone();
            flipped[at.index(sealed.len())] ^= mask;
            prop_assert!(ring.open("secret/a", &flipped).is_err());
            prop_assert!(ring.open("secret/a", &sealed[..cut.index(sealed.len())]).is_err());
        }

        /// A root key file holds 32 bytes as 64 hex digits or as base64, or it is refused with
        /// a message, whatever the text.
        #[test]
        fn root_key_text_is_32_bytes_or_refused(
            text in prop_oneof![
                ".{0,80}",
                "[0-9a-fA-F]{62,66}",
                proptest::collection::vec(any::<u8>(), 30..34).prop_map(|b| {
                    base64::engine::general_purpose::STANDARD.encode(b)
                }),
            ],
        ) {
            match Key::parse_root(&text) {
                Ok(_) => {
                    let t = text.trim();
                    let hex = t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
                    let b64 = base64::engine::general_purpose::STANDARD
                        .decode(t)
                        .is_ok_and(|b| b.len() == 32);
                    prop_assert!(hex || b64);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn sealed_values_open_only_at_their_path_with_their_key() {
        let ring = Keyring::generate();
        let sealed = ring.seal("secret/a", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ring.open("secret/a", &sealed).unwrap(), b"hunter2");
        assert_eq!(
            ring.open("secret/b", &sealed),
            Err(BarrierError::Open {
                path: "secret/b".into()
            })
        );
        let other = Keyring::generate();
        assert!(other.open("secret/a", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(ring.open("secret/a", &altered).is_err());
        assert!(matches!(
            ring.open("secret/a", &sealed[..10]),
            Err(BarrierError::Truncated { .. })
        ));
    }

    #[test]
    fn keyrings_are_sealed_by_the_root_key() {
        let root = Key::random();
        let ring = Keyring::generate();
        let stored = ring.seal_with_root(&root, "core/keyring");
        assert_eq!(
            Keyring::open_with_root(&root, "core/keyring", &stored).unwrap(),
            ring
        );
        assert!(Keyring::open_with_root(&Key::random(), "core/keyring", &stored).is_err());
    }

    #[test]
    fn root_key_files_are_parsed_or_refused_by_name() {
        let hex_key = "ab".repeat(32);
        assert!(Key::parse_root(&format!("{hex_key}\n")).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Key::parse_root(&b64).is_ok());
        let err = Key::parse_root("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("5 bytes; it must be 32"), "{err}");
        assert!(Key::parse_root("not a key!").is_err());
    }
}
