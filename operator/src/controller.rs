//! The controller: reconciles each `ReplicationCluster` as a pipeline.
//!
//! 1. **Observe**: the admin token Secret, the cluster's replication status, the token Secrets.
//! 2. **Validate**: [`crate::validate`]; an invalid spec stops here (`InvalidSpec`, a Warning
//!    event) and nothing is changed in the cluster.
//! 3. **Decide**: [`crate::decide`], a pure function of what was observed.
//! 4. **Act**: the plan's steps, in order, through the replication API and the Secrets API
//!    ([`crate::steps`]).
//! 5. **Write status**: the cluster's status read again, the conditions merged
//!    ([`crate::conditions`]), events for the steps taken and the conditions that flipped.
//!
//! The resource carries a finalizer: deleting it deletes the token Secrets the operator wrote
//! and revokes the tokens no secondary used, best effort, so deletion finishes even when the
//! cluster is gone. Replication itself keeps running: deleting the resource only stops managing
//! it. Secrets are watched, so a secondary is enabled as soon as its token Secret appears.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::conditions::{self, Seen};
use crate::crd::{IssuedToken, ReplicationCluster, ReplicationClusterStatus, Role};
use crate::decide::{self, Inputs, Step, TokenSecret};
use crate::metrics::Metrics;
use crate::observe::Observed;
use crate::secret_use;
use crate::steps::act;
use crate::token_secret::{self, LABEL_SECONDARY};
use crate::validate;
use crate::vault_api::{VaultApi, VaultError};

pub const FINALIZER: &str = "replication.ferry.dev/cleanup";

/// How often a settled resource is observed again (its status mirrored).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(10);
/// How soon a resource in the middle of something is looked at again.
const SOON: Duration = Duration::from_secs(2);
/// How soon a promotion that waits for the old primary is tried again.
const PROMOTE_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource changed since this reconcile read it: reconcile again with the new one.
    #[error("the resource changed while it was reconciled")]
    Conflict,
    #[error("{0}")]
    Other(String),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub resync: Duration,
    pub unreachable: UnreachableSince,
}

/// When each resource's planned promotion first found its old primary unreachable, by the
/// resource's uid (see [`crate::steps::FORCE_AFTER`]). Kept in memory: an operator that restarts,
/// or a new leader, counts again from its first try, which only waits longer before forcing.
#[derive(Debug, Default)]
pub struct UnreachableSince(std::sync::Mutex<BTreeMap<String, std::time::Instant>>);

impl UnreachableSince {
    /// How long the old primary of `uid` has been unreachable, counted from the first call
    /// since the last [`Self::clear`].
    pub(crate) fn for_how_long(&self, uid: &str) -> Duration {
        let mut since = self.0.lock().expect("unreachable map poisoned");
        since
            .entry(uid.to_owned())
            .or_insert_with(std::time::Instant::now)
            .elapsed()
    }

    /// The promotion of `uid` is over (done, or no longer blocked).
    pub(crate) fn clear(&self, uid: &str) {
        self.0.lock().expect("unreachable map poisoned").remove(uid);
    }
}

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (clusters, secrets): (Api<ReplicationCluster>, Api<Secret>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let name = secret.name_any();
                let ns = secret.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|rc| rc.namespace() == ns && references(rc, &name))
                    .map(|rc| ObjectRef::from_obj(&*rc))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Whether `rc` reads or writes the Secret called `name`.
fn references(rc: &ReplicationCluster, name: &str) -> bool {
    let spec = &rc.spec;
    spec.cluster.token_secret_ref.name == name
        || spec
            .secondary
            .as_ref()
            .and_then(|s| s.token_secret_ref.as_ref())
            .is_some_and(|r| r.name == name)
        || spec
            .primary
            .as_ref()
            .is_some_and(|p| p.secondaries.iter().any(|g| g.token_secret_name == name))
}

fn error_policy(_rc: Arc<ReplicationCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Conflict) {
        return Action::requeue(Duration::from_millis(200));
    }
    ctx.metrics.reconcile_failed();
    warn!(%error, "reconcile error; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(rc: Arc<ReplicationCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let ns = rc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ReplicationCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, rc, |event| async {
        match event {
            Finalized::Apply(rc) => apply(&rc, &ctx).await,
            Finalized::Cleanup(rc) => cleanup(&rc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(Error::Conflict) => Error::Conflict,
        other => Error::Other(other.to_string()),
    });
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// One cluster's handles for a reconcile.
pub(crate) struct Target<'a> {
    pub(crate) rc: &'a ReplicationCluster,
    ctx: &'a Context,
    pub(crate) secrets: Api<Secret>,
    clusters: Api<ReplicationCluster>,
}

