//! The activation token Secrets the operator writes for a primary's secondaries: what they look
//! like, and how the operator tells one of its own from a Secret that is in the way. Pure: the
//! controller and the steps do the reading and writing.
//!
//! A token Secret the operator creates carries
//!
//! * the labels `app.kubernetes.io/managed-by: ferry-operator`, `replication.ferry.dev/cluster:
//!   <resource>` and `replication.ferry.dev/secondary-id: <id>` (found by a label selector);
//! * a controller owner reference to the `ReplicationCluster`, with its uid;
//! * the token's expiry, in Unix seconds, as the annotation `replication.ferry.dev/expires-at`.
//!
//! It is the operator's to replace or delete only when it has the labels **and** the owner
//! reference with this resource's uid. Labels alone prove nothing: a token Secret copied from
//! another region through GitOps carries them, and so does one left by an earlier resource of the
//! same name. Any other Secret of a requested name is left alone, whoever made it: the resource
//! says which Secret is in the way and why, and waits for a person to move it or rename the
//! grant. The Role cannot express this (Kubernetes RBAC cannot scope Secrets by label, nor a
//! `create` by name), so this check is what keeps the operator's writes to its own Secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::ReplicationCluster;

/// The value of [`LABEL_MANAGED_BY`] on the Secrets the operator writes.
pub const MANAGED_BY: &str = "ferry-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The name of the `ReplicationCluster` a token Secret was written for.
pub const LABEL_CLUSTER: &str = "replication.ferry.dev/cluster";
/// The secondary whose activation token a Secret holds.
pub const LABEL_SECONDARY: &str = "replication.ferry.dev/secondary-id";
/// Unix seconds the token in a Secret expires.
pub const ANNOTATION_EXPIRES: &str = "replication.ferry.dev/expires-at";
/// The key of the token in a token Secret's data.
pub const TOKEN_KEY: &str = "token";

/// Why a Secret is not the operator's to replace or delete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOurs {
    #[error("it is not labelled {LABEL_MANAGED_BY}={MANAGED_BY}")]
    NotManaged,
    #[error("it belongs to ReplicationCluster {0:?}")]
    OtherCluster(String),
    #[error(
        "it is labelled as this resource's but has no owner reference to it (uid {0}): a copy \
         from another region, or left by an earlier resource of the same name"
    )]
    NotOwned(String),
}

/// Whether `secret` is a token Secret this resource created.
pub fn check(rc: &ReplicationCluster, secret: &Secret) -> Result<(), NotOurs> {
    let labels = secret.labels();
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return Err(NotOurs::NotManaged);
    }
    let cluster = labels.get(LABEL_CLUSTER).cloned().unwrap_or_default();
    if cluster != rc.name_any() {
        return Err(NotOurs::OtherCluster(cluster));
    }
    let uid = rc.uid().unwrap_or_default();
    let owned = !uid.is_empty()
        && secret.owner_references().iter().any(|o| {
            o.controller == Some(true)
                && o.uid == uid
                && o.kind == ReplicationCluster::kind(&())
                && o.api_version == ReplicationCluster::api_version(&())
        });
    if owned {
        Ok(())
    } else {
        Err(NotOurs::NotOwned(uid))
    }
}

/// The label selector of the Secrets that may be this resource's ([`check`] decides).
pub fn selector(rc: &ReplicationCluster) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_CLUSTER}={}",
        rc.name_any()
    )
}

/// The expiry a token Secret's annotation gives, in Unix seconds.
pub fn expires_at(secret: &Secret) -> Option<u64> {
    secret
        .annotations()
        .get(ANNOTATION_EXPIRES)
        .and_then(|v| v.parse().ok())
}

/// The token Secret `name` holding `token` for secondary `id`, labelled and owned by `rc`;
/// `None` when `rc` has no uid yet (it was never stored).
pub fn build(
    rc: &ReplicationCluster,
    name: &str,
    id: &str,
    token: &str,
    expires_at: u64,
) -> Option<Secret> {
    let owner = rc.controller_owner_ref(&())?;
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: rc.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.into(), MANAGED_BY.into()),
                (LABEL_CLUSTER.into(), rc.name_any()),
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
            TOKEN_KEY.into(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicationClusterSpec;

    fn resource(name: &str, uid: &str) -> ReplicationCluster {
        let mut rc = ReplicationCluster::new(name, ReplicationClusterSpec::default());
        rc.metadata.namespace = Some("ferry".into());
        rc.metadata.uid = Some(uid.into());
        rc
    }

    #[test]
    fn a_token_secret_the_resource_wrote_is_its_own() {
        let west = resource("west", "uid-1");
        let secret = build(&west, "east-activation", "east", "ferry1.x", 100).unwrap();
        assert_eq!(check(&west, &secret), Ok(()));
        assert_eq!(expires_at(&secret), Some(100));
        assert!(selector(&west).contains("replication.ferry.dev/cluster=west"));
    }

    #[test]
    fn a_secret_without_the_labels_is_not_its_own() {
        let west = resource("west", "uid-1");
        let mut secret = build(&west, "east-activation", "east", "ferry1.x", 100).unwrap();
        secret.metadata.labels = None;
        assert_eq!(check(&west, &secret), Err(NotOurs::NotManaged));
    }

    #[test]
    fn another_resources_token_secret_is_not_its_own() {
        let north = resource("north", "uid-2");
        let secret = build(&north, "east-activation", "east", "ferry1.x", 100).unwrap();
        let west = resource("west", "uid-1");
        assert_eq!(
            check(&west, &secret),
            Err(NotOurs::OtherCluster("north".into()))
        );
    }

    /// A Secret copied from another region, or left by a deleted resource of the same name,
    /// has the labels but another uid in its owner reference (or none).
    #[test]
    fn labels_without_the_owner_reference_are_not_enough() {
        let earlier = resource("west", "uid-old");
        let copied = build(&earlier, "east-activation", "east", "ferry1.x", 100).unwrap();
        let west = resource("west", "uid-1");
        assert_eq!(
            check(&west, &copied),
            Err(NotOurs::NotOwned("uid-1".into()))
        );
        let mut unowned = build(&west, "east-activation", "east", "ferry1.x", 100).unwrap();
        unowned.metadata.owner_references = None;
        assert!(matches!(check(&west, &unowned), Err(NotOurs::NotOwned(_))));
        // Nor is an owner reference that is not the controller's.
        let mut shared = build(&west, "east-activation", "east", "ferry1.x", 100).unwrap();
        shared.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(matches!(check(&west, &shared), Err(NotOurs::NotOwned(_))));
    }

    #[test]
    fn a_resource_never_stored_owns_nothing() {
        let mut draft = resource("west", "");
        draft.metadata.uid = None;
        assert!(build(&draft, "east-activation", "east", "t", 1).is_none());
    }
}
