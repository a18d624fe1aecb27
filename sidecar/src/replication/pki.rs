//! The replication CA and the certificates of the cluster port.
//!
//! A primary makes its own CA when it is enabled (ECDSA P-256, self-signed). Every certificate it
//! issues (its own node's, and one per secondary inside each activation token) is valid for both
//! server and client authentication and names the fixed DNS name [`SERVER_NAME`]: peers check the
//! chain to the replication CA, not a host name, because a secondary's address is unknown when its
//! token is issued and it must be able to serve once promoted. The CA travels with the replicated
//! data (see `definition`), so a promoted secondary can go on issuing tokens from the same CA.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The DNS name every cluster-port certificate carries and every client expects.
pub const SERVER_NAME: &str = "ferry-replication";
/// How long the CA and the certificates it issues stay valid, from 2025.
const VALIDITY_YEARS: i32 = 25;

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
    /// A fingerprint of the certificate: how the primary recognises the secondary presenting it.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint_pem(&self.cert_pem)
    }
}

/// The BLAKE3 hash of a PEM certificate's DER bytes, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    let der = pem_to_der(pem)?;
    Ok(fingerprint_der(&der))
}

pub fn fingerprint_der(der: &[u8]) -> String {
    blake3::hash(der).to_hex().to_string()
}

/// The replication CA of one replication set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCa {
    /// The replication set's cluster id, part of the CA's name.
    pub cluster_id: String,
    #[serde(flatten)]
    pub key: CertifiedKey,
}

impl ReplicationCa {
    /// A fresh CA for the replication set `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster_id)?.self_signed(&key)?;
        Ok(Self {
            cluster_id: cluster_id.to_owned(),
            key: CertifiedKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    fn signing_key(&self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::from_pem(&self.key.key_pem)?)
    }

    /// A certificate for `common_name`, signed by this CA, valid as server and client.
    pub fn issue(&self, common_name: &str) -> Result<CertifiedKey, PkiError> {
        let issuer = Issuer::new(ca_params(&self.cluster_id)?, self.signing_key()?);
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs `message` with the CA key (ECDSA P-256, fixed-size signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let der = self.signing_key()?.serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| PkiError(format!("CA key unusable for signing: {e}")))?;
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| PkiError(format!("signing failed: {e}")))
    }

    /// The CA's public key (uncompressed P-256 point), which verifies its signatures.
    pub fn public_key(&self) -> Result<Vec<u8>, PkiError> {
        Ok(self.signing_key()?.public_key_raw().to_vec())
    }
}

/// Whether `signature` over `message` verifies with the P-256 public key `public_key`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(message, signature)
        .is_ok()
}

fn ca_params(cluster_id: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("ferry replication CA {cluster_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
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

/// A fixed window from 2025 on: peers' clocks may disagree by minutes or more, and a replication
/// link must not fail on that; revocation is by secondary id, not by expiry.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025 + VALIDITY_YEARS, 1, 1);
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
    use super::*;

    #[test]
    fn issued_certificates_differ_and_signatures_verify() {
        let ca = ReplicationCa::generate("c1").unwrap();
        let a = ca.issue("node-a").unwrap();
        let b = ca.issue("node-b").unwrap();
        assert_ne!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        let sig = ca.sign(b"message").unwrap();
        let key = ca.public_key().unwrap();
        assert!(verify(&key, b"message", &sig));
        assert!(!verify(&key, b"massage", &sig));
        let other = ReplicationCa::generate("c1").unwrap();
        assert!(!verify(&other.public_key().unwrap(), b"message", &sig));
    }
}
