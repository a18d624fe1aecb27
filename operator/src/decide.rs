//! The decisions of one reconcile, as a pure function: from the spec, what the cluster reports
//! and the Secrets found, the steps to take now and what is being waited for.
//!
//! Each reconcile takes the steps of one [`Plan`], then observes again: a role change runs as a
//! sequence of reconciles (demote; then promote once the old primary is demoted; then the old
//! primary follows the new one), each step idempotent at the cluster, so a restarted operator
//! picks up wherever the cluster is.
//!
//! ```text
//! spec.role   observed          step
//! primary     disabled          enable the primary
//! primary     primary           issue missing or expired-unused tokens; revoke removed ones
//! primary     secondary         promote (planned; `force` only when the spec says so)
//! primary     demoted primary   promote (taking the role back)
//! secondary   disabled          enable from the activation token Secret (wait for it)
//! secondary   primary           demote
//! secondary   demoted primary   follow the new primary (spec addresses, else a token)
//! secondary   secondary         nothing: mirror the status
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{ReplicationClusterSpec, Role};
use crate::observe::{Observed, ObservedRole};
use crate::token_secret::NotOurs;

/// What the operator knows of an existing Secret of the name a secondary's grant asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSecret {
    /// One this resource wrote (see [`crate::token_secret`]): replaced when its token expired
    /// unused.
    Ours {
        /// Unix seconds the token in it expires, from the Secret's annotation.
        expires_at: Option<u64>,
    },
    /// Any other Secret: never replaced nor deleted.
    InTheWay(NotOurs),
}

/// Everything one decision looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub spec: &'a ReplicationClusterSpec,
    pub observed: &'a Observed,
    /// The token Secret of each secondary the spec grants, by id (`None`: missing).
    pub token_secrets: &'a BTreeMap<String, Option<TokenSecret>>,
    /// Ids the operator issued tokens for before (from the status).
    pub issued: &'a BTreeSet<String>,
    /// A secondary's activation token, when its Secret holds one.
    pub activation_token: Option<&'a str>,
    pub now: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    EnablePrimary {
        primary_cluster_addr: Option<String>,
    },
    IssueToken {
        id: String,
        secret_name: String,
        ttl: String,
    },
    /// Revoke a secondary the spec no longer grants, and delete its token Secret.
    Revoke {
        id: String,
    },
    /// Enable this secondary with the activation token.
    EnableSecondary,
    Demote,
    Promote {
        force: bool,
    },
    /// A demoted primary follows the primary at these addresses.
    FollowAddrs {
        addrs: Vec<String>,
    },
    /// A demoted primary follows the primary that issued the activation token.
    FollowToken,
}

impl Step {
    /// A short name, for events and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Step::EnablePrimary { .. } => "EnablePrimary",
            Step::IssueToken { .. } => "IssueToken",
            Step::Revoke { .. } => "RevokeSecondary",
            Step::EnableSecondary => "EnableSecondary",
            Step::Demote => "Demote",
            Step::Promote { .. } => "Promote",
            Step::FollowAddrs { .. } | Step::FollowToken => "FollowNewPrimary",
        }
    }

    /// Whether the step is part of a role change (the `Promoting` condition).
    pub fn switches_roles(&self) -> bool {
        matches!(
            self,
            Step::Demote | Step::Promote { .. } | Step::FollowAddrs { .. } | Step::FollowToken
        )
    }
}

/// Why nothing more can be done now: a condition reason and a message for users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
    /// Only a person can end the wait (something is in the way): a Warning event when it
    /// begins, and no quick retries.
    pub needs_a_person: bool,
}

/// The reason of a wait on a Secret that is not the operator's to write.
pub const SECRET_IN_THE_WAY: &str = "SecretInTheWay";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub waiting: Option<Waiting>,
}

impl Plan {
    fn step(step: Step) -> Self {
        Self {
            steps: vec![step],
            waiting: None,
        }
    }

    fn wait(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            steps: Vec::new(),
            waiting: Some(Waiting {
                reason,
                message: message.into(),
                needs_a_person: false,
            }),
        }
    }
}