impl Target<'_> {
    /// How long this resource's planned promotion has found the old primary unreachable.
    pub(crate) fn old_primary_unreachable_for(&self) -> Duration {
        self.ctx
            .unreachable
            .for_how_long(&self.rc.uid().unwrap_or_default())
    }

    /// This resource's promotion no longer waits for an unreachable old primary.
    pub(crate) fn old_primary_answered(&self) {
        self.ctx
            .unreachable
            .clear(&self.rc.uid().unwrap_or_default());
    }

    async fn event(&self, type_: EventType, reason: &str, note: String, action: &str) {
        let reference = self.rc.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "failed to publish an event");
        }
    }

    /// Replaces the whole status (a merge patch could not remove what is gone, such as a
    /// revoked token), guarded by the resource version this reconcile read: the status carries
    /// bookkeeping (issued tokens) derived from the previous one, so a reconcile that read a
    /// stale resource must not overwrite a newer status. It reconciles again instead.
    async fn write_status(&self, status: ReplicationClusterStatus) -> Result<(), Error> {
        let mut object = self.rc.clone();
        object.status = Some(status);
        match self
            .clusters
            .replace_status(&self.rc.name_any(), &PostParams::default(), &object)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict),
            Err(e) => Err(e.into()),
        }
    }
}

