//! ferry-vault's listener over TLS: real clients (hvac, rustls) verify it against the CA, a plain
//! HTTP client gets nothing, a renewed certificate (files replaced in place, or a Kubernetes
//! Secret volume the kubelet updates by swapping its `..data` link) is served without a restart
//! while a broken one is not, and a key others can read, or one that does not belong to the
//! certificate, stops start-up with a message that names it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::hvac::run_script;
use ferry_tests::pki::{CertFiles, TestPki, client_config};
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::VaultServer;
use ferry_tests::wait_for;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const ROOT_TOKEN: &str = "hvs.tls-test-root";
const ROOT_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// How long a renewed certificate may take to be served (the watcher looks every 2 s).
const RELOAD_WITHIN: Duration = Duration::from_secs(15);

struct TlsVault {
    pki: TestPki,
    cert: CertFiles,
    vault: VaultServer,
    _sidecar: Sidecar,
    _etcd: EtcdServer,
}

async fn tls_vault() -> anyhow::Result<TlsVault> {
    let pki = TestPki::new("vault")?;
    let cert = pki.server("vault")?;
    tls_vault_serving(pki, cert).await
}

/// ferry-vault on its own sidecar and etcd, serving `cert`'s files (which `pki` issued).
async fn tls_vault_serving(pki: TestPki, cert: CertFiles) -> anyhow::Result<TlsVault> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let vault = VaultServer::start_with(
        &sidecar,
        ROOT_KEY,
        ROOT_TOKEN,
        Some((cert.clone(), &pki.ca)),
    )
    .await?;
    Ok(TlsVault {
        pki,
        cert,
        vault,
        _sidecar: sidecar,
        _etcd: etcd,
    })
}

/// The certificate the server at `base` (`https://127.0.0.1:<port>`) presents, as DER.
async fn served_certificate(base: &str, ca: &Path) -> anyhow::Result<Vec<u8>> {
    let address = base.trim_start_matches("https://");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca)?));
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let (_, connection) = tls.get_ref();
    let chain = connection
        .peer_certificates()
        .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
    Ok(chain[0].to_vec())
}

/// Waits until `t`'s ferry-vault serves the certificate `expected` (DER).
async fn wait_served(t: &TlsVault, expected: &[u8]) -> anyhow::Result<()> {
    let base = t.vault.api.base().to_owned();
    wait_for(
        "the renewed certificate to be served",
        RELOAD_WITHIN,
        || {
            let (base, ca) = (base.clone(), t.pki.ca.clone());
            async move { (served_certificate(&base, &ca).await.ok()? == expected).then_some(()) }
        },
    )
    .await
}

fn der_of(cert: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_file(cert)?.to_vec())
}

