//! The operator sends the admin token (`X-Vault-Token`) to a plain `http://` address only when
//! the resource says `spec.cluster.insecureHttp: true`. Without it the spec is invalid
//! (`InvalidSpec` naming the field) and nothing reaches the address: not while reconciling, not
//! when the resource is deleted. Nor does it go to an address its Secret's annotation
//! `replication.ferry.dev/send-to` does not name (a confused deputy otherwise: whoever may create
//! a resource could have any Secret sent anywhere). A listener of the test's stands at the
//! address and records every connection.

use std::sync::{Arc, Mutex};

use ferry_operator::crd::{ClusterRef, ReplicationClusterSpec};
use ferry_operator::secret_use::SEND_TO;
use ferry_tests::operator::{
    ADMIN_SECRET, LONG, OperatorRegion, cluster_ref, condition, condition_message, create,
    primary_spec, secret, send_to,
};
use ferry_tests::ports::free_port;
use kube::api::PostParams;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Accepts connections on loopback and keeps the first bytes of each.
struct Listener {
    address: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let n = tokio::time::timeout(
                            std::time::Duration::from_secs(2),
                            stream.read(&mut buf),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                        seen.lock().expect("lock").push(request);
                    });
                }
            })
        };
        Ok(Self {
            address: format!("http://127.0.0.1:{port}"),
            seen,
            task,
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    /// Fails, saying `what` happened, when anything reached the listener.
    fn ensure_untouched(&self, what: &str) -> anyhow::Result<()> {
        let seen = self.seen();
        anyhow::ensure!(seen.is_empty(), "{what}: {seen:?}");
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn at(listener: &Listener, region: &OperatorRegion, insecure_http: bool) -> ReplicationClusterSpec {
    ReplicationClusterSpec {
        cluster: ClusterRef {
            address: listener.address.clone(),
            insecure_http,
            ..cluster_ref(region)
        },
        ..primary_spec(region, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_token_goes_to_a_plain_http_address_only_when_the_spec_allows_it()
-> anyhow::Result<()> {
    let mut west = OperatorRegion::start("west").await?;
    west.start_operator("west-operator")?;
    let listener = Listener::start().await?;

    create(&west, "west", at(&listener, &west, false)).await?;
    // Whichever comes first: the operator marks the spec, or it calls the address.
    let rc = west
        .wait_resource(
            "west",
            "InvalidSpec, or a call to the address",
            LONG,
            |rc| {
                condition(rc, "InvalidSpec").is_some_and(|(s, _)| s == "True")
                    || !listener.seen().is_empty()
            },
        )
        .await?;
    listener
        .ensure_untouched("the operator called a plain http:// address without insecureHttp")?;
    let message = condition_message(&rc, "InvalidSpec");
    assert!(
        message.contains("spec.cluster.address") && message.contains("spec.cluster.insecureHttp"),
        "{message}"
    );
    assert_eq!(
        condition(&rc, "Ready").map(|(_, reason)| reason).as_deref(),
        Some("InvalidSpec")
    );

    // Deleting it runs the finalizer's cleanup, which revokes unused tokens with the admin
    // token: it must not call the address either.
    west.clusters().delete("west", &Default::default()).await?;
    ferry_tests::wait_for("the resource to go", LONG, || async {
        west.clusters()
            .get_opt("west")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    listener
        .ensure_untouched("the finalizer called a plain http:// address without insecureHttp")?;

    // Allowed by the spec but not by the admin token's Secret, which names only ferry-vault's
    // address: nothing goes there either, and the status says which annotation would allow it.
    create(&west, "west", at(&listener, &west, true)).await?;
    let rc = west
        .wait_resource(
            "west",
            "unreachable, or a call to the address",
            LONG,
            |rc| condition_message(rc, "Ready").contains(SEND_TO) || !listener.seen().is_empty(),
        )
        .await?;
    listener.ensure_untouched(
        "the operator sent the admin token to an address its Secret does not name",
    )?;
    let message = condition_message(&rc, "Ready");
    assert!(message.contains(&listener.address), "{message}");

    // Allowed by both, the token goes there: the listener would have seen it.
    let both = format!("{}, {}", west.vault.api.base(), listener.address);
    west.secrets()
        .replace(
            ADMIN_SECRET,
            &PostParams::default(),
            &send_to(secret(ADMIN_SECRET, "token", &west.root_token), &both),
        )
        .await?;
    let request = ferry_tests::wait_for("a call to the address", LONG, || async {
        listener.seen().into_iter().find(|r| !r.is_empty())
    })
    .await?;
    assert!(
        request
            .to_ascii_lowercase()
            .contains(&format!("x-vault-token: {}", west.root_token).to_ascii_lowercase()),
        "{request}"
    );
    Ok(())
}
