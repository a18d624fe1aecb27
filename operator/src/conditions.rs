//! The resource's conditions, computed from what one reconcile saw and did, and merged with the
//! previous ones so that `lastTransitionTime` moves only when a status flips. The flips are the
//! transitions the operator reports as events.

use crate::crd::{Condition, ReplicationClusterSpec, Role};
use crate::decide::Waiting;
use crate::observe::{Observed, ObservedRole};

pub const READY: &str = "Ready";
pub const REPLICATING: &str = "Replicating";
pub const DEGRADED: &str = "Degraded";
pub const PROMOTING: &str = "Promoting";
pub const INVALID_SPEC: &str = "InvalidSpec";

/// One condition as computed now (no timestamps yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

fn c(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Computed {
    Computed {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// What a reconcile knows when it writes the status.
pub struct Seen<'a> {
    pub spec: &'a ReplicationClusterSpec,
    /// Problems with the spec (`InvalidSpec` when any).
    pub problems: &'a [String],
    /// The cluster's status, or why it could not be read.
    pub observed: Result<&'a Observed, &'a str>,
    /// What the plan is waiting for, if anything.
    pub waiting: Option<&'a Waiting>,
    /// A step that failed this time: its name and the error.
    pub failed: Option<(&'a str, &'a str)>,
    /// Whether a role change is under way (a switchover step was planned).
    pub switching: bool,
    /// The steps this reconcile took: the next one checks their effect before calling the
    /// resource ready.
    pub acted: &'a [&'a str],
}

pub fn compute(s: &Seen<'_>) -> Vec<Computed> {
    if !s.problems.is_empty() {
        let message = s.problems.join("; ");
        return vec![
            c(INVALID_SPEC, true, "InvalidSpec", message.clone()),
            c(READY, false, "InvalidSpec", message),
        ];
    }
    let mut out = vec![c(INVALID_SPEC, false, "Valid", "the spec is valid")];
    let observed = match s.observed {
        Ok(o) => o,
        Err(why) => {
            out.push(c(READY, false, "ClusterUnreachable", why));
            out.push(c(DEGRADED, true, "ClusterUnreachable", why));
            return out;
        }
    };
    let want = s.spec.role;
    let in_role = matches!(
        (want, observed.role),
        (Role::Primary, ObservedRole::Primary) | (Role::Secondary, ObservedRole::Secondary)
    );
    // Promoting: a role change in progress, and why it waits.
    let promoting = match (s.switching || !in_role, s.failed, s.waiting) {
        (false, _, _) => c(
            PROMOTING,
            false,
            "Settled",
            format!("the cluster is {}", want.as_str()),
        ),
        (true, Some(("Promote", error)), _) if !s.spec.promotion.force => c(
            PROMOTING,
            true,
            "WaitingForOldPrimary",
            format!(
                "waiting for the old primary to be demoted and drained ({error}); set \
                 spec.promotion.force: true to promote without it (what it never shipped stays on it)"
            ),
        ),
        (true, Some((step, error)), _) => c(
            PROMOTING,
            true,
            "SwitchoverStepFailed",
            format!("{step} failed: {error}"),
        ),
        (true, None, Some(w)) => c(PROMOTING, true, w.reason, w.message.clone()),
        (true, None, None) => c(
            PROMOTING,
            true,
            "Switching",
            format!(
                "the cluster is {}, becoming {}",
                observed.role.as_str(),
                want.as_str()
            ),
        ),
    };
    out.push(promoting);
    let (replicating, degraded) = match observed.role {
        ObservedRole::Primary => {
            let down: Vec<&str> = observed
                .secondaries
                .iter()
                .filter(|s| s.connection_state != "connected")
                .map(|s| s.id.as_str())
                .collect();
            let connected = observed.secondaries.len() - down.len();
            (
                if connected > 0 {
                    c(
                        REPLICATING,
                        true,
                        "SecondariesConnected",
                        format!("{connected} secondaries connected"),
                    )
                } else {
                    c(
                        REPLICATING,
                        false,
                        "NoSecondaryConnected",
                        "no secondary is connected",
                    )
                },
                if down.is_empty() {
                    c(
                        DEGRADED,
                        false,
                        "AllConnected",
                        "every activated secondary is connected",
                    )
                } else {
                    c(
                        DEGRADED,
                        true,
                        "SecondaryDisconnected",
                        format!("disconnected: {}", down.join(", ")),
                    )
                },
            )
        }
        ObservedRole::Secondary => {
            let streaming = observed.state == "stream-wals";
            let failing = observed.connection_state.as_deref() == Some("transient_failure");
            (
                if streaming {
                    c(
                        REPLICATING,
                        true,
                        "StreamingWals",
                        "streaming the primary's WAL",
                    )
                } else {
                    c(
                        REPLICATING,
                        false,
                        "NotStreaming",
                        format!("replication state {}", observed.state),
                    )
                },
                if failing {
                    c(
                        DEGRADED,
                        true,
                        "PrimaryUnreachable",
                        observed
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "the primary does not answer".into()),
                    )
                } else {
                    c(DEGRADED, false, "Healthy", "connected to the primary")
                },
            )
        }
        ObservedRole::Disabled | ObservedRole::DemotedPrimary => (
            c(
                REPLICATING,
                false,
                "NotReplicating",
                format!("the cluster is {}", observed.role.as_str()),
            ),
            c(DEGRADED, false, "Healthy", "nothing to replicate yet"),
        ),
    };
    let ready = if let Some((step, error)) = s.failed {
        // What is waited for still shows: the failure may be unrelated to it.
        let waiting = s
            .waiting
            .map(|w| format!("; {}", w.message))
            .unwrap_or_default();
        c(
            READY,
            false,
            "StepFailed",
            format!("{step} failed: {error}{waiting}"),
        )
    } else if let Some(w) = s.waiting {
        c(READY, false, w.reason, w.message.clone())
    } else if !s.acted.is_empty() {
        c(
            READY,
            false,
            "Reconciling",
            format!("took steps: {}", s.acted.join(", ")),
        )
    } else if !in_role {
        c(
            READY,
            false,
            "Reconciling",
            format!(
                "the cluster is {}, becoming {}",
                observed.role.as_str(),
                want.as_str()
            ),
        )
    } else if replicating.status || observed.role == ObservedRole::Primary {
        c(
            READY,
            true,
            "Ready",
            format!("{} and {}", want.as_str(), observed.state),
        )
    } else {
        c(
            READY,
            false,
            "NotStreaming",
            format!("replication state {}", observed.state),
        )
    };
    out.extend([ready, replicating, degraded]);
    out
}