async fn apply(rc: &ReplicationCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_else(|| "default".into());
    let t = Target {
        rc,
        ctx,
        secrets: Api::namespaced(ctx.client.clone(), &ns),
        clusters: Api::namespaced(ctx.client.clone(), &ns),
    };
    let previous = rc.status.clone().unwrap_or_default();
    let mut status = ReplicationClusterStatus {
        issued_tokens: previous.issued_tokens.clone(),
        ..Default::default()
    };
    let now = unix_now();

    // Validate.
    let problems = validate::problems(&rc.spec);
    if !problems.is_empty() {
        let seen = Seen {
            spec: &rc.spec,
            problems: &problems,
            observed: Err("not observed: the spec is invalid"),
            waiting: None,
            failed: None,
            switching: false,
            acted: &[],
        };
        finish(&t, status, &previous, seen).await?;
        return Ok(Action::requeue(ctx.resync * 6));
    }

    // Observe.
    let token_ref = &rc.spec.cluster.token_secret_ref;
    let admin_secret = t.secrets.get_opt(&token_ref.name).await?;
    let admin_token = match secret_use::admin_token(
        &token_ref.name,
        admin_secret.as_ref(),
        &token_ref.key,
        &rc.spec.cluster.address,
    ) {
        Ok(v) => v,
        Err(refused) => {
            let why = format!("the admin token: {refused}");
            finish_unreachable(&t, status, &previous, &problems, &why).await?;
            return Ok(Action::requeue(SOON));
        }
    };
    let vault = match VaultApi::new(&rc.spec.cluster, &admin_token) {
        Ok(v) => v,
        Err(e) => {
            finish_unreachable(&t, status, &previous, &problems, &e.to_string()).await?;
            return Ok(Action::requeue(ctx.resync));
        }
    };
    let observed = match vault.status().await {
        Ok(o) => o,
        Err(e) => {
            finish_unreachable(&t, status, &previous, &problems, &e.to_string()).await?;
            return Ok(Action::requeue(SOON));
        }
    };
    let mut token_secrets = BTreeMap::new();
    if let Some(primary) = &rc.spec.primary {
        for grant in &primary.secondaries {
            let found = t.secrets.get_opt(&grant.token_secret_name).await?;
            let found = found.map(|s| match token_secret::check(rc, &s) {
                Ok(()) => TokenSecret::Ours {
                    expires_at: token_secret::expires_at(&s),
                },
                Err(why) => TokenSecret::InTheWay(why),
            });
            token_secrets.insert(grant.id.clone(), found);
        }
    }
    let activation_token = match rc
        .spec
        .secondary
        .as_ref()
        .and_then(|s| s.token_secret_ref.as_ref())
    {
        Some(r) if rc.spec.role == Role::Secondary => {
            let secret = t.secrets.get_opt(&r.name).await?;
            match secret_use::activation_token(&r.name, secret.as_ref(), &r.key) {
                Ok(token) => Some(token),
                Err(refused @ secret_use::Refused::NotAnActivationToken { .. }) => {
                    warn!(%refused, "not sending the activation token Secret's value");
                    t.event(
                        EventType::Warning,
                        "NotAnActivationToken",
                        refused.to_string(),
                        "Enable",
                    )
                    .await;
                    None
                }
                // Not there yet: the wait says which Secret it waits for.
                Err(_) => None,
            }
        }
        _ => None,
    };
    // Tokens issued before: as the status says, and as the Secrets this resource wrote say (a
    // status write can be lost to a conflict after the Secret was written). Only its own: a
    // copy carrying its labels must not make it revoke a secondary.
    let mut issued: BTreeSet<String> = previous.issued_tokens.keys().cloned().collect();
    for secret in own_token_secrets(&t.secrets, rc).await? {
        if let Some(id) = secret.labels().get(LABEL_SECONDARY) {
            issued.insert(id.clone());
            status
                .issued_tokens
                .entry(id.clone())
                .or_insert_with(|| IssuedToken {
                    secret_name: secret.name_any(),
                    expires_at: token_secret::expires_at(&secret)
                        .map(ferry_proto::time::rfc3339)
                        .unwrap_or_default(),
                });
        }
    }

    // Decide.
    let plan = decide::decide(&Inputs {
        spec: &rc.spec,
        observed: &observed,
        token_secrets: &token_secrets,
        issued: &issued,
        activation_token: activation_token.as_deref(),
        now,
    });
    let switching = plan.steps.iter().any(Step::switches_roles);

    // Act.
    let mut failed: Option<(&'static str, String)> = None;
    let mut acted = Vec::new();
    for step in &plan.steps {
        match act(&t, &vault, step, activation_token.as_deref(), &mut status).await {
            Ok(note) => {
                ctx.metrics.step(step.name(), true);
                acted.push(step.name());
                info!(resource = %rc.name_any(), step = step.name(), %note, "step done");
                t.event(EventType::Normal, step.name(), note, step.name())
                    .await;
            }
            Err(e) => {
                ctx.metrics.step(step.name(), false);
                let message = e.to_string();
                warn!(resource = %rc.name_any(), step = step.name(), error = %message, "step failed");
                // Warn once per distinct failure, not on every retry.
                let same = previous
                    .conditions
                    .iter()
                    .any(|c| c.message.contains(&message));
                if !same {
                    t.event(
                        EventType::Warning,
                        &format!("{}Failed", step.name()),
                        message.clone(),
                        step.name(),
                    )
                    .await;
                }
                failed = Some((step.name(), message));
                break;
            }
        }
    }

    // Observe again and write the status.
    let observed = if plan.steps.is_empty() {
        Ok(observed)
    } else {
        vault.status().await.map_err(|e| e.to_string())
    };
    let observed_ref = observed.as_ref().map_err(String::as_str);
    let seen = Seen {
        spec: &rc.spec,
        problems: &problems,
        observed: observed_ref,
        waiting: plan.waiting.as_ref(),
        failed: failed.as_ref().map(|(s, e)| (*s, e.as_str())),
        switching,
        acted: &acted,
    };
    if let Ok(o) = &observed {
        mirror(&mut status, o);
    }
    // A wait only a person can end is not retried quickly: the resource and the Secrets are
    // watched, so their change brings the next reconcile.
    let settled = plan.steps.is_empty()
        && plan.waiting.as_ref().is_none_or(|w| w.needs_a_person)
        && failed.is_none();
    finish(&t, status, &previous, seen).await?;
    Ok(Action::requeue(match failed {
        // A promotion waiting for the old primary's demotion: that usually takes moments.
        Some(("Promote", _)) => PROMOTE_RETRY,
        _ if settled => ctx.resync,
        _ => SOON,
    }))
}

/// Copies what the cluster reports into the status.
fn mirror(status: &mut ReplicationClusterStatus, o: &Observed) {
    status.role = Some(
        match o.role {
            crate::observe::ObservedRole::DemotedPrimary => "secondary",
            r => r.as_str(),
        }
        .into(),
    );
    status.mode = Some("performance".into());
    status.state = Some(o.state.clone());
    status.cluster_id = o.cluster_id.clone();
    status.last_wal = o.last_wal;
    status.last_remote_wal = o.last_remote_wal;
    status.lag = o.lag();
    status.merkle_root = o.merkle_root.clone();
    status.epoch = o.epoch;
    status.primary_cluster_addr = o.primary_cluster_addr.clone();
    status.known_primary_cluster_addrs = o.known_primary_cluster_addrs.clone();
    status.secondaries = o.secondaries.clone();
    status.nodes = o.nodes.clone();
}

async fn finish_unreachable(
    t: &Target<'_>,
    status: ReplicationClusterStatus,
    previous: &ReplicationClusterStatus,
    problems: &[String],
    why: &str,
) -> Result<(), Error> {
    let seen = Seen {
        spec: &t.rc.spec,
        problems,
        observed: Err(why),
        waiting: None,
        failed: None,
        switching: false,
        acted: &[],
    };
    // Keep what was last observed rather than blanking it.
    let status = ReplicationClusterStatus {
        role: previous.role.clone(),
        mode: previous.mode.clone(),
        state: previous.state.clone(),
        cluster_id: previous.cluster_id.clone(),
        last_wal: previous.last_wal,
        last_remote_wal: previous.last_remote_wal,
        lag: previous.lag,
        merkle_root: previous.merkle_root.clone(),
        epoch: previous.epoch,
        primary_cluster_addr: previous.primary_cluster_addr.clone(),
        known_primary_cluster_addrs: previous.known_primary_cluster_addrs.clone(),
        secondaries: previous.secondaries.clone(),
        nodes: previous.nodes.clone(),
        ..status
    };
    finish(t, status, previous, seen).await
}

/// Merges the conditions, reports the ones that flipped, writes the status.
async fn finish(
    t: &Target<'_>,
    mut status: ReplicationClusterStatus,
    previous: &ReplicationClusterStatus,
    seen: Seen<'_>,
) -> Result<(), Error> {
    let generation = t.rc.metadata.generation;
    let (conditions, flipped) = conditions::merge(
        &previous.conditions,
        conditions::compute(&seen),
        &ferry_proto::time::rfc3339(unix_now()),
        generation,
    );
    status.conditions = conditions;
    status.observed_generation = generation;
    if status != *previous {
        // Written first: a reconcile that loses the write to a conflict reports nothing, and
        // the one that follows reports the flips once.
        t.write_status(status).await?;
    }
    for c in flipped {
        let (type_, reason) = match (c.type_, c.status) {
            (conditions::INVALID_SPEC, true) => (EventType::Warning, "InvalidSpec".to_owned()),
            (conditions::DEGRADED, true) => (EventType::Warning, c.reason.clone()),
            (t_, true) => (EventType::Normal, t_.to_string()),
            (t_, false) => (EventType::Normal, format!("Not{t_}")),
        };
        t.event(type_, &reason, c.message.clone(), "Reconcile")
            .await;
    }
    // Something in the way (a Secret the operator did not create) is a Warning, once: when it
    // appears or changes, not on every pass.
    if let Some(w) = seen.waiting.filter(|w| w.needs_a_person)
        && !previous
            .conditions
            .iter()
            .any(|c| c.message.contains(&w.message))
    {
        t.event(EventType::Warning, w.reason, w.message.clone(), "Reconcile")
            .await;
    }
    Ok(())
}

/// Deleting the resource: its token Secrets go, and tokens never used are revoked (best
/// effort: the cluster may be gone, and deletion must finish anyway).
async fn cleanup(rc: &ReplicationCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_else(|| "default".into());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = own_token_secrets(&secrets, rc).await?;
    let token_ref = &rc.spec.cluster.token_secret_ref;
    let admin_secret = secrets.get_opt(&token_ref.name).await.ok().flatten();
    let admin = secret_use::admin_token(
        &token_ref.name,
        admin_secret.as_ref(),
        &token_ref.key,
        &rc.spec.cluster.address,
    )
    .ok();
    // The same rules as in reconciles: the token goes only where its Secret allows, and not to
    // a plain http:// address unless the spec allows it.
    let vault = admin.and_then(|token| VaultApi::new(&rc.spec.cluster, &token).ok());
    // Which secondaries use their tokens; unknown (None) when the cluster does not answer,
    // and then nothing is revoked: a replicating secondary must never be cut off by this.
    let activated: Option<BTreeSet<String>> = match &vault {
        Some(v) => match tokio::time::timeout(Duration::from_secs(5), v.status()).await {
            Ok(Ok(o)) => Some(o.secondaries.into_iter().map(|s| s.id).collect()),
            _ => None,
        },
        None => None,
    };
    for secret in owned {
        let name = secret.name_any();
        if let (Some(v), Some(activated), Some(id)) =
            (&vault, &activated, secret.labels().get(LABEL_SECONDARY))
            && !activated.contains(id)
            && let Err(e) = tokio::time::timeout(Duration::from_secs(5), v.revoke_secondary(id))
                .await
                .unwrap_or_else(|_| {
                    Err(VaultError::Unreachable {
                        address: v.address().into(),
                        reason: "timed out".into(),
                    })
                })
        {
            warn!(secondary_id = %id, error = %e, "could not revoke an unused token on deletion");
        }
        let only_this_one = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid(),
                resource_version: secret.resource_version(),
            }),
            ..Default::default()
        };
        match secrets.delete(&name, &only_this_one).await {
            Ok(_) => info!(secret = %name, "deleted a token Secret of a deleted resource"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

/// The token Secrets `rc` wrote: labelled as its own and owned by it ([`token_secret::check`]).
async fn own_token_secrets(
    secrets: &Api<Secret>,
    rc: &ReplicationCluster,
) -> Result<Vec<Secret>, kube::Error> {
    let listed = secrets
        .list(&ListParams::default().labels(&token_secret::selector(rc)))
        .await?;
    Ok(listed
        .into_iter()
        .filter(|s| token_secret::check(rc, s).is_ok())
        .collect())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
