//! `kubectl apply --server-side` for tests: every document of a multi-document YAML, whatever its
//! kind, so the tests install the CRD and RBAC manifests the operator ships exactly as written.
//!
//! Each document becomes a [`DynamicObject`]; discovery maps its `apiVersion` and `kind` to a
//! resource and a scope, and a server-side apply patch (field manager `ferry-tests`, forced)
//! creates or updates it. Server-side apply is beta and on by default in v1.20, and saves the
//! create-or-replace dance with resource versions. Namespaced objects without a namespace go to
//! `default`, as with kubectl.
//!
//! A custom resource may follow its CRD in the same YAML. Its kind is served only once the CRD is
//! established, so for kinds defined earlier in the same call a missing kind is waited for
//! (bounded); any other unknown kind fails at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::error::DiscoveryError;

const FIELD_MANAGER: &str = "ferry-tests";
/// How long a kind defined by a CRD of the same YAML may take to be served.
const NEW_KIND_TIMEOUT: Duration = Duration::from_secs(60);
const NEW_KIND_POLL: Duration = Duration::from_millis(100);

/// A kind by API group and name, as a CRD defines it.
type GroupKind = (String, String);

/// Applies every non-empty document of `yaml`, in order; stops at the first failure.
pub(super) async fn apply_yaml(client: &Client, yaml: &str) -> anyhow::Result<()> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).context("failed to parse the YAML to apply")?;
    let mut defined_here: HashSet<GroupKind> = HashSet::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(document)
            .with_context(|| format!("document {index} is not a Kubernetes object"))?;
        let gvk = object
            .types
            .as_ref()
            .context("no apiVersion or kind")
            .and_then(|t| GroupVersionKind::try_from(t).map_err(anyhow::Error::from))
            .with_context(|| format!("document {index} has no valid apiVersion and kind"))?;
        let name = object
            .metadata
            .name
            .clone()
            .with_context(|| format!("document {index} ({}) has no metadata.name", gvk.kind))?;
        let await_kind = defined_here.contains(&(gvk.group.clone(), gvk.kind.clone()));
        match apply_object(client, &gvk, &name, &object, await_kind).await {
            Ok(()) => {}
            Err(kube::Error::Discovery(DiscoveryError::MissingKind(_))) => anyhow::bail!(
                "failed to apply document {index} ({} {name}): the server serves no kind {} in {}",
                gvk.kind,
                gvk.kind,
                gvk.api_version()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("failed to apply document {index} ({} {name})", gvk.kind)
                });
            }
        }
        if let Some(kind) = crd_defines(&gvk, &object) {
            defined_here.insert(kind);
        }
    }
    Ok(())
}

/// Resolves the object's resource and applies it; retries while a freshly defined kind is not
/// served yet when `await_kind`.
async fn apply_object(
    client: &Client,
    gvk: &GroupVersionKind,
    name: &str,
    object: &DynamicObject,
    await_kind: bool,
) -> kube::Result<()> {
    let deadline = Instant::now() + NEW_KIND_TIMEOUT;
    loop {
        match try_apply(client, gvk, name, object).await {
            Err(e) if await_kind && not_served_yet(&e) && Instant::now() < deadline => {
                tokio::time::sleep(NEW_KIND_POLL).await;
            }
            result => return result,
        }
    }
}

async fn try_apply(
    client: &Client,
    gvk: &GroupVersionKind,
    name: &str,
    object: &DynamicObject,
) -> kube::Result<()> {
    let (resource, capabilities) = discovery::pinned_kind(client, gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(object)).await?;
    Ok(())
}

/// Whether `error` says the kind is not (yet) served: its group version is unknown (404) or
/// does not list it.
fn not_served_yet(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(
            DiscoveryError::MissingKind(_) | DiscoveryError::MissingResource(_),
        ) => true,
        _ => false,
    }
}

/// The kind a CustomResourceDefinition object defines, if it is one.
fn crd_defines(gvk: &GroupVersionKind, object: &DynamicObject) -> Option<GroupKind> {
    if gvk.group != "apiextensions.k8s.io" || gvk.kind != "CustomResourceDefinition" {
        return None;
    }
    let spec = object.data.get("spec")?;
    let group = spec.get("group")?.as_str()?;
    let kind = spec.get("names")?.get("kind")?.as_str()?;
    Some((group.to_owned(), kind.to_owned()))
}
