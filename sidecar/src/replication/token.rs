//! Activation tokens: how a primary admits a named secondary.
//!
//! A token is `ferry1.<claims>.<signature>`: the claims are JSON, base64url without padding, and
//! the signature is ECDSA P-256 (fixed-size) by the primary's CA key over the claims' base64
//! text. The claims carry what the secondary needs to reach the primary and to know it: the
//! primary's cluster address and its CA certificate, which pins the primary (only it can serve a
//! certificate chained to that CA). The CA's public key rides along, so the secondary can tell a
//! tampered token before it dials anything.
//!
//! A token carries no key and no certificate. It is a single-use credential: the secondary
//! presents it with a certificate signing request for a key it made itself, and the primary signs
//! a short-lived client certificate for that key. The primary stores only the token's hash, so
//! neither its storage nor a used token (in a Git history, say) gets anyone a certificate.
//!
//! Checks happen on both sides. The secondary decodes the token (garbled?), checks the
//! signature against the embedded key (wrongly signed?) and the expiry (expired?). The primary,
//! which alone knows, checks that its own CA signed it (foreign?), that the id still has this
//! token outstanding (revoked?) and that it was not used before (replayed?). Each failure has
//! its own [`TokenError`] variant, whose message says which.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::pki::{ReplicationCa, verify};

const PREFIX: &str = "ferry1.";
/// Longest token accepted: the CA certificate makes a token about 1.5 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What an activation token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Unique per token: lets the primary tell a replay, or a superseded token, from the current one.
    pub token_id: String,
    /// The secondary id the token admits.
    pub secondary_id: String,
    /// The replication set's cluster id.
    pub cluster_id: String,
    /// Where the secondary reaches the primary's cluster port.
    pub primary_cluster_addr: String,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
    pub ca_cert_pem: String,
    /// The CA's public key, base64url: verifies the signature.
    pub signing_key: String,
}

/// Why a token was refused. Every variant is the caller's fault: a 400.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("activation token is garbled: {0}")]
    Garbled(String),
    #[error("activation token is wrongly signed: its signature does not verify")]
    BadSignature,
    #[error(
        "activation token expired at {expired_at} (unix seconds); ask the primary for a new one"
    )]
    Expired { expired_at: u64 },
    #[error("activation token was issued by another replication cluster ({0}), not this primary")]
    Foreign(String),
    #[error("activation token for secondary {0:?} was revoked or replaced by a newer token")]
    Revoked(String),
    #[error("activation token for secondary {0:?} was already used")]
    Replayed(String),
}

impl TokenClaims {
    /// Signs the claims with the replication CA.
    pub fn sign(&self, ca: &ReplicationCa) -> Result<String, super::pki::PkiError> {
        let claims = B64.encode(serde_json::to_vec(self).expect("claims serialise"));
        let signature = ca.sign(claims.as_bytes())?;
        Ok(format!("{PREFIX}{claims}.{}", B64.encode(signature)))
    }

    /// Decodes `token` and checks its own signature and its expiry at `now` (unix seconds).
    pub fn verify(token: &str, now: u64) -> Result<Self, TokenError> {
        let (claims, signature) = split(token)?;
        let decoded: Self = serde_json::from_slice(
            &B64.decode(claims)
                .map_err(|e| TokenError::Garbled(format!("claims are not base64url: {e}")))?,
        )
        .map_err(|e| TokenError::Garbled(format!("claims are not valid: {e}")))?;
        let key = B64
            .decode(&decoded.signing_key)
            .map_err(|e| TokenError::Garbled(format!("signing key is not base64url: {e}")))?;
        if !verify(&key, claims.as_bytes(), &signature) {
            return Err(TokenError::BadSignature);
        }
        if now >= decoded.expires_at {
            return Err(TokenError::Expired {
                expired_at: decoded.expires_at,
            });
        }
        Ok(decoded)
    }

    /// What the primary stores of a token: its hash, hex, never the token.
    pub fn hash(token: &str) -> String {
        blake3::hash(token.trim().as_bytes()).to_hex().to_string()
    }

    /// The primary's check: the token must be signed by its own CA `ca`.
    pub fn verify_issued_by(token: &str, ca: &ReplicationCa, now: u64) -> Result<Self, TokenError> {
        let claims = Self::verify(token, now)?;
        let (text, signature) = split(token)?;
        let ours = ca
            .public_key()
            .map_err(|e| TokenError::Garbled(e.to_string()))?;
        if claims.cluster_id != ca.cluster_id || !verify(&ours, text.as_bytes(), &signature) {
            return Err(TokenError::Foreign(claims.cluster_id));
        }
        Ok(claims)
    }
}

