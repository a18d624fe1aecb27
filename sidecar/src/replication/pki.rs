//! Keys and certificates of the cluster port.
//!
//! Every member of a replication set (the primary and each secondary) makes, when it joins, a key
//! of its own and a CA of its own (ECDSA P-256); neither ever leaves its cluster (both are stored
//! sealed, on a local path). A member's CA issues exactly one kind of certificate for others:
//!
//! * **its own server certificate** (server authentication only, the fixed DNS name
//!   [`SERVER_NAME`]), with which its cluster port serves; only the holder of a CA's key can
//!   serve a certificate that chains to it. A secondary trusts one CA for its primary's servers
//!   (`ClusterDefinition::primary_ca_cert_pem`): the one its activation token names, later the
//!   one of the member a new primary proves to be when an operator names it (update-primary by
//!   address), or the one its former primary hands over after a planned switchover (in
//!   `RemoteResolve`). No other member can pose as its primary. Every member's CA is trusted
//!   only where any member may answer: a primary asking its secondaries which epoch they know,
//!   a secondary probing the addresses it was told for a new primary.
//! * **client certificates** (client authentication only, short-lived), which the primary's CA
//!   signs for each secondary's certificate signing request: at activation, with the single-use
//!   token as credential, and at half-life afterwards over the live connection. A primary signs
//!   its own client certificate the same way, for when it follows another primary.
//!
//! A server recognises a caller by the public key in its client certificate, which must be the
//! key recorded for the member id it names (see `SecondaryRecord::key_fingerprint`): a
//! certificate another member's CA signed for a foreign key proves nothing without that key.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The DNS name every cluster-port server certificate carries and every client expects.
pub const SERVER_NAME: &str = "ferry-replication";
/// How long a CA and a member's server certificate stay valid, from 2025: both belong to one
/// cluster and never leave it.
const VALIDITY_YEARS: i32 = 25;
/// How far back a client certificate's validity starts: peers' clocks may disagree by minutes.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(300);
/// Largest certificate signing request accepted, PEM.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Why a certificate or key could not be made or read.
#[derive(Debug, Error)]
#[error("replication PKI: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

/// A certificate with its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertifiedKey {
    /// The fingerprint of this certificate's public key (see [`key_fingerprint_of_cert`]).
    pub fn key_fingerprint(&self) -> Result<String, PkiError> {
        key_fingerprint_of_cert(&pem_to_der(&self.cert_pem)?)
    }

    /// A certificate signing request for this key (the name in it is ignored by the signer).
    pub fn csr_pem(&self) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let params = CertificateParams::new(Vec::<String>::new())?;
        Ok(params.serialize_request(&key)?.pem()?)
    }
}

/// A new private key, PEM: a member's own key, made where it is used.
pub fn generate_key_pem() -> Result<String, PkiError> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// The fingerprint of a raw public key: BLAKE3 of its bytes, hex.
pub fn key_fingerprint(public_key: &[u8]) -> String {
    blake3::hash(public_key).to_hex().to_string()
}

/// The fingerprint of the public key in a DER certificate.
pub fn key_fingerprint_of_cert(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError(format!("certificate does not parse: {e}")))?;
    Ok(key_fingerprint(
        &cert.tbs_certificate.subject_pki.subject_public_key.data,
    ))
}

/// When a PEM certificate stops being valid, and how long it was valid for (unix seconds).
pub fn validity_of(cert_pem: &str) -> Result<(u64, u64), PkiError> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError(format!("certificate does not parse: {e}")))?;
    let v = cert.validity();
    let from = v.not_before.timestamp().max(0) as u64;
    let to = v.not_after.timestamp().max(0) as u64;
    Ok((from, to))
}

