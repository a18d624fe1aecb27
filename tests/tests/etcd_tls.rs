//! The sidecar reaches etcd over TLS with a client certificate (etcd's `--client-cert-auth`),
//! and refuses a TLS configuration that would send the keyspace in clear, that etcd would
//! refuse, or whose key is readable by others, with an error that names what is wrong.

use std::time::Duration;

use ferry_proto::storage::{GetRequest, PutRequest};
use ferry_tests::etcd::{EtcdOptions, EtcdServer, EtcdTls};
use ferry_tests::pki::TestPki;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

/// How long a sidecar that must refuse to start may take to exit: well under the start-up wait
/// for an etcd out of reach (`etcd_outage`), which a refusal must not get.
const EXIT_WITHIN: Duration = Duration::from_secs(90);

fn tls_etcd(pki: &TestPki) -> anyhow::Result<EtcdServer> {
    EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls {
            ca: pki.ca.clone(),
            server: pki.server("etcd")?,
            client: pki.client("inspector")?,
        }),
        ..EtcdOptions::default()
    })
}

fn tls_args(
    options: SidecarOptions,
    pki: &TestPki,
    client: bool,
) -> anyhow::Result<SidecarOptions> {
    let mut options = options.arg(format!("--etcd-ca-file={}", pki.ca.display()));
    if client {
        let files = pki.client("sidecar")?;
        options = options
            .arg(format!("--etcd-cert-file={}", files.cert.display()))
            .arg(format!("--etcd-key-file={}", files.key.display()));
    }
    Ok(options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_stores_through_etcd_over_tls_with_a_client_certificate() -> anyhow::Result<()>
{
    let pki = TestPki::new("etcd")?;
    let etcd = tls_etcd(&pki)?;
    assert!(etcd.endpoint().starts_with("https://"));
    let options = tls_args(SidecarOptions::new("tls", "n1"), &pki, true)?;
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    sidecar
        .storage()
        .put(PutRequest {
            key: "logical/secret".into(),
            value: b"over tls".to_vec(),
        })
        .await?;
    let got = sidecar
        .storage()
        .get(GetRequest {
            key: "logical/secret".into(),
        })
        .await?
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"over tls");
    // It is in etcd, which a client with a certificate of the same CA can read.
    let mut client = etcd.client().await?;
    let stored = client.get("/ferry/tls/data/logical/secret", None).await?;
    assert_eq!(stored.kvs().len(), 1);
    Ok(())
}

/// An etcd that refuses the sidecar is not waited for, as one not up yet is (`etcd_outage`):
/// start-up stops with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_sidecar_does_not_start() -> anyhow::Result<()> {
    let pki = TestPki::new("etcd")?;
    let etcd = tls_etcd(&pki)?;
    let options = tls_args(SidecarOptions::new("tls", "n1"), &pki, false)?;
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), options)?;
    let status = sidecar.wait_exit(EXIT_WITHIN).await?;
    assert!(!status.success());
    let log = sidecar.log();
    assert!(log.contains("refused this node"), "{log}");

    // A server certificate from a CA the sidecar does not trust.
    let other = TestPki::new("other")?;
    let files = pki.client("sidecar")?;
    let options = SidecarOptions::new("tls", "n1")
        .arg(format!("--etcd-ca-file={}", other.ca.display()))
        .arg(format!("--etcd-cert-file={}", files.cert.display()))
        .arg(format!("--etcd-key-file={}", files.key.display()));
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), options)?;
    let status = sidecar.wait_exit(EXIT_WITHIN).await?;
    assert!(!status.success());
    let log = sidecar.log();
    assert!(log.contains("refused this node"), "{log}");
    assert!(log.contains("certificate"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_configuration_that_does_not_fit_is_refused_at_once() -> anyhow::Result<()> {
    let pki = TestPki::new("etcd")?;
    let etcd = tls_etcd(&pki)?;
    let plain = EtcdServer::start()?;

    // A CA file with an http:// endpoint: the keyspace would travel in clear.
    let options = tls_args(SidecarOptions::new("tls", "n1"), &pki, true)?;
    let mut sidecar = Sidecar::spawn(&plain.endpoint(), options)?;
    assert!(!sidecar.wait_exit(EXIT_WITHIN).await?.success());
    assert!(
        sidecar.log().contains("is not https://"),
        "{}",
        sidecar.log()
    );

    // An https:// endpoint without a CA file.
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), SidecarOptions::new("tls", "n1"))?;
    assert!(!sidecar.wait_exit(EXIT_WITHIN).await?.success());
    assert!(
        sidecar.log().contains("needs --etcd-ca-file"),
        "{}",
        sidecar.log()
    );

    // A client key its group can read.
    let files = pki.client("loose")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o640))?;
    }
    let options = SidecarOptions::new("tls", "n1")
        .arg(format!("--etcd-ca-file={}", pki.ca.display()))
        .arg(format!("--etcd-cert-file={}", files.cert.display()))
        .arg(format!("--etcd-key-file={}", files.key.display()));
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), options)?;
    assert!(!sidecar.wait_exit(EXIT_WITHIN).await?.success());
    let log = sidecar.log();
    assert!(log.contains("readable by its group or others"), "{log}");
    assert!(log.contains("loose-key.pem"), "{log}");
    Ok(())
}