pub fn decide(i: &Inputs<'_>) -> Plan {
    match (i.spec.role, i.observed.role) {
        (Role::Primary, ObservedRole::Disabled) => Plan::step(Step::EnablePrimary {
            primary_cluster_addr: i
                .spec
                .primary
                .as_ref()
                .and_then(|p| p.primary_cluster_addr.clone()),
        }),
        (Role::Primary, ObservedRole::Primary) => tokens(i),
        (Role::Primary, ObservedRole::Secondary | ObservedRole::DemotedPrimary) => {
            Plan::step(Step::Promote {
                force: i.spec.promotion.force,
            })
        }
        (Role::Secondary, ObservedRole::Disabled) => match i.activation_token {
            Some(_) => Plan::step(Step::EnableSecondary),
            None => Plan::wait(
                "WaitingForActivationToken",
                match i
                    .spec
                    .secondary
                    .as_ref()
                    .and_then(|s| s.token_secret_ref.as_ref())
                {
                    Some(r) => format!(
                        "waiting for the activation token in Secret {:?} (key {:?})",
                        r.name, r.key
                    ),
                    None => "spec.secondary.tokenSecretRef is not set".to_owned(),
                },
            ),
        },
        (Role::Secondary, ObservedRole::Primary) => Plan::step(Step::Demote),
        (Role::Secondary, ObservedRole::DemotedPrimary) => {
            let addrs = i
                .spec
                .secondary
                .as_ref()
                .map(|s| s.primary_addrs.clone())
                .unwrap_or_default();
            if !addrs.is_empty() {
                Plan::step(Step::FollowAddrs { addrs })
            } else if i.activation_token.is_some() {
                Plan::step(Step::FollowToken)
            } else {
                Plan::wait(
                    "WaitingForNewPrimary",
                    "demoted; set spec.secondary.primaryAddrs (or provide an activation token) to follow the new primary",
                )
            }
        }
        (Role::Secondary, ObservedRole::Secondary) => Plan::default(),
    }
}