/// Checks that `pem` is one self-signed CA certificate: what a member may offer as its CA.
pub fn check_ca_cert(pem: &str) -> Result<(), PkiError> {
    let der = pem_to_der(pem)?;
    let (rest, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError(format!("CA certificate does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError("CA certificate has trailing bytes".into()));
    }
    if !cert.is_ca() {
        return Err(PkiError(
            "the certificate offered as a CA is not one".into(),
        ));
    }
    cert.verify_signature(None)
        .map_err(|e| PkiError(format!("CA certificate is not self-signed: {e}")))?;
    Ok(())
}

/// One member's CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCa {
    /// The replication set's cluster id, part of the CA's name.
    pub cluster_id: String,
    /// The member id this CA belongs to, part of its name.
    #[serde(default)]
    pub member: String,
    #[serde(flatten)]
    pub key: CertifiedKey,
}

impl ReplicationCa {
    /// A fresh CA for member `member` of the replication set `cluster_id`.
    pub fn generate(cluster_id: &str, member: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster_id, member)?.self_signed(&key)?;
        Ok(Self {
            cluster_id: cluster_id.to_owned(),
            member: member.to_owned(),
            key: CertifiedKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        Ok(Issuer::new(
            ca_params(&self.cluster_id, &self.member)?,
            KeyPair::from_pem(&self.key.key_pem)?,
        ))
    }

    /// This member's server certificate for its own key `key_pem`: server authentication only.
    pub fn issue_server(&self, key_pem: &str) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        params.distinguished_name = name(&format!("member {}", self.member));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// Signs `csr_pem` (whose own signature must verify: proof the caller holds the key) as a
    /// client certificate for member `member`, valid for `lifetime` from `now` (unix seconds).
    /// Nothing the request asks for is copied: the name, usages and validity are the signer's.
    /// Returns the certificate and the fingerprint of its key.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        member: &str,
        lifetime: Duration,
        now: u64,
    ) -> Result<(String, String), PkiError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(PkiError(format!(
                "certificate signing request is {} bytes, over the limit of {MAX_CSR_BYTES}",
                csr_pem.len()
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError(format!("certificate signing request is invalid: {e}")))?;
        let fingerprint = key_fingerprint(csr.public_key.der_bytes());
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(&format!("member {member}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = at(now.saturating_sub(CLOCK_SKEW_ALLOWANCE.as_secs()));
        params.not_after = at(now.saturating_add(lifetime.as_secs()));
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok((cert.pem(), fingerprint))
    }

    /// Signs `message` with the CA key (ECDSA P-256, fixed-size signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let der = KeyPair::from_pem(&self.key.key_pem)?.serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| PkiError(format!("CA key unusable for signing: {e}")))?;
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| PkiError(format!("signing failed: {e}")))
    }

    /// The CA's public key (uncompressed P-256 point), which verifies its signatures.
    pub fn public_key(&self) -> Result<Vec<u8>, PkiError> {
        Ok(KeyPair::from_pem(&self.key.key_pem)?
            .public_key_raw()
            .to_vec())
    }
}

/// Whether `signature` over `message` verifies with the P-256 public key `public_key`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Whether `signature` over `message` verifies with the key of the CA certificate `ca_cert_pem`.
pub fn verify_by_ca_cert(ca_cert_pem: &str, message: &[u8], signature: &[u8]) -> bool {
    let Ok(der) = pem_to_der(ca_cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    verify(
        &cert.tbs_certificate.subject_pki.subject_public_key.data,
        message,
        signature,
    )
}

fn ca_params(cluster_id: &str, member: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("ferry replication CA {cluster_id} {member}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params);
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferry");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A fixed window from 2025 on, for what never leaves its cluster (a CA, a server certificate):
/// peers' clocks may disagree, and a replication link must not fail on that.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025 + VALIDITY_YEARS, 1, 1);
}

fn at(unix_seconds: u64) -> time::OffsetDateTime {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| PkiError(format!("certificate is not valid PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ca() -> &'static ReplicationCa {
        static CA: std::sync::OnceLock<ReplicationCa> = std::sync::OnceLock::new();
        CA.get_or_init(|| ReplicationCa::generate("c1", "west").unwrap())
    }

    proptest! {
        /// What a peer sends as a certificate signing request or a CA certificate, and what
        /// a TLS peer presents, is refused when it is not one, and never panics.
        #[test]
        fn random_requests_and_certificates_are_refused(
            text in ".{0,400}",
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let csr = format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
            let cert = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            for pem in [&text, &csr] {
                prop_assert!(ca().sign_client(pem, "east", Duration::from_secs(60), 0).is_err());
            }
            for pem in [&text, &cert] {
                prop_assert!(check_ca_cert(pem).is_err());
                prop_assert!(validity_of(pem).is_err());
                prop_assert!(!verify_by_ca_cert(pem, b"m", &bytes));
            }
            prop_assert!(key_fingerprint_of_cert(&bytes).is_err());
        }
    }

    #[test]
    fn signatures_verify_with_the_cas_key_only() {
        let ca = ReplicationCa::generate("c1", "west").unwrap();
        let sig = ca.sign(b"message").unwrap();
        let key = ca.public_key().unwrap();
        assert!(verify(&key, b"message", &sig));
        assert!(!verify(&key, b"massage", &sig));
        let other = ReplicationCa::generate("c1", "west").unwrap();
        assert!(!verify(&other.public_key().unwrap(), b"message", &sig));
        assert!(verify_by_ca_cert(&ca.key.cert_pem, b"message", &sig));
        assert!(!verify_by_ca_cert(&other.key.cert_pem, b"message", &sig));
        assert!(!verify_by_ca_cert("garbage", b"message", &sig));
    }

    #[test]
    fn a_client_certificate_holds_the_requesters_key_and_expires_when_asked() {
        let ca = ReplicationCa::generate("c1", "west").unwrap();
        let key = generate_key_pem().unwrap();
        let mine = CertifiedKey {
            cert_pem: String::new(),
            key_pem: key.clone(),
        };
        let (cert, fingerprint) = ca
            .sign_client(
                &mine.csr_pem().unwrap(),
                "east",
                Duration::from_secs(60),
                1_000_000,
            )
            .unwrap();
        let issued = CertifiedKey {
            cert_pem: cert.clone(),
            key_pem: key,
        };
        assert_eq!(issued.key_fingerprint().unwrap(), fingerprint);
        assert_eq!(
            validity_of(&cert).unwrap(),
            (1_000_000 - CLOCK_SKEW_ALLOWANCE.as_secs(), 1_000_060)
        );
        check_ca_cert(&ca.key.cert_pem).unwrap();
        assert!(
            check_ca_cert(&cert).is_err(),
            "a client certificate is no CA"
        );
        // Client authentication only: a secondary cannot serve with what the primary signs.
        let der = pem_to_der(&cert).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let usage = parsed
            .extended_key_usage()
            .unwrap()
            .expect("an extended key usage")
            .value;
        assert!(
            usage.client_auth && !usage.server_auth && !usage.any,
            "{usage:?}"
        );
    }

    #[test]
    fn a_garbled_or_oversized_request_is_refused() {
        let ca = ReplicationCa::generate("c1", "west").unwrap();
        let day = Duration::from_secs(86_400);
        assert!(ca.sign_client("hello", "east", day, 0).is_err());
        let big = "A".repeat(MAX_CSR_BYTES + 1);
        let why = ca
            .sign_client(&big, "east", day, 0)
            .unwrap_err()
            .to_string();
        assert!(why.contains("over the limit"), "{why}");
        // A request whose signature does not match its key: one byte of the signature changed.
        let csr = CertifiedKey {
            cert_pem: String::new(),
            key_pem: generate_key_pem().unwrap(),
        }
        .csr_pem()
        .unwrap();
        let lines: Vec<&str> = csr.lines().collect();
        let last = lines.len() - 2;
        let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let flipped = if changed[last].starts_with('A') {
            'B'
        } else {
            'A'
        };
        changed[last].replace_range(0..1, &flipped.to_string());
        assert!(ca.sign_client(&changed.join("\n"), "east", day, 0).is_err());
    }
}
