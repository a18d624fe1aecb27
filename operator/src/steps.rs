//! The steps of a plan, carried out: calls to the cluster's replication API, and the token
//! Secrets the operator owns (labelled with the resource, owned by it, carrying the token's
//! expiry as an annotation).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use crate::controller::{
    ANNOTATION_EXPIRES, FIELD_MANAGER, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SECONDARY, Target,
    unix_now,
};
use crate::crd::{IssuedToken, ReplicationCluster, ReplicationClusterStatus};
use crate::decide::{Step, TokenSecret};
use crate::vault_api::{VaultApi, VaultError};

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
            let token = vault.secondary_token(id, ttl).await?;
            let seconds = ferry_proto::time::parse_duration(ttl).unwrap_or(1800);
            let expires_at = unix_now() + seconds;
            write_token_secret(t, secret_name, id, &token, expires_at).await?;
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
                delete_managed_secret(t, &issued.secret_name).await?;
            }
            Ok(format!("revoked secondary {id:?}"))
        }
        Step::EnableSecondary => {
            let token = activation_token.ok_or_else(|| StepError("no activation token".into()))?;
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
                Ok(()) => Ok(
                    "promoted to primary after applying everything the old primary wrote".into(),
                ),
                Err(VaultError::Refused {
                    status: 503,
                    message,
                    ..
                }) if *force && message.contains("cannot reach the primary") => {
                    vault.promote(true).await?;
                    Ok(format!("promoted to primary by force: {message}"))
                }
                Err(e) => Err(e.into()),
            }
        }
        Step::FollowAddrs { addrs } => {
            vault.update_primary_addrs(addrs).await?;
            Ok(format!("following the new primary at {}", addrs.join(", ")))
        }
        Step::FollowToken => {
            let token = activation_token.ok_or_else(|| StepError("no activation token".into()))?;
            vault.update_primary_token(token).await?;
            Ok("following the primary that issued the activation token".into())
        }
    }
}

/// Why a step failed, for conditions and events.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StepError(String);

impl From<VaultError> for StepError {
    fn from(e: VaultError) -> Self {
        StepError(e.to_string())
    }
}

impl From<kube::Error> for StepError {
    fn from(e: kube::Error) -> Self {
        StepError(format!("Kubernetes API: {e}"))
    }
}

pub(crate) fn token_secret(rc: &ReplicationCluster, secret: &Secret) -> TokenSecret {
    let labels = secret.labels();
    TokenSecret {
        expires_at: secret
            .annotations()
            .get(ANNOTATION_EXPIRES)
            .and_then(|v| v.parse().ok()),
        managed: labels
            .get(LABEL_CLUSTER)
            .is_some_and(|c| *c == rc.name_any())
            && labels
                .get(LABEL_MANAGED_BY)
                .is_some_and(|m| m == FIELD_MANAGER),
    }
}

/// Creates or replaces the token Secret, labelled and owned by the resource.
async fn write_token_secret(
    t: &Target<'_>,
    name: &str,
    id: &str,
    token: &str,
    expires_at: u64,
) -> Result<(), StepError> {
    let owner =
        t.rc.controller_owner_ref(&())
            .ok_or_else(|| StepError("the resource has no uid yet".into()))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: t.rc.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.into(), FIELD_MANAGER.into()),
                (LABEL_CLUSTER.into(), t.rc.name_any()),
                (LABEL_SECONDARY.into(), id.into()),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_EXPIRES.into(),
                expires_at.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".into(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match t.secrets.get_opt(name).await? {
        Some(existing) => {
            let mut replacement = secret;
            replacement.metadata.resource_version = existing.metadata.resource_version;
            t.secrets
                .replace(name, &PostParams::default(), &replacement)
                .await?;
        }
        None => {
            t.secrets.create(&PostParams::default(), &secret).await?;
        }
    }
    Ok(())
}

pub(crate) async fn delete_managed_secret(t: &Target<'_>, name: &str) -> Result<(), StepError> {
    if let Some(secret) = t.secrets.get_opt(name).await?
        && token_secret(t.rc, &secret).managed
    {
        t.secrets.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}