/// A primary's token bookkeeping: issue what is missing or expired unused, revoke what the spec
/// dropped.
fn tokens(i: &Inputs<'_>) -> Plan {
    let grants = i
        .spec
        .primary
        .as_ref()
        .map(|p| p.secondaries.as_slice())
        .unwrap_or_default();
    let mut plan = Plan::default();
    let mut in_the_way = Vec::new();
    for (n, grant) in grants.iter().enumerate() {
        if i.observed.activated(&grant.id) {
            continue;
        }
        match i.token_secrets.get(&grant.id).cloned().flatten() {
            Some(TokenSecret::InTheWay(why)) => in_the_way.push(format!(
                "Secret {:?} (spec.primary.secondaries[{n}].tokenSecretName) is in the way: {why}; \
                 the operator does not overwrite a Secret it did not create: delete it or name \
                 another",
                grant.token_secret_name
            )),
            Some(TokenSecret::Ours {
                expires_at: Some(at),
            }) if at > i.now => {}
            _ => plan.steps.push(Step::IssueToken {
                id: grant.id.clone(),
                secret_name: grant.token_secret_name.clone(),
                ttl: grant.ttl.clone(),
            }),
        }
    }
    let granted: BTreeSet<&str> = grants.iter().map(|g| g.id.as_str()).collect();
    for id in i.issued {
        if !granted.contains(id.as_str()) {
            plan.steps.push(Step::Revoke { id: id.clone() });
        }
    }
    if !in_the_way.is_empty() {
        plan.waiting = Some(Waiting {
            reason: SECRET_IN_THE_WAY,
            message: in_the_way.join("; "),
            needs_a_person: true,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PrimarySpec, PromotionSpec, SecondaryGrant, SecondarySpec, SecondaryStatus};
    use proptest::prelude::*;
    use serde_json::json;

    fn observed(role: &str, demoted: bool) -> Observed {
        Observed::from_status(&json!({ "mode": role, "demoted": demoted })).unwrap()
    }

    fn grant(id: &str) -> SecondaryGrant {
        SecondaryGrant {
            id: id.into(),
            token_secret_name: format!("{id}-token"),
            ttl: "30m".into(),
        }
    }

    fn spec(role: Role, grants: &[&str]) -> ReplicationClusterSpec {
        ReplicationClusterSpec {
            role,
            primary: Some(PrimarySpec {
                primary_cluster_addr: None,
                secondaries: grants.iter().map(|g| grant(g)).collect(),
            }),
            ..Default::default()
        }
    }

    fn plan(
        spec: &ReplicationClusterSpec,
        observed: &Observed,
        secrets: &BTreeMap<String, Option<TokenSecret>>,
        issued: &BTreeSet<String>,
        token: Option<&str>,
    ) -> Plan {
        decide(&Inputs {
            spec,
            observed,
            token_secrets: secrets,
            issued,
            activation_token: token,
            now: 1_000,
        })
    }

    #[test]
    fn a_primary_issues_missing_and_expired_tokens_and_revokes_dropped_ones() {
        let s = spec(Role::Primary, &["east", "south", "north"]);
        let mut o = observed("primary", false);
        o.secondaries.push(SecondaryStatus {
            id: "north".into(),
            ..Default::default()
        });
        let secrets = BTreeMap::from([
            ("east".to_owned(), None),
            (
                "south".to_owned(),
                Some(TokenSecret::Ours {
                    expires_at: Some(999),
                }),
            ),
            ("north".to_owned(), None),
        ]);
        let issued = BTreeSet::from(["east".to_owned(), "gone".to_owned()]);
        let p = plan(&s, &o, &secrets, &issued, None);
        let names: Vec<String> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::IssueToken { id, .. } => format!("issue {id}"),
                Step::Revoke { id } => format!("revoke {id}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["issue east", "issue south", "revoke gone"]);
    }

    #[test]
    fn a_live_token_or_a_foreign_secret_issues_nothing() {
        let s = spec(Role::Primary, &["east"]);
        let o = observed("primary", false);
        let live = BTreeMap::from([(
            "east".to_owned(),
            Some(TokenSecret::Ours {
                expires_at: Some(2_000),
            }),
        )]);
        assert_eq!(plan(&s, &o, &live, &BTreeSet::new(), None), Plan::default());
        let foreign = BTreeMap::from([(
            "east".to_owned(),
            Some(TokenSecret::InTheWay(NotOurs::NotManaged)),
        )]);
        let p = plan(&s, &o, &foreign, &BTreeSet::new(), None);
        assert!(p.steps.is_empty());
        let waiting = p.waiting.unwrap();
        assert_eq!(waiting.reason, SECRET_IN_THE_WAY);
        assert!(waiting.needs_a_person);
        assert!(
            waiting.message.contains("\"east-token\"")
                && waiting.message.contains("tokenSecretName")
                && waiting.message.contains("not labelled"),
            "{}",
            waiting.message
        );
    }

    /// A Secret in the way of one grant holds back that grant only.
    #[test]
    fn a_secret_in_the_way_blocks_only_its_own_grant() {
        let s = spec(Role::Primary, &["east", "south"]);
        let o = observed("primary", false);
        let secrets = BTreeMap::from([
            (
                "east".to_owned(),
                Some(TokenSecret::InTheWay(NotOurs::OtherCluster("north".into()))),
            ),
            ("south".to_owned(), None),
        ]);
        let p = plan(&s, &o, &secrets, &BTreeSet::new(), None);
        assert_eq!(
            p.steps,
            [Step::IssueToken {
                id: "south".into(),
                secret_name: "south-token".into(),
                ttl: "30m".into(),
            }]
        );
        assert!(p.waiting.unwrap().message.contains("\"north\""));
    }

    #[test]
    fn a_switchover_runs_as_demote_promote_follow() {
        let none = BTreeMap::new();
        let issued = BTreeSet::new();
        // The old primary's resource now says secondary.
        let mut old = spec(Role::Secondary, &[]);
        assert_eq!(
            plan(&old, &observed("primary", false), &none, &issued, None).steps,
            [Step::Demote]
        );
        let waiting = plan(&old, &observed("secondary", true), &none, &issued, None);
        assert_eq!(waiting.waiting.unwrap().reason, "WaitingForNewPrimary");
        old.secondary = Some(SecondarySpec {
            token_secret_ref: None,
            primary_addrs: vec!["10.0.0.2:8201".into()],
        });
        assert_eq!(
            plan(&old, &observed("secondary", true), &none, &issued, None).steps,
            [Step::FollowAddrs {
                addrs: vec!["10.0.0.2:8201".into()]
            }]
        );
        // The new primary's resource now says primary.
        let new = spec(Role::Primary, &[]);
        assert_eq!(
            plan(&new, &observed("secondary", false), &none, &issued, None).steps,
            [Step::Promote { force: false }]
        );
    }

    #[test]
    fn a_secondary_waits_for_its_token_then_enables() {
        let s = ReplicationClusterSpec {
            role: Role::Secondary,
            ..Default::default()
        };
        let o = observed("disabled", false);
        let none = BTreeMap::new();
        let p = plan(&s, &o, &none, &BTreeSet::new(), None);
        assert_eq!(p.waiting.unwrap().reason, "WaitingForActivationToken");
        assert_eq!(
            plan(&s, &o, &none, &BTreeSet::new(), Some("ferry1.x.y")).steps,
            [Step::EnableSecondary]
        );
    }

    fn any_observed() -> impl Strategy<Value = Observed> {
        (
            prop_oneof![Just("disabled"), Just("primary"), Just("secondary")],
            any::<bool>(),
            proptest::collection::vec("[a-c]", 0..3),
        )
            .prop_map(|(mode, demoted, activated)| {
                let mut o = observed(mode, demoted);
                o.secondaries = activated
                    .into_iter()
                    .map(|id| SecondaryStatus {
                        id,
                        ..Default::default()
                    })
                    .collect();
                o
            })
    }

    proptest! {
        /// Whatever it observes, the operator never acts against the role asked for: it never
        /// demotes a cluster meant to be primary, never promotes or enables a primary on one
        /// meant to be a secondary, forces a promotion only when the spec says so, and never
        /// issues a token into a Secret that is in the way.
        #[test]
        fn steps_always_move_toward_the_spec(
            primary in any::<bool>(),
            force in any::<bool>(),
            grants in proptest::collection::vec("[a-c]", 0..3),
            issued in proptest::collection::btree_set("[a-e]", 0..4),
            o in any_observed(),
            token in proptest::option::of("ferry1\\.[a-z]{3}"),
            expiry in proptest::option::of(0u64..2_000),
            in_the_way in proptest::collection::btree_set("[a-c]", 0..3),
        ) {
            let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
            let mut s = spec(if primary { Role::Primary } else { Role::Secondary }, &grants);
            s.promotion = PromotionSpec { force };
            let secrets: BTreeMap<String, Option<TokenSecret>> = grants
                .iter()
                .map(|g| {
                    let found = if in_the_way.contains(*g) {
                        Some(TokenSecret::InTheWay(NotOurs::NotManaged))
                    } else {
                        expiry.map(|e| TokenSecret::Ours { expires_at: Some(e) })
                    };
                    (g.to_string(), found)
                })
                .collect();
            let p = plan(&s, &o, &secrets, &issued, token.as_deref());
            for step in &p.steps {
                match step {
                    Step::Demote | Step::EnableSecondary | Step::FollowAddrs { .. } | Step::FollowToken => {
                        prop_assert!(!primary, "{step:?} on a cluster meant to be primary")
                    }
                    Step::EnablePrimary { .. } | Step::IssueToken { .. } | Step::Revoke { .. } => {
                        prop_assert!(primary, "{step:?} on a cluster meant to be secondary")
                    }
                    Step::Promote { force: f } => {
                        prop_assert!(primary);
                        prop_assert!(!*f || force, "a forced promotion the spec did not ask for");
                    }
                }
                if let Step::IssueToken { id, .. } = step {
                    prop_assert!(!o.activated(id), "a token for an activated secondary");
                    prop_assert!(!in_the_way.contains(id), "a token into a Secret in the way");
                }
                if let Step::Revoke { id } = step {
                    prop_assert!(!grants.contains(&id.as_str()), "revoked a granted secondary");
                }
            }
            // A cluster already in its role with nothing to issue is left alone.
            let settled = (primary && o.role == ObservedRole::Primary && grants.iter().all(|g| o.activated(g)) && issued.iter().all(|i| grants.contains(&i.as_str())))
                || (!primary && o.role == ObservedRole::Secondary);
            if settled {
                prop_assert!(p.steps.is_empty(), "{:?}", p.steps);
            }
        }
    }
}