fn split(token: &str) -> Result<(&str, Vec<u8>), TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Garbled(format!(
            "{} bytes, over the limit of {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or_else(|| TokenError::Garbled(format!("it does not start with {PREFIX:?}")))?;
    let (claims, signature) = rest
        .split_once('.')
        .ok_or_else(|| TokenError::Garbled("it has no signature part".into()))?;
    let signature = B64
        .decode(signature)
        .map_err(|e| TokenError::Garbled(format!("signature is not base64url: {e}")))?;
    Ok((claims, signature))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn claims(ca: &ReplicationCa, expires_at: u64) -> TokenClaims {
        TokenClaims {
            token_id: "t1".into(),
            secondary_id: "east".into(),
            cluster_id: ca.cluster_id.clone(),
            primary_cluster_addr: "127.0.0.1:8201".into(),
            issued_at: 100,
            expires_at,
            ca_cert_pem: ca.key.cert_pem.clone(),
            signing_key: B64.encode(ca.public_key().unwrap()),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let ca = ReplicationCa::generate("c1", "west").unwrap();
        let token = claims(&ca, 200).sign(&ca).unwrap();
        assert_eq!(
            TokenClaims::verify(&token, 150).unwrap().secondary_id,
            "east"
        );
        assert_eq!(
            TokenClaims::verify(&token, 200),
            Err(TokenError::Expired { expired_at: 200 })
        );
        assert!(TokenClaims::verify_issued_by(&token, &ca, 150).is_ok());
    }

    /// One CA and one valid token (expiring at 200) for the properties: making a CA is slow.
    fn signed() -> &'static (ReplicationCa, String) {
        static SIGNED: std::sync::OnceLock<(ReplicationCa, String)> = std::sync::OnceLock::new();
        SIGNED.get_or_init(|| {
            let ca = ReplicationCa::generate("c1", "west").unwrap();
            let token = claims(&ca, 200).sign(&ca).unwrap();
            (ca, token)
        })
    }

    /// Both sides' checks of `token` at time 150: the secondary's and the primary's.
    fn both_checks(token: &str) -> [Result<TokenClaims, TokenError>; 2] {
        [
            TokenClaims::verify(token, 150),
            TokenClaims::verify_issued_by(token, &signed().0, 150),
        ]
    }

    /// A change to a token's text: a character replaced, the end cut or garbage appended.
    fn damaged(token: &str, at: prop::sample::Index, with: char, how: u8) -> String {
        let at = at.index(token.len());
        match how % 3 {
            0 => format!("{}{with}{}", &token[..at], &token[at + 1..]),
            1 => token[..at].to_owned(),
            _ => format!("{token}{with}"),
        }
    }

    proptest! {
        /// Whatever a caller pastes as a token, both checks refuse it, and never panic.
        #[test]
        fn arbitrary_text_is_refused(text in ".{0,300}") {
            for result in both_checks(&text) {
                prop_assert!(result.is_err());
            }
        }

        /// A token of the right shape whose parts are random bytes, or valid claims with a
        /// random signing key and signature, is refused: garbled or wrongly signed.
        #[test]
        fn right_shaped_tokens_with_random_parts_are_refused(
            claims_bytes in proptest::collection::vec(any::<u8>(), 0..300),
            key in proptest::collection::vec(any::<u8>(), 0..80),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let random = format!("{PREFIX}{}.{}", B64.encode(&claims_bytes), B64.encode(&signature));
            let mut forged = claims(&signed().0, 200);
            forged.signing_key = B64.encode(&key);
            let forged = format!(
                "{PREFIX}{}.{}",
                B64.encode(serde_json::to_vec(&forged).unwrap()),
                B64.encode(&signature)
            );
            for token in [random, forged] {
                for result in both_checks(&token) {
                    prop_assert!(matches!(
                        result,
                        Err(TokenError::Garbled(_) | TokenError::BadSignature)
                    ), "{result:?}");
                }
            }
        }

        /// Any change to a valid token's text makes it invalid on both sides: the signature
        /// covers every character of the claims, and the signature's own text has one decoding.
        #[test]
        fn a_changed_token_is_refused(
            at in any::<prop::sample::Index>(),
            with in "[A-Za-z0-9_.=+/ -]",
            how: u8,
        ) {
            let token = &signed().1;
            let changed = damaged(token, at, with.chars().next().unwrap(), how);
            prop_assume!(changed.trim() != token);
            for result in both_checks(&changed) {
                prop_assert!(result.is_err(), "{changed:?} was accepted");
            }
        }
    }

    #[test]
    fn an_oversized_token_is_refused_before_it_is_decoded() {
        let token = format!("{PREFIX}{}", "A".repeat(MAX_TOKEN_BYTES));
        let Err(TokenError::Garbled(why)) = TokenClaims::verify(&token, 150) else {
            panic!("an oversized token was not refused as garbled");
        };
        assert!(why.contains("over the limit"), "{why}");
    }

    #[test]
    fn each_defect_is_named() {
        let ca = ReplicationCa::generate("c1", "west").unwrap();
        let token = claims(&ca, 200).sign(&ca).unwrap();
        assert!(matches!(
            TokenClaims::verify("hello", 150),
            Err(TokenError::Garbled(_))
        ));
        assert!(matches!(
            TokenClaims::verify(&token[..token.len() - 10], 150),
            Err(TokenError::Garbled(_) | TokenError::BadSignature)
        ));
        // Change the claims but keep the signature.
        let mut forged = claims(&ca, 10_000);
        forged.secondary_id = "west".into();
        let forged_text = forged.sign(&ca).unwrap();
        let (_, sig) = token.rsplit_once('.').unwrap();
        let (claims_part, _) = forged_text.rsplit_once('.').unwrap();
        assert_eq!(
            TokenClaims::verify(&format!("{claims_part}.{sig}"), 150),
            Err(TokenError::BadSignature)
        );
        // Signed by another CA with a consistent embedded key: valid alone, foreign to us.
        let other = ReplicationCa::generate("c2", "west").unwrap();
        let foreign = claims(&other, 200).sign(&other).unwrap();
        assert!(TokenClaims::verify(&foreign, 150).is_ok());
        assert!(matches!(
            TokenClaims::verify_issued_by(&foreign, &ca, 150),
            Err(TokenError::Foreign(_))
        ));
    }
}
