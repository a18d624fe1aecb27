//! The steps of a plan, carried out: calls to the cluster's replication API, and the token
//! Secrets the operator owns ([`crate::token_secret`]): only those are ever deleted, and a
//! Secret is only ever created, never updated.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams, Preconditions};

use crate::controller::{Target, unix_now};
use crate::crd::{IssuedToken, ReplicationClusterStatus};
use crate::decide::Step;
use crate::token_secret::{self, NotOurs};
use crate::vault_api::{VaultApi, VaultError};
use ferry_proto::PRIMARY_UNREACHABLE;

/// How long a planned promotion must find the old primary unreachable before `force` promotes
/// without it: a few fence leases (5 s by default), so that a primary whose pods roll or whose
/// own operator is demoting it is waited for, and one that is gone is not waited for long.
pub const FORCE_AFTER: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs one step; returns what it did, for the event.
pub(crate) async fn act(
    t: &Target<'_>,
    vault: &VaultApi,
    step: &Step,
    activation_token: Option<&str>,
    status: &mut ReplicationClusterStatus,
) -> Result<String, StepError> {
    match step {
        Step::EnablePrimary {
            primary_cluster_addr,
        } => {
            vault
                .enable_primary(primary_cluster_addr.as_deref())
                .await?;
            Ok("enabled performance replication as primary".into())
        }
        Step::IssueToken {
            id,
            secret_name,
            ttl,
        } => {
            // Looked at before a token is issued, so that none is wasted on a Secret in the way.
            let existing = t.secrets.get_opt(secret_name).await?;
            if let Some(secret) = &existing {
                ensure_own(t, secret)?;
            }
            let token = vault.secondary_token(id, ttl).await?;
            let seconds = ferry_proto::time::parse_duration(ttl).unwrap_or(1800);
            let expires_at = unix_now() + seconds;
            let secret = token_secret::build(t.rc, secret_name, id, &token, expires_at)
                .ok_or(StepError::NotStored)?;
            write_token_secret(t, existing.as_ref(), &secret).await?;
            status.issued_tokens.insert(
                id.clone(),
                IssuedToken {
                    secret_name: secret_name.clone(),
                    expires_at: ferry_proto::time::rfc3339(expires_at),
                },
            );
            Ok(format!(
                "issued an activation token for secondary {id:?} into Secret {secret_name:?}"
            ))
        }
        Step::Revoke { id } => {
            match vault.revoke_secondary(id).await {
                Ok(()) => {}
                // Already gone at the cluster: the bookkeeping below still has to happen.
                Err(VaultError::Refused { status: 400, .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(issued) = status.issued_tokens.remove(id) {
                delete_if_ours(t, &issued.secret_name).await?;
            }
            Ok(format!("revoked secondary {id:?}"))
        }
        Step::EnableSecondary => {
            let token = activation_token.ok_or(StepError::NoActivationToken)?;
            vault.enable_secondary(token).await?;
            Ok("enabled performance replication as secondary".into())
        }
        Step::Demote => {
            vault.demote().await?;
            Ok("demoted the primary: it no longer takes writes".into())
        }
        Step::Promote { force } => {
            // Always the planned promotion first: `force` stays in Git after the day it was
            // needed, and must not skip the demotion of an old primary that can be reached.
            match vault.promote(false).await {
                Ok(()) => {
                    t.old_primary_answered();
                    Ok(
                        "promoted to primary after applying everything the old primary wrote"
                            .into(),
                    )
                }
                Err(VaultError::Refused {
                    message,
                    code: Some(code),
                    ..
                }) if *force && code == PRIMARY_UNREACHABLE => {
                    // A primary that does not answer for a moment (its pods rolling, its own
                    // operator demoting it right now in a switchover) is not a dead one: forcing
                    // then would leave what it acknowledged and had not shipped behind.
                    let waited = t.old_primary_unreachable_for();
                    if waited < FORCE_AFTER {
                        return Err(StepError::WaitingToForce { waited, message });
                    }
                    vault.promote(true).await?;
                    t.old_primary_answered();
                    Ok(format!(
                        "promoted to primary by force, the old primary unreachable for {}s: {message}",
                        waited.as_secs()
                    ))
                }
                Err(e) => {
                    t.old_primary_answered();
                    Err(e.into())
                }
            }
        }
        Step::FollowAddrs { addrs } => {
            vault.update_primary_addrs(addrs).await?;
            Ok(format!("following the new primary at {}", addrs.join(", ")))
        }
        Step::FollowToken => {
            let token = activation_token.ok_or(StepError::NoActivationToken)?;
            vault.update_primary_token(token).await?;
            Ok("following the primary that issued the activation token".into())
        }
    }
}

/// Why a step failed, for conditions and events.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Secret the step would write or delete is not this resource's (see
    /// [`crate::token_secret`]): it is left alone.
    #[error(
        "Secret {name:?} is in the way: {why}; the operator does not overwrite a Secret it did \
         not create"
    )]
    SecretInTheWay { name: String, why: NotOurs },
    #[error("no activation token")]
    NoActivationToken,
    #[error(
        "the old primary is unreachable ({message}); spec.promotion.force promotes without it \
         once it has not answered for {}s (so far {}s)",
        FORCE_AFTER.as_secs(),
        waited.as_secs()
    )]
    WaitingToForce {
        waited: std::time::Duration,
        message: String,
    },
    #[error("the resource has no uid yet")]
    NotStored,
}

/// Writes the token Secret afresh. When the operator's own Secret is there (its token expired
/// unused), that one is deleted first, on the condition that it is still the very object that
/// was checked (uid and resource version); then the new one is created, which fails if any
/// Secret of that name exists. So neither a Secret made meanwhile nor any other is ever
/// overwritten, and the Role needs no `update` on Secrets.
async fn write_token_secret(
    t: &Target<'_>,
    existing: Option<&Secret>,
    secret: &Secret,
) -> Result<(), StepError> {
    if let Some(old) = existing {
        delete_own(t, old).await?;
    }
    // A Secret someone created since the look makes this fail (409 Conflict): the next
    // reconcile finds it in the way.
    t.secrets.create(&PostParams::default(), secret).await?;
    Ok(())
}

/// Deletes the token Secret `name` if it is this resource's; any other is left alone.
async fn delete_if_ours(t: &Target<'_>, name: &str) -> Result<(), StepError> {
    match t.secrets.get_opt(name).await? {
        Some(secret) if token_secret::check(t.rc, &secret).is_ok() => delete_own(t, &secret).await,
        _ => Ok(()),
    }
}

fn ensure_own(t: &Target<'_>, secret: &Secret) -> Result<(), StepError> {
    token_secret::check(t.rc, secret).map_err(|why| StepError::SecretInTheWay {
        name: secret.name_any(),
        why,
    })
}

/// Deletes `secret` after checking it is this resource's, on the condition that it has not
/// changed since it was read; gone already is fine.
async fn delete_own(t: &Target<'_>, secret: &Secret) -> Result<(), StepError> {
    ensure_own(t, secret)?;
    let name = secret.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: secret.resource_version(),
        }),
        ..Default::default()
    };
    match t.secrets.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
