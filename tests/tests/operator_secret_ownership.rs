//! The operator writes and deletes only the token Secrets it created for a resource (labelled as
//! that resource's and owned by it, uid and all). A Secret of a requested name that is anyone
//! else's (a user's, or a copy carrying the operator's labels, as GitOps makes when it carries a
//! token Secret from another region) is never overwritten nor deleted, its secondary is never
//! revoked on its word, and the resource says which Secret is in the way: `Ready` false with
//! reason `SecretInTheWay`, and one Warning event. Its own Secrets it replaces and deletes as
//! before. Real kube-apiserver, real ferry-vault, the operator as its ServiceAccount with the
//! RBAC as shipped.

use std::collections::BTreeMap;

use ferry_tests::operator::{
    LONG, NAMESPACE, OperatorRegion, condition, condition_message, create, primary_spec, secret,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};

/// The operator's labels on a token Secret for secondary `id` of resource `west`, and an expiry
/// long past: what a copy of one of its Secrets looks like.
fn labelled_copy(name: &str, id: &str) -> Secret {
    let mut s = secret(name, "token", &format!("{id}'s token, kept by its owner"));
    s.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            "ferry-operator".into(),
        ),
        ("replication.ferry.dev/cluster".into(), "west".into()),
        ("replication.ferry.dev/secondary-id".into(), id.into()),
    ]));
    s.metadata.annotations = Some(BTreeMap::from([(
        "replication.ferry.dev/expires-at".into(),
        "1".into(),
    )]));
    s
}

/// What must not change about a Secret the operator does not own.
fn fingerprint(s: &Secret) -> (Option<String>, Option<String>, Option<String>) {
    (
        s.metadata.uid.clone(),
        s.metadata.resource_version.clone(),
        s.data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_the_operator_did_not_create_are_never_overwritten_nor_deleted()
-> anyhow::Result<()> {
    let mut west = OperatorRegion::start("west").await?;
    let secrets = west.secrets();
    // A user's Secret, and copies carrying the operator's labels (one with the owner
    // reference of a resource of the same name elsewhere, one with none), all there first.
    secrets
        .create(
            &PostParams::default(),
            &secret("east-activation", "token", "the user's own data"),
        )
        .await?;
    let mut copied = labelled_copy("south-activation", "south");
    copied.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "replication.ferry.dev/v1alpha1".into(),
        kind: "ReplicationCluster".into(),
        name: "west".into(),
        uid: "6b1d3f7e-0000-4000-8000-000000000000".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    secrets.create(&PostParams::default(), &copied).await?;
    // For a secondary the resource does not grant: a copy must not make it revoke one.
    secrets
        .create(
            &PostParams::default(),
            &labelled_copy("north-activation", "north"),
        )
        .await?;
    let foreign = ["east-activation", "south-activation", "north-activation"];
    let mut before = BTreeMap::new();
    for name in foreign {
        before.insert(name, fingerprint(&secrets.get(name).await?));
    }

    west.start_operator("west-operator")?;
    // "brief"'s tokens expire after a second: its Secret is the operator's own, and is replaced
    // (deleted, then created afresh; never updated) on every pass.
    let mut spec = primary_spec(&west, &["east", "south", "brief"]);
    spec.primary.as_mut().expect("primary").secondaries[2].ttl = "1s".into();
    create(&west, "west", spec).await?;
    let tokens = std::sync::Mutex::new(Vec::new());
    ferry_tests::wait_for("brief's token Secret written three times", LONG, || async {
        let (_, _, token) = fingerprint(&secrets.get_opt("brief-activation").await.ok()??);
        let mut tokens = tokens.lock().expect("lock");
        if tokens.last() != Some(&token) {
            tokens.push(token);
        }
        (tokens.len() >= 3).then_some(())
    })
    .await?;
    for name in foreign {
        let now = secrets.get_opt(name).await?;
        let after = now.as_ref().map(fingerprint);
        anyhow::ensure!(
            after.as_ref() == Some(&before[name]),
            "Secret {name} was overwritten or deleted by the operator: {}\n{}",
            match &after {
                None => "deleted".to_owned(),
                Some((_, version, token)) => format!(
                    "now at resourceVersion {version:?}, token {}",
                    if *token == before[name].2 {
                        "unchanged"
                    } else {
                        "replaced"
                    }
                ),
            },
            west.operators[0].log()
        );
    }
    let rc = west
        .wait_resource("west", "the Secrets in the way named", LONG, |rc| {
            condition(rc, "Ready").is_some_and(|(s, r)| s == "False" && r == "SecretInTheWay")
        })
        .await?;
    let message = condition_message(&rc, "Ready");
    for says in [
        r#"Secret "east-activation""#,
        "is not labelled app.kubernetes.io/managed-by=ferry-operator",
        r#"Secret "south-activation""#,
        "no owner reference to it",
        "does not overwrite",
    ] {
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
    assert!(
        !rc.status
            .as_ref()
            .is_some_and(|s| s.issued_tokens.contains_key("north")),
        "a copy's secondary counted as issued"
    );
    // One Warning event says so, not one per pass.
    let events: Api<Event> = Api::namespaced(west.client.clone(), NAMESPACE);
    let warned = ferry_tests::wait_for("the SecretInTheWay event", LONG, || async {
        let list = events.list(&Default::default()).await.ok()?;
        let found: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SecretInTheWay"))
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await?;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].type_.as_deref(), Some("Warning"));
    assert!(warned[0].series.is_none(), "repeated: {:?}", warned[0]);
    assert!(
        warned[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("east-activation")),
        "{:?}",
        warned[0].note
    );

    // Moving the user's Secret out of the way lets the operator write its own there.
    secrets
        .delete("east-activation", &Default::default())
        .await?;
    let east = ferry_tests::wait_for("east's token Secret", LONG, || async {
        secrets.get_opt("east-activation").await.ok()?
    })
    .await?;
    assert_eq!(
        east.metadata.owner_references.unwrap_or_default()[0].uid,
        rc.metadata.uid.clone().unwrap_or_default()
    );
    let rc = west
        .wait_resource("west", "east no longer in the way", LONG, |rc| {
            !condition_message(rc, "Ready").contains("east-activation")
        })
        .await?;
    assert!(condition_message(&rc, "Ready").contains("south-activation"));

    // Deleting the resource deletes the Secrets it wrote, and only those.
    west.clusters().delete("west", &Default::default()).await?;
    ferry_tests::wait_for("the resource and its own Secrets to go", LONG, || async {
        let gone = west.clusters().get_opt("west").await.ok()?.is_none();
        let own_gone = secrets.get_opt("brief-activation").await.ok()?.is_none()
            && secrets.get_opt("east-activation").await.ok()?.is_none();
        (gone && own_gone).then_some(())
    })
    .await?;
    for name in ["south-activation", "north-activation"] {
        let now = secrets.get_opt(name).await?;
        assert_eq!(
            now.as_ref().map(fingerprint).as_ref(),
            Some(&before[name]),
            "{name} after the resource's deletion"
        );
    }
    Ok(())
}
