//! The credentials a test kube-apiserver starts with, made in-process with rcgen.
//!
//! A throw-away CA signs the serving certificate (IP 127.0.0.1 and DNS localhost, so clients
//! verify the server by the address they dial); a separate ECDSA P-256 key pair signs and verifies
//! ServiceAccount tokens (kube-apiserver 1.20 accepts PKCS#8 EC keys for
//! `--service-account-signing-key-file` and PKIX public keys for `--service-account-key-file`);
//! a static token file names one admin user in `system:masters`, which RBAC lets do anything.
//! Nothing here outlives the test: every server gets its own set.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files a kube-apiserver reads at start-up, and what clients need to talk to it.
pub(crate) struct Credentials {
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
    /// The bearer token of the `system:masters` user.
    pub admin_token: String,
    pub ca_file: PathBuf,
    pub serving_cert_file: PathBuf,
    pub serving_key_file: PathBuf,
    pub service_account_key_file: PathBuf,
    pub service_account_public_key_file: PathBuf,
    pub token_file: PathBuf,
}

impl Credentials {
    /// The kube-apiserver flags that serve with these credentials, accept their clients, and
    /// sign and check service-account tokens with their key.
    pub fn apiserver_args(&self) -> [String; 6] {
        [
            format!("--tls-cert-file={}", self.serving_cert_file.display()),
            format!("--tls-private-key-file={}", self.serving_key_file.display()),
            format!("--client-ca-file={}", self.ca_file.display()),
            format!("--token-auth-file={}", self.token_file.display()),
            format!(
                "--service-account-key-file={}",
                self.service_account_public_key_file.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                self.service_account_key_file.display()
            ),
        ]
    }

    /// Generates a fresh set and writes it under `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        Self::generate_for(dir, &["127.0.0.1", "localhost"])
    }

    /// Like [`Self::generate`], with the serving certificate valid for `names` (IP addresses
    /// and DNS names): a real node's API server is reached at its node and Service addresses.
    pub fn generate_for(dir: &Path, names: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;

        let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ferry-test-kube-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("failed to self-sign the CA")?;
        let ca = Issuer::new(ca_params, &ca_key);

        let serving_key = KeyPair::generate().context("failed to generate the serving key")?;
        let mut serving_params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        serving_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving_params
            .signed_by(&serving_key, &ca)
            .context("failed to sign the serving certificate")?;

        let service_account_key =
            KeyPair::generate().context("failed to generate the service-account key")?;

        let admin_token = random_token()?;

        let credentials = Self {
            ca_pem: ca_cert.pem(),
            admin_token,
            ca_file: dir.join("ca.crt"),
            serving_cert_file: dir.join("serving.crt"),
            serving_key_file: dir.join("serving.key"),
            service_account_key_file: dir.join("service-account.key"),
            service_account_public_key_file: dir.join("service-account.pub"),
            token_file: dir.join("tokens.csv"),
        };
        write(&credentials.ca_file, &credentials.ca_pem)?;
        write(&credentials.serving_cert_file, &serving_cert.pem())?;
        write(&credentials.serving_key_file, &serving_key.serialize_pem())?;
        write(
            &credentials.service_account_key_file,
            &service_account_key.serialize_pem(),
        )?;
        write(
            &credentials.service_account_public_key_file,
            &service_account_key.public_key_pem(),
        )?;
        // token,user,uid,"group1,group2"
        write(
            &credentials.token_file,
            &format!(
                "{},ferry-admin,ferry-admin,\"system:masters\"\n",
                credentials.admin_token
            ),
        )?;
        Ok(credentials)
    }
}

/// 32 hex characters from the operating system's random source.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("failed to draw random bytes for the admin token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("failed to write {}", path.display()))
}
