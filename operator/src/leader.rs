//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas can run and only
//! one reconciles.
//!
//! A replica takes the Lease when it is free or its holder let it expire, then renews it every
//! [`RENEW_EVERY`]. Every write carries the Lease's `resourceVersion`, so two replicas racing
//! for it cannot both win. A leader that fails to renew before its lease runs out stops: the
//! process exits, and the replica that restarts joins as a follower. Nothing here depends on
//! clocks agreeing beyond the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A leader that has not renewed for this long steps down, well before the lease it last
/// wrote can expire for the others (client-go's renewDeadline).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Longest one Lease call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// How often a follower looks at the Lease.
const RETRY_EVERY: Duration = Duration::from_secs(2);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut reported = false;
        loop {
            match tokio::time::timeout(CALL_TIMEOUT, self.try_acquire())
                .await
                .unwrap_or_else(|_| Ok(false))
            {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !reported {
                        info!(lease = %self.name, "another replica leads; waiting");
                        reported = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews the Lease until it is lost or cannot be renewed within [`RENEW_DEADLINE`]; then
    /// returns (and the caller stops reconciling). Time is counted from when each renewal was
    /// sent, which is no later than the `renewTime` it writes.
    pub async fn keep(&self) {
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout(CALL_TIMEOUT, self.try_acquire()).await {
                Ok(Ok(true)) => renewed_at = sent,
                Ok(Ok(false)) => {
                    warn!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "failed to renew the lease"),
                Err(_) => warn!("renewing the lease timed out"),
            }
            if renewed_at.elapsed() >= RENEW_DEADLINE {
                warn!(lease = %self.name, "could not renew the lease in time: stepping down");
                return;
            }
        }
    }

    /// Takes or renews the Lease if it is ours, free or expired; `false` when another holds it.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(mine(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(seconds)) => {
                renewed.0.as_second() + i64::from(seconds.max(0)) < now.as_second()
            }
            _ => true,
        };
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        let acquired = (holder == self.identity)
            .then(|| spec.acquire_time.clone())
            .flatten();
        lease.spec = Some(mine(transitions, acquired));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