/// Merges `now` into `old`: a condition whose status did not change keeps its transition time.
/// Returns the conditions to store and those whose status flipped.
pub fn merge(
    old: &[Condition],
    now: Vec<Computed>,
    at: &str,
    generation: Option<i64>,
) -> (Vec<Condition>, Vec<Computed>) {
    let mut flipped = Vec::new();
    let merged = now
        .into_iter()
        .map(|n| {
            let status = if n.status { "True" } else { "False" };
            let previous = old.iter().find(|o| o.type_ == n.type_);
            let changed = previous.is_none_or(|p| p.status != status);
            let last_transition_time = match previous {
                Some(p) if !changed => p.last_transition_time.clone(),
                _ => at.to_owned(),
            };
            // A condition that appears false for the first time is no transition worth telling.
            if changed && (previous.is_some() || n.status) {
                flipped.push(n.clone());
            }
            Condition {
                type_: n.type_.into(),
                status: status.into(),
                reason: n.reason,
                message: n.message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect();
    (merged, flipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(v: serde_json::Value) -> Observed {
        Observed::from_status(&v).unwrap()
    }

    fn seen<'a>(spec: &'a ReplicationClusterSpec, o: &'a Observed) -> Seen<'a> {
        Seen {
            spec,
            problems: &[],
            observed: Ok(o),
            waiting: None,
            failed: None,
            switching: false,
            acted: &[],
        }
    }

    fn status(cs: &[Computed], t: &str) -> Option<(bool, String)> {
        cs.iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status, c.reason.clone()))
    }

    #[test]
    fn a_streaming_secondary_is_ready_and_replicating() {
        let spec = ReplicationClusterSpec {
            role: Role::Secondary,
            ..Default::default()
        };
        let o = observed(
            json!({"mode": "secondary", "state": "stream-wals", "connection_state": "ready"}),
        );
        let cs = compute(&seen(&spec, &o));
        assert_eq!(status(&cs, READY), Some((true, "Ready".into())));
        assert_eq!(
            status(&cs, REPLICATING),
            Some((true, "StreamingWals".into()))
        );
        assert_eq!(status(&cs, DEGRADED), Some((false, "Healthy".into())));
        assert_eq!(status(&cs, PROMOTING), Some((false, "Settled".into())));
    }

    #[test]
    fn a_waiting_promotion_says_why() {
        let spec = ReplicationClusterSpec::default(); // primary
        let o = observed(json!({"mode": "secondary", "state": "stream-wals"}));
        let mut s = seen(&spec, &o);
        s.switching = true;
        s.failed = Some(("Promote", "the old primary is not demoted"));
        let cs = compute(&s);
        assert_eq!(
            status(&cs, PROMOTING),
            Some((true, "WaitingForOldPrimary".into()))
        );
        assert_eq!(status(&cs, READY).map(|r| r.0), Some(false));
    }

    #[test]
    fn merging_keeps_transition_times_and_reports_flips() {
        let first = vec![
            c(READY, false, "Reconciling", "x"),
            c(DEGRADED, false, "Healthy", ""),
        ];
        let (stored, flipped) = merge(&[], first, "t1", Some(1));
        assert!(
            flipped.is_empty(),
            "conditions born false are not transitions"
        );
        let (stored, flipped) = merge(
            &stored,
            vec![
                c(READY, true, "Ready", "y"),
                c(DEGRADED, false, "Healthy", ""),
            ],
            "t2",
            Some(1),
        );
        assert_eq!(flipped.len(), 1);
        assert_eq!(stored[0].last_transition_time, "t2");
        assert_eq!(stored[1].last_transition_time, "t1");
    }
}