/// Replaces `target`'s files by `source`'s, each by an atomic rename, as a Secret update does.
fn replace_files(source: &CertFiles, target: &CertFiles) -> anyhow::Result<()> {
    for (from, to) in [(&source.key, &target.key), (&source.cert, &target.cert)] {
        let staged = to.with_extension("staged");
        std::fs::copy(from, &staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, to)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_ca_reach_ferry_vault_over_tls() -> anyhow::Result<()> {
    let t = tls_vault().await?;
    let base = t.vault.api.base().to_owned();
    assert!(base.starts_with("https://"), "{base}");
    let health = t.vault.api.get("/v1/sys/health").await?;
    assert_eq!(health.status, 200);
    // Plain HTTP gets no answer from the TLS port.
    let plain = JsonClient::new(base.replacen("https://", "http://", 1));
    assert!(
        plain.get("/v1/sys/health").await.is_err(),
        "plain HTTP was answered"
    );
    let env = [
        ("VAULT_ADDR", base),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
        ("VAULT_CACERT", t.pki.ca.display().to_string()),
    ];
    run_script("tls_hvac.py", &env, || t.vault.log()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not()
-> anyhow::Result<()> {
    let t = tls_vault().await?;
    let base = t.vault.api.base().to_owned();
    assert_eq!(
        served_certificate(&base, &t.pki.ca).await?,
        der_of(&t.cert.cert)?
    );

    let renewed = t.pki.server("vault-renewed")?;
    replace_files(&renewed, &t.cert)?;
    let expected = der_of(&renewed.cert)?;
    wait_served(&t, &expected).await?;

    // A half-written certificate: reported, and the renewed one stays in service.
    std::fs::write(&t.cert.cert, "-----BEGIN CERTIFICATE-----\nbroken\n")?;
    wait_for(
        "the broken certificate to be reported",
        RELOAD_WITHIN,
        || {
            let log = t.vault.log();
            async move {
                log.contains("do not load; still serving the previous certificate")
                    .then_some(())
            }
        },
    )
    .await?;
    assert_eq!(served_certificate(&base, &t.pki.ca).await?, expected);
    assert_eq!(t.vault.api.get("/v1/sys/health").await?.status, 200);
    Ok(())
}

/// Writes `pair` into `volume` as the kubelet writes a Secret volume: the files in a new
/// `..<generation>` directory, `..data` swapped to it by one rename, `tls.crt` and `tls.key`
/// links through `..data`. The key is root's and readable by its group (0440), as for a pod's
/// fsGroup; a test run by another user keeps it owner-only. Returns the paths to serve.
fn write_secret_volume(
    volume: &Path,
    generation: &str,
    pair: &CertFiles,
) -> anyhow::Result<CertFiles> {
    use std::os::unix::fs::{MetadataExt, symlink};
    let data = volume.join(format!("..{generation}"));
    std::fs::create_dir(&data)?;
    std::fs::copy(&pair.cert, data.join("tls.crt"))?;
    let key = data.join("tls.key");
    std::fs::copy(&pair.key, &key)?;
    let mode = if std::fs::metadata(&key)?.uid() == 0 {
        0o440
    } else {
        0o400
    };
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))?;
    let staged = volume.join("..data_tmp");
    symlink(format!("..{generation}"), &staged)?;
    std::fs::rename(&staged, volume.join("..data"))?;
    for name in ["tls.crt", "tls.key"] {
        let link = volume.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link)?;
        }
    }
    Ok(CertFiles {
        cert: volume.join("tls.crt"),
        key: volume.join("tls.key"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_the_kubelet_updates_is_served_without_a_restart() -> anyhow::Result<()> {
    let pki = TestPki::new("vault")?;
    let volume = tempfile::tempdir()?;
    let files = write_secret_volume(volume.path(), "2026_12_06_1", &pki.server("vault")?)?;
    let t = tls_vault_serving(pki, files).await?;
    let base = t.vault.api.base().to_owned();
    assert_eq!(
        served_certificate(&base, &t.pki.ca).await?,
        der_of(&t.cert.cert)?
    );

    let renewed = t.pki.server("vault-renewed")?;
    write_secret_volume(volume.path(), "2026_12_06_2", &renewed)?;
    wait_served(&t, &der_of(&renewed.cert)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", t.vault.log()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_key_others_can_read_or_of_another_certificate_stops_start_up() -> anyhow::Result<()>
{
    let mut t = tls_vault().await?;
    std::fs::set_permissions(&t.cert.key, std::fs::Permissions::from_mode(0o644))?;
    let log = t.vault.restart_expecting_failure().await?;
    assert!(log.contains("TLS key file"), "{log}");
    assert!(log.contains("mode 0644"), "{log}");

    let other = t.pki.server("someone-else")?;
    std::fs::copy(&other.key, &t.cert.key)?;
    std::fs::set_permissions(&t.cert.key, std::fs::Permissions::from_mode(0o600))?;
    let log = t.vault.restart_expecting_failure().await?;
    assert!(log.contains("does not belong to the certificate"), "{log}");
    Ok(())
}
