//! Where a secondary finds its primary.
//!
//! The target list is the primary's cluster addresses learned from heartbeats
//! (`known_primary_cluster_addrs`, persisted under `core/primary-addrs/perf`) plus the
//! `primary_cluster_addr` of the stored cluster definition. A resolver task rebuilds it every
//! [`RESOLVE_INTERVAL`] (logged at trace level as "loaded addresses"); on its first pass, and
//! whenever the follower reports that no target works, it also asks the candidates'
//! `RemoteResolve` where the primary's active node is (performance standbys answer it too, see
//! `standby`) and puts the answer first.
//!
//! The follower tries all targets at once (a heartbeat to each); a performance standby refuses
//! with `ferry_proto::STANDBY_REFUSAL`, so the one answer comes from the active node, and an
//! address that does not answer (a pod gone, a firewall) costs no more time than the others.
//! When the primary's active node changes, the follower finds the new one among the addresses
//! its heartbeats taught it, with no operator action.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::replication::RemoteResolveRequest;
use tokio::sync::{Notify, watch};
use tracing::{info, trace, warn};

use super::Replication;
use super::transport::{CONNECT_TIMEOUT, TlsMaterial, client};

/// How often the target list is rebuilt.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// Most addresses kept in the target list.
const MAX_TARGETS: usize = 16;

/// The follower's current target list, shared with the resolver task.
#[derive(Default)]
pub struct Targets {
    list: Mutex<Vec<String>>,
    /// Raised by the follower when no target worked.
    none_work: Notify,
}

impl Targets {
    pub fn list(&self) -> Vec<String> {
        self.list.lock().expect("targets lock poisoned").clone()
    }

    pub fn report_none_work(&self) {
        self.none_work.notify_one();
    }
}

/// The candidates: heartbeat addresses first, then the stored primary address.
pub fn candidates(replication: &Replication) -> Vec<String> {
    let mut out = replication
        .follower_status()
        .known_primary_cluster_addrs
        .clone();
    if let Some(d) = replication.definition()
        && !d.primary_cluster_addr.is_empty()
    {
        out.push(d.primary_cluster_addr);
    }
    dedup(out)
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in list {
        if !a.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(MAX_TARGETS);
    out
}

/// Rebuilds `targets` until `stop`.
pub async fn run(
    replication: Arc<Replication>,
    targets: Arc<Targets>,
    mut stop: watch::Receiver<bool>,
) {
    let mut resolve = true; // the first pass asks RemoteResolve
    loop {
        let mut list = candidates(&replication);
        let tls = replication
            .definition()
            .as_ref()
            .map(TlsMaterial::to_primary);
        if resolve
            && let Some(tls) = tls
            && let Some(active) = remote_resolve(&replication, &tls, &list).await
        {
            list.insert(0, active);
            list = dedup(list);
        }
        trace!(addresses = ?list, "loaded addresses");
        *targets.list.lock().expect("targets lock poisoned") = list;
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_INTERVAL) => resolve = false,
            _ = targets.none_work.notified() => resolve = true,
            _ = stop.changed() => return,
        }
    }
}

/// The primary this cluster trusts, answering at `address` over a connection that trusted its
/// CA (`trusted`) alone, follows another now (a planned switchover): trust the CA it trusts for
/// that one, `ca_cert_pem`, and its address, `new_address`, instead. Only a pinned primary hands
/// over (a definition stored before pinning trusts every member, so anyone could answer), only
/// to a member's CA, and only while the pin is still `trusted` (an update-primary meanwhile
/// wins).
async fn hand_over(
    replication: &Replication,
    address: &str,
    trusted: &str,
    ca_cert_pem: String,
    new_address: String,
) {
    let new_ca = ca_cert_pem.trim().to_owned();
    let acceptable = |d: &super::definition::ClusterDefinition| {
        !d.primary_ca_cert_pem.is_empty()
            && d.primary_ca_cert_pem == trusted
            && d.member_cas_pem.contains(new_ca.as_str())
    };
    if !replication.definition().is_some_and(|d| acceptable(&d)) {
        return;
    }
    if let Err(e) = super::pki::check_ca_cert(&ca_cert_pem) {
        warn!(via = %address, error = %e, "the former primary named an unusable CA for its new primary; ignored");
        return;
    }
    let stored = replication
        .store_definition(|d| {
            if acceptable(d) {
                d.primary_ca_cert_pem = ca_cert_pem;
                if !new_address.is_empty() {
                    d.primary_cluster_addr = new_address;
                }
            }
        })
        .await;
    match stored {
        Ok(()) => {
            info!(via = %address, "the former primary follows a new one: trusting the new primary's CA")
        }
        Err(e) => warn!(error = %e, "failed to store the new primary's CA"),
    }
}

/// Asks each candidate in turn where the primary's active node is; a candidate that follows a
/// new primary hands this cluster's trust over to it.
async fn remote_resolve(
    replication: &Replication,
    tls: &TlsMaterial,
    candidates: &[String],
) -> Option<String> {
    let secondary_id = replication.definition()?.secondary_id;
    for address in candidates {
        let Ok(mut c) = client(address, tls) else {
            continue;
        };
        let call = c.remote_resolve(RemoteResolveRequest {
            secondary_id: secondary_id.clone(),
        });
        if let Ok(Ok(reply)) = tokio::time::timeout(CONNECT_TIMEOUT * 2, call).await {
            let reply = reply.into_inner();
            let active = reply.address;
            if !reply.primary_ca_cert_pem.is_empty() && reply.primary_ca_cert_pem != tls.ca_cert_pem
            {
                hand_over(
                    replication,
                    address,
                    &tls.ca_cert_pem,
                    reply.primary_ca_cert_pem,
                    active.clone(),
                )
                .await;
            }
            if !active.is_empty() {
                info!(via = %address, active = %active, "resolved the primary's active node");
                return Some(active);
            }
        }
    }
    None
}
