//! Only a primary raises the epoch (issue 16, point 6): a member that names a higher epoch,
//! in an announcement or a heartbeat, fences the primary only with the proof that the member
//! which became primary at that epoch signed. An activated member without one, or with a proof
//! it made up for another member, is refused and the primary keeps taking writes.

use ferry_proto::replication::{AnnounceEpochRequest, EpochProof, HeartbeatRequest};
use ferry_sidecar::replication::epoch::sign_epoch;
use ferry_tests::member::TestMember;
use ferry_tests::region::primary_and_secondary;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_higher_epoch_fences_nothing() -> anyhow::Result<()> {
    let (primary, secondary) = primary_and_secondary(&[]).await?;
    let mallory = TestMember::activate(&primary.token("mallory").await?).await?;
    let address = primary.cluster_addr();
    // Proofs mallory can make: none; its own CA's signature under another member's name (east,
    // the real secondary); its own, relayed in a heartbeat as if from its primary.
    let forged_for_east = sign_epoch(&mallory.keys.ca, &mallory.cluster_id, "east", 99)?;
    let own = sign_epoch(&mallory.keys.ca, &mallory.cluster_id, &mallory.id, 99)?;
    let mut c = mallory.client(&address)?;
    let announce = |proof: Option<EpochProof>| AnnounceEpochRequest {
        secondary_id: mallory.id.clone(),
        epoch: 99,
        primary_cluster_addr: "127.0.0.1:1".into(),
        epoch_proof: proof,
        ..Default::default()
    };
    for proof in [None, Some(forged_for_east.clone())] {
        let refused = c
            .announce_epoch(announce(proof.clone()))
            .await
            .expect_err("an unproven epoch was accepted");
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{proof:?}: {refused:?}"
        );
    }
    let heartbeat = |proof: Option<EpochProof>| HeartbeatRequest {
        secondary_id: mallory.id.clone(),
        epoch: 99,
        epoch_proof: proof,
        ..Default::default()
    };
    for proof in [None, Some(forged_for_east), Some(own)] {
        let refused = c
            .heartbeat(heartbeat(proof.clone()))
            .await
            .expect_err("an unproven epoch was accepted in a heartbeat");
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{proof:?}: {refused:?}"
        );
    }

    // The primary is neither fenced nor closed: a write goes through and reaches east.
    let status = primary.status().await?;
    assert!(status["fenced_by_epoch"].is_null(), "{status}");
    primary.put("still/primary", b"yes").await?;
    secondary.wait_caught_up(&primary).await?;
    assert_eq!(
        secondary.get("still/primary").await?.as_deref(),
        Some(&b"yes"[..])
    );
    Ok(())
}
