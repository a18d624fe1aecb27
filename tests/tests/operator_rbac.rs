//! The operator's RBAC as shipped (`deploy/operator-rbac.yaml`) grants what the operator calls
//! and nothing more: asked of a real kube-apiserver as the operator's ServiceAccount, through
//! SelfSubjectAccessReviews, one row per call. In particular it may never update or patch a
//! Secret (it only creates its token Secrets and deletes its own), nor touch a Lease but its
//! own. That the operator works with no more than this is what the end-to-end tests show: they
//! run it as this account.

use std::time::Duration;

use ferry_tests::kube::{KubeApiServer, client_from_kubeconfig};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

const NAMESPACE: &str = "ferry-system";

/// (verb, API group, resource, name, namespace, allowed)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

#[rustfmt::skip]
const EXPECTED: &[Row] = &[
    // The resources it reconciles: watched, its finalizer patched in and out, status replaced.
    ("list", "replication.ferry.dev", "replicationclusters", "", NAMESPACE, true),
    ("watch", "replication.ferry.dev", "replicationclusters", "", NAMESPACE, true),
    ("patch", "replication.ferry.dev", "replicationclusters", "west", NAMESPACE, true),
    ("update", "replication.ferry.dev", "replicationclusters/status", "west", NAMESPACE, true),
    ("create", "replication.ferry.dev", "replicationclusters", "", NAMESPACE, false),
    ("update", "replication.ferry.dev", "replicationclusters", "west", NAMESPACE, false),
    ("delete", "replication.ferry.dev", "replicationclusters", "west", NAMESPACE, false),
    // Secrets: read and watched; token Secrets created and deleted; never modified.
    ("get", "", "secrets", "vault-admin", NAMESPACE, true),
    ("list", "", "secrets", "", NAMESPACE, true),
    ("watch", "", "secrets", "", NAMESPACE, true),
    ("create", "", "secrets", "", NAMESPACE, true),
    ("delete", "", "secrets", "east-activation", NAMESPACE, true),
    ("update", "", "secrets", "east-activation", NAMESPACE, false),
    ("patch", "", "secrets", "east-activation", NAMESPACE, false),
    ("deletecollection", "", "secrets", "", NAMESPACE, false),
    ("get", "", "secrets", "vault-admin", "default", false),
    ("create", "", "secrets", "", "kube-system", false),
    // Its own Lease only.
    ("get", "coordination.k8s.io", "leases", "ferry-operator", NAMESPACE, true),
    ("update", "coordination.k8s.io", "leases", "ferry-operator", NAMESPACE, true),
    ("create", "coordination.k8s.io", "leases", "", NAMESPACE, true),
    ("get", "coordination.k8s.io", "leases", "another-controller", NAMESPACE, false),
    ("update", "coordination.k8s.io", "leases", "another-controller", NAMESPACE, false),
    ("delete", "coordination.k8s.io", "leases", "ferry-operator", NAMESPACE, false),
    // Events.
    ("create", "events.k8s.io", "events", "", NAMESPACE, true),
    ("patch", "events.k8s.io", "events", "west.1", NAMESPACE, true),
    // Nothing else.
    ("get", "", "configmaps", "any", NAMESPACE, false),
    ("create", "", "pods", "", NAMESPACE, false),
    ("get", "", "serviceaccounts", "ferry-operator", NAMESPACE, false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_account_may_do_what_the_operator_does_and_no_more() -> anyhow::Result<()> {
    let kube = KubeApiServer::start().await?;
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/operator-rbac.yaml"
    ))?;
    kube.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    ))
    .await?;
    kube.apply_yaml(&rbac).await?;
    let operator = client_from_kubeconfig(
        &kube
            .service_account_kubeconfig(NAMESPACE, "ferry-operator")
            .await?,
    )
    .await?;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(operator);
    // RBAC objects just applied reach the authorizer's cache within moments, each Role and
    // binding on its own: poll the whole table until it matches, then report what still differs.
    let differences = || async {
        let mut wrong = Vec::new();
        for &row in EXPECTED {
            let (verb, group, resource, name, namespace, expected) = row;
            let answer = allowed(&reviews, row).await?;
            if answer != expected {
                wrong.push(format!(
                    "{verb} {group}/{resource} {name:?} in {namespace}: allowed {answer}, expected {expected}"
                ));
            }
        }
        anyhow::Ok(wrong)
    };
    let settled = ferry_tests::wait_for(
        "the Role to take effect",
        Duration::from_secs(30),
        || async { differences().await.ok().filter(Vec::is_empty) },
    )
    .await;
    let wrong = match settled {
        Ok(none) => none,
        Err(_) => differences().await?,
    };
    assert!(
        wrong.is_empty(),
        "the Role is not as expected:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

/// Whether the reviewing account may make the call in `row`.
async fn allowed(reviews: &Api<SelfSubjectAccessReview>, row: Row) -> anyhow::Result<bool> {
    let (verb, group, resource, name, namespace, _) = row;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                name: (!name.is_empty()).then(|| name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
