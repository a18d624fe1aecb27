//! etcd going down and coming back: writes fail with a clear error meanwhile and nothing
//! acknowledged is lost; the sidecar carries on once etcd is back. A sidecar started before its
//! etcd is up (a pod beside the chart's bundled etcd) waits for it rather than exiting.

use std::time::Duration;

use ferry_proto::storage::{CheckMerkleRequest, GetRequest, PutRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::wait_for;
use tonic::Code;

#[tokio::test]
async fn writes_resume_after_etcd_restarts() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1").arg("--fence-ttl-seconds=30"),
    )
    .await?;
    let mut s = sidecar.storage();
    s.put(PutRequest {
        key: "core/a".into(),
        value: b"1".to_vec(),
    })
    .await?;

    etcd.kill();
    let put = s.put(PutRequest {
        key: "core/b".into(),
        value: b"2".to_vec(),
    });
    let err = tokio::time::timeout(Duration::from_secs(30), put)
        .await?
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "unexpected error while etcd is down: {err:?}"
    );
    etcd.restart()?;

    // The sidecar reconnects by itself; writes succeed again.
    wait_for("writes to succeed again", Duration::from_secs(60), || {
        let mut s = s.clone();
        async move {
            let put = s.put(PutRequest {
                key: "core/c".into(),
                value: b"3".to_vec(),
            });
            tokio::time::timeout(Duration::from_secs(5), put)
                .await
                .ok()?
                .ok()
        }
    })
    .await
    .map_err(|e| e.context(sidecar.log_tail(40)))?;
    assert_eq!(
        s.get(GetRequest {
            key: "core/a".into()
        })
        .await?
        .into_inner()
        .value,
        b"1"
    );
    let check = sidecar
        .admin()
        .check_merkle(CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(check.consistent, "{check:?}");
    assert!(sidecar.status().await?.fence_held);
    Ok(())
}

/// In a pod the bundled etcd starts beside the nodes: until it runs, its name does not resolve,
/// then nothing listens, and a member may accept connections before it can answer. A sidecar
/// that exited meanwhile would be restarted by kubelet after ever longer pauses; it waits,
/// saying why, and serves once etcd answers.
#[tokio::test]
async fn a_sidecar_started_before_its_etcd_waits_for_it() -> anyhow::Result<()> {
    // A name that does not resolve (yet).
    let mut unnamed = Sidecar::spawn(
        "http://ferry-etcd-0.not-resolvable.invalid:2379",
        SidecarOptions::new("east", "n1"),
    )?;
    let log = still_waiting(&unnamed).await?;
    assert!(log.contains("dns error"), "{log}");
    unnamed.kill();

    // Nothing listening, then etcd.
    let mut etcd = EtcdServer::start()?;
    etcd.kill();
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), SidecarOptions::new("east", "n1"))?;
    still_waiting(&sidecar).await?;
    etcd.restart()?;
    sidecar.wait_ready().await?;
    sidecar
        .storage()
        .put(PutRequest {
            key: "core/after-the-wait".into(),
            value: b"1".to_vec(),
        })
        .await?;
    assert!(sidecar.status().await?.fence_held);
    assert!(sidecar.log().contains("etcd answers"), "{}", sidecar.log());

    // An etcd that accepts connections and answers nothing (stopped here; a member without
    // quorum, say): each try is cut short and the wait goes on.
    let frozen = EtcdServer::start()?;
    frozen.signal("STOP")?;
    let mut sidecar = Sidecar::spawn(&frozen.endpoint(), SidecarOptions::new("east", "n1"))?;
    still_waiting(&sidecar).await?;
    frozen.signal("CONT")?;
    sidecar.wait_ready().await?;
    assert!(sidecar.status().await?.fence_held);
    Ok(())
}

/// Waits until `sidecar` has reported its wait for etcd twice (5 s apart), so it is still
/// waiting rather than gone; its log.
async fn still_waiting(sidecar: &Sidecar) -> anyhow::Result<String> {
    wait_for(
        "a second report of the wait",
        Duration::from_secs(60),
        || {
            let log = sidecar.log();
            let twice = log.matches("waiting for etcd to answer").count() >= 2;
            async move { twice.then_some(log) }
        },
    )
    .await
    .map_err(|e| e.context(sidecar.log()))
}
