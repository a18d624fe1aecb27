//! A secondary trusts only the primary it follows (issue 16, point 1). Every member holds a CA
//! of its own that every other member trusts, for epochs and promotions; were that trust enough
//! to follow, a member that took the primary's address would be followed without anyone
//! choosing it. A secondary pins its primary's CA instead: from its activation token, or, after
//! an operator names a new primary with update-primary, from the member that primary proves to
//! be (its epoch proof names it, and it must then serve with that member's CA).

use ferry_tests::region::Region;
use ferry_tests::wait_for;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_the_primarys_address_is_not_followed_until_an_operator_names_it()
-> anyhow::Result<()> {
    let mut west = Region::start("west", &[]).await?;
    let mut south = Region::start("south", &[]).await?;
    let east = Region::start("east", &[]).await?;
    west.enable_primary().await?;
    // South joins first: east then trusts south's CA from its activation on (a member's CA
    // serves for epochs and promotions).
    south.follow(&west, "south").await?;
    east.follow(&west, "east").await?;
    west.put("before", b"1").await?;
    south.wait_caught_up(&west).await?;
    east.wait_caught_up(&west).await?;

    // South becomes a primary in its own right (a newer epoch, proven), then takes west's
    // address once west is gone, and writes.
    south
        .call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    let west_port = west.cluster_port;
    west.sidecar.kill();
    south.move_cluster_port(west_port).await?;
    south.put("from-south", b"2").await?;

    // East reaches west's address, meets a server another member's CA signed for, and refuses
    // it: it applies nothing from there.
    let status = east
        .wait_status("east to refuse the server at west's address", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("UnknownIssuer"))
        })
        .await?;
    assert_eq!(east.get("from-south").await?, None, "{status}");
    assert_eq!(east.get("before").await?.as_deref(), Some(&b"1"[..]));

    // Named by an operator, the new primary is followed: it proves its epoch and serves as the
    // member its proof names.
    east.call(
        "secondary/update-primary",
        json!({ "update_primary_addrs": [south.cluster_addr()] }),
    )
    .await?
    .ok()?;
    wait_for(
        "east to apply south's write",
        Duration::from_secs(30),
        || async {
            (east.get("from-south").await.ok()?.as_deref() == Some(&b"2"[..])).then_some(())
        },
    )
    .await?;
    Ok(())
}
