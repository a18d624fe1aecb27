//! The test harness's kube-apiserver: two run side by side, each with its own state; manifests
//! apply through discovery (a CRD and its custom resource in one YAML, the schema enforced); and
//! a ServiceAccount token carries exactly what RBAC grants it, which is how the operator's RBAC
//! manifests will be tested.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::prelude::BASE64_STANDARD;

use ferry_tests::kube::{KubeApiServer, client_from_kubeconfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.ferry.dev
spec:
  group: test.ferry.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size:
                  type: integer
                  minimum: 1
---
# No namespace: goes to "default".
apiVersion: test.ferry.dev/v1
kind: Widget
metadata:
  name: first
spec:
  size: 3
"#;

const READ_SECRETS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: read-secrets
  namespace: probe
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: read-secrets
  namespace: probe
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: read-secrets
subjects:
  - kind: ServiceAccount
    name: prober
    namespace: probe
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_apply_crds_and_enforce_rbac() -> anyhow::Result<()> {
    let started = Instant::now();
    let (west, east) = tokio::try_join!(KubeApiServer::start(), KubeApiServer::start())?;
    eprintln!(
        "two kube-apiservers ready in {:?}: {} and {}",
        started.elapsed(),
        west.url(),
        east.url()
    );
    assert_ne!(west.url(), east.url());

    // Separate state: a namespace made on one does not exist on the other.
    let west_admin = west.client().await?;
    let east_admin = east.client().await?;
    let only_west = Namespace {
        metadata: ObjectMeta {
            name: Some("only-west".to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(west_admin.clone())
        .create(&PostParams::default(), &only_west)
        .await?;
    assert!(
        Api::<Namespace>::all(east_admin.clone())
            .get_opt("only-west")
            .await?
            .is_none()
    );

    // The CRD and a Widget in one YAML; the Widget waits for its kind to be served.
    west.apply_yaml(WIDGETS).await?;
    west.wait_crd_established("widgets.test.ferry.dev", Duration::from_secs(30))
        .await?;
    let widget_kind = GroupVersionKind::gvk("test.ferry.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        west_admin.clone(),
        "default",
        &ApiResource::from_gvk(&widget_kind),
    );
    let first = widgets.get("first").await?;
    assert_eq!(first.data["spec"]["size"], 3);
    // Applying again updates in place.
    west.apply_yaml(&WIDGETS.replace("size: 3", "size: 4"))
        .await?;
    assert_eq!(widgets.get("first").await?.data["spec"]["size"], 4);
    // The schema is the server's: a Widget of size 0 is refused, and the error says why.
    let empty =
        "apiVersion: test.ferry.dev/v1\nkind: Widget\nmetadata: {name: empty}\nspec: {size: 0}";
    let refused = west
        .apply_yaml(empty)
        .await
        .expect_err("a Widget violating the schema was applied");
    assert!(format!("{refused:#}").contains("spec.size"), "{refused:#}");
    let east_group = hyper::Request::get("/apis/test.ferry.dev/v1").body(Vec::new())?;
    match east_admin.request_text(east_group).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        other => panic!("expected east not to serve the group applied to west, got {other:?}"),
    }

    // A ServiceAccount with no grants may not list Secrets.
    let kubeconfig = west.service_account_kubeconfig("probe", "prober").await?;
    let prober = client_from_kubeconfig(&kubeconfig).await?;
    let probe_secrets: Api<Secret> = Api::namespaced(prober.clone(), "probe");
    match probe_secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("expected 403 listing secrets without grants, got {other:?}"),
    }

    // Granted `list secrets` in its namespace, it may (RBAC's cache catches up within moments),
    // and still nowhere else.
    west.apply_yaml(READ_SECRETS).await?;
    ferry_tests::wait_for(
        "the RoleBinding to let the ServiceAccount list secrets",
        Duration::from_secs(30),
        || async { probe_secrets.list(&ListParams::default()).await.ok() },
    )
    .await?;
    match Api::<Secret>::namespaced(prober, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("expected 403 listing secrets in default, got {other:?}"),
    }
    // The token means nothing to the other API server, which has its own signing key, even for
    // an account of the same name there.
    east.service_account_kubeconfig("probe", "prober").await?;
    let mut west_token_at_east = Kubeconfig::read_from(&kubeconfig)?;
    let cluster = west_token_at_east.clusters[0]
        .cluster
        .as_mut()
        .expect("the kubeconfig names its cluster");
    cluster.server = Some(east.url());
    cluster.certificate_authority_data = Some(BASE64_STANDARD.encode(east.ca_pem()));
    let config =
        kube::Config::from_custom_kubeconfig(west_token_at_east, &KubeConfigOptions::default())
            .await?;
    let impostor = kube::Client::try_from(config)?;
    match Api::<Secret>::namespaced(impostor, "probe")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 401 => {}
        other => panic!("expected 401 for west's token at east, got {other:?}"),
    }
    Ok(())
}
