//! Sealing what the sidecar stores that would let a reader of etcd act as this cluster: its own
//! replication CA and its cluster definition (its identity), each with a private key.
//!
//! They are stored as storage values like any other, so without sealing anyone who can read a
//! region's etcd (a backup, a snapshot, a too-broad RBAC rule) could present this cluster's
//! certificate to its peers. So each such value is sealed with AES-256-GCM under a
//! key-encryption key (KEK) that is not in etcd: a file (`--key-encryption-key-file`, 32 bytes as
//! 64 hex digits; readable by its owner only) that the chart mounts from a Kubernetes Secret.
//! Both values are local to their cluster (never replicated), so nothing sealed leaves the
//! region that sealed it and each region could have a KEK of its own; the chart's examples
//! share one per replication set, as they share the root key.
//!
//! ```text
//! "FSEL" frame (see codec): 12 nonce, then ciphertext and 16-byte tag
//! ```
//!
//! The additional data is the storage path, so a sealed value moved to another path does not
//! open. A value that is not sealed (JSON from a version that did not seal) is read as it is, and
//! sealed when the active node next starts (`Replication::start`).

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use thiserror::Error;

use crate::codec::{Reader, Writer};

const MAGIC: &[u8; 4] = b"FSEL";

/// Why a sealed value or the KEK file could not be used.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("key-encryption key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "the sealed value at {path} does not open with this key-encryption key (another KEK, or altered)"
    )]
    WrongKey { path: String },
    #[error("the sealed value at {path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
}

/// The key-encryption key.
pub struct KeyEncryptionKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(..)")
    }
}

impl KeyEncryptionKey {
    /// Reads the KEK from `path`: 64 hex digits, readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let fail = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        crate::etcd_connect::check_private(path).map_err(|e| fail(format!("{e:#}")))?;
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::from_hex(text.trim()).map_err(fail)
    }

    /// The KEK from 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "must hold 32 bytes as 64 hex digits, not {} characters",
                hex.len()
            ));
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte key");
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `plaintext`, to be stored at storage `path`.
    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("no randomness for a nonce");
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(path.as_bytes()),
                &mut sealed,
            )
            .expect("sealing cannot fail for values of this size");
        let mut w = Writer::new(MAGIC, NONCE_LEN + sealed.len());
        w.put_bytes(&nonce);
        w.put_bytes(&sealed);
        w.finish()
    }

    /// Opens a value read from storage `path`: sealed values are opened, values stored before
    /// sealing existed are returned as they are.
    pub fn open(&self, path: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        if !is_sealed(stored) {
            return Ok(stored.to_vec());
        }
        let malformed = |reason: String| SealError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let mut r =
            Reader::open("sealed value", MAGIC, stored).map_err(|e| malformed(e.to_string()))?;
        let nonce: [u8; NONCE_LEN] = r.array("nonce").map_err(|e| malformed(e.to_string()))?;
        let mut buf = r.rest().to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(path.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::WrongKey {
                path: path.to_owned(),
            })?;
        Ok(plain.to_vec())
    }
}

/// Whether `stored` is a sealed value.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::damage::{damages, framed, reframed};

    proptest! {
        /// Whatever etcd holds at a sealed path, opening it is an error or a value: a value as
        /// stored when it is not sealed, never a panic.
        #[test]
        fn any_stored_bytes_open_or_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let k = kek('a');
            match k.open("core/perf-replication/ca", &bytes) {
                Ok(plain) => prop_assert!(!is_sealed(&bytes) && plain == bytes),
                Err(_) => prop_assert!(is_sealed(&bytes)),
            }
            // A well-framed sealed value with any content but a real seal does not open.
            prop_assert!(k.open("core/perf-replication/ca", &framed(MAGIC, &body)).is_err());
        }

        /// A sealed value changed in any way, even with its frame's checksum made right again,
        /// does not open.
        #[test]
        fn damaged_sealed_values_never_open(
            plain in proptest::collection::vec(any::<u8>(), 0..64),
            damages in damages(),
        ) {
            let k = kek('a');
            let sealed = k.seal("core/perf-replication/ca", &plain);
            let damaged = reframed(&sealed, &damages);
            prop_assume!(damaged != sealed);
            prop_assert!(k.open("core/perf-replication/ca", &damaged).is_err());
        }

        /// The KEK file's text is 64 hex digits or refused with its length, whatever it holds.
        #[test]
        fn kek_text_is_64_hex_digits_or_refused(text in prop_oneof![".{0,80}", "[0-9a-fA-F]{62,66}"]) {
            let valid = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
            prop_assert_eq!(KeyEncryptionKey::from_hex(&text).is_ok(), valid);
        }
    }

    fn kek(byte: char) -> KeyEncryptionKey {
        KeyEncryptionKey::from_hex(&byte.to_string().repeat(64)).unwrap()
    }

    #[test]
    fn sealed_values_open_at_their_path_with_their_key_only() {
        let k = kek('a');
        let sealed = k.seal("core/perf-replication/ca", b"-----BEGIN PRIVATE KEY-----");
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(
            k.open("core/perf-replication/ca", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(matches!(
            k.open("core/cluster/replicated/info", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        assert!(matches!(
            kek('b').open("core/perf-replication/ca", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        let mut flipped = sealed.clone();
        flipped[10] ^= 1;
        assert!(k.open("core/perf-replication/ca", &flipped).is_err());
        // Two seals of the same value differ (fresh nonces).
        assert_ne!(
            sealed,
            k.seal("core/perf-replication/ca", b"-----BEGIN PRIVATE KEY-----")
        );
    }

    #[test]
    fn unsealed_values_from_before_sealing_are_read_as_they_are() {
        assert_eq!(
            kek('a').open("p", b"{\"mode\":\"primary\"}").unwrap(),
            b"{\"mode\":\"primary\"}"
        );
    }

    #[test]
    fn kek_files_must_be_64_hex_digits() {
        assert!(KeyEncryptionKey::from_hex(&"0f".repeat(32)).is_ok());
        assert!(KeyEncryptionKey::from_hex("abc").is_err());
        assert!(KeyEncryptionKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
