//! ferry-vault: a Vault-API-compatible secrets server whose storage is Ferry's sidecar.
//!
//! Every value it stores is sealed by the [`barrier`] before it reaches the sidecar's storage
//! API ([`storage`]); start-up opens or creates the keyrings with the root key from a file
//! ([`unseal`]); [`server`] is the HTTP API in Vault's conventions.
//!
//! This is the first slice of the server: the barrier, unattended start-up, root token, the
//! `sys/health`, `sys/seal-status`, `sys/init` and `auth/token/lookup-self` endpoints, and KV
//! version 2 at `secret/` ([`kv`], [`kv_api`]), transit at `transit/` ([`transit`],
//! [`transit_api`]), tokens ([`token`], [`token_api`]), ACL policies
//! checked on every request ([`policy`], [`policy_api`]) for the operation and canonical path
//! the request is parsed into once ([`request`]), and `sys/replication/...` proxied to
//! the sidecar ([`replication_proxy`]), and audit devices that log every request and response
//! with its secrets hashed ([`audit`], [`audit_api`]).

pub mod audit;
pub mod audit_api;
pub mod barrier;
pub mod config;
pub mod forward_server;
pub mod forwarding;
pub mod ha;
pub mod kv;
pub mod kv_api;
pub mod mounts;
pub mod mounts_api;
pub mod policy;
pub mod policy_api;
pub mod read_cache;
pub mod replication_proxy;
pub mod request;
pub mod server;
pub mod storage;
pub mod tls;
pub mod token;
pub mod token_api;
pub mod transit;
pub mod transit_api;
pub mod unseal;

use std::sync::{Arc, RwLock};

use anyhow::Context;
use tracing::{info, warn};

use crate::barrier::Key;
use crate::config::Config;
use crate::server::ServerState;
use crate::storage::Storage;

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Certificate problems stop start-up before anything else happens.
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::ReloadingCert::load(tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })?),
        _ => None,
    };
    let text = read_root_key_file(&config.root_key_file)?;
    let root =
        Key::parse_root(&text).with_context(|| format!("in {}", config.root_key_file.display()))?;
    let initial_token = match &config.initial_root_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    wait_for_sidecar(&config.storage_socket).await?;
    let storage = Storage::connect(&config.storage_socket, config.read_cache_bytes);
    let cached = storage.clone();
    ferry_proto::tasks::spawn_restarting("read-cache", move || cached.clone().keep_read_cache());
    let local = unseal::local_keyring(&storage, &root, initial_token)
        .await
        .context("failed to open the local keyring")?;
    let audit = audit::Broker::load(&storage, &local)
        .await
        .context("failed to set up the audit devices")?;
    let state = Arc::new(ServerState {
        storage: storage.clone(),
        local,
        replicated: Arc::new(RwLock::new(None)),
        path_locks: Default::default(),
        mount_cache: Default::default(),
        audit,
        root: root.clone(),
        active_client: ha::ActiveClient::new(tls.as_ref()),
        sidecar_api: replication_proxy::SidecarApi::new(
            config
                .sidecar_api_socket
                .clone()
                .unwrap_or_else(|| ferry_proto::admin_socket(&config.storage_socket)),
        ),
    });
    let replicated = state.replicated.clone();
    ferry_proto::tasks::spawn_restarting("replicated-keyring", move || {
        unseal::keep_replicated_keyring(storage.clone(), root.clone(), replicated.clone())
    });
    let forward_socket = ferry_proto::forward_socket(&config.storage_socket);
    let forward = serve_forwarded(&forward_socket, server::routes(state.clone()))
        .with_context(|| format!("failed to serve {}", forward_socket.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let served = match tls {
        Some(cert) => {
            let watched = cert.clone();
            ferry_proto::tasks::spawn_restarting("tls-reload", move || watched.clone().watch());
            let listener = tls::TlsListener::new(listener, cert.server_config())
                .with_context(|| format!("failed to listen on {}", config.listen))?;
            info!(listen = %config.listen, "ferry-vault API ready (TLS)");
            axum::serve(
                listener,
                server::router(state)
                    .into_make_service_with_connect_info::<server::RemoteAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
        }
        None => {
            warn!(listen = %config.listen, "ferry-vault API ready WITHOUT TLS: tokens and secrets travel in clear; give --tls-cert-file and --tls-key-file");
            axum::serve(
                listener,
                server::router(state)
                    .into_make_service_with_connect_info::<server::RemoteAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
        }
    }
    .context("the HTTP server failed");
    forward.abort();
    let _ = std::fs::remove_file(&forward_socket);
    served
}

/// Reads the root key file, refusing one that the owner's group or others may access (as ssh
/// refuses a private key): the root key opens every keyring, so a copy anyone else on the host
/// can read is a leaked key.
fn read_root_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    check_owner_only(path, "root key file")?;
    std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the root key file {}", path.display()))
}

/// Refuses a secret file (`what`, for the message) that its group or others may access.
pub(crate) fn check_owner_only(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("failed to read the {what} {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the {what} {} has mode {mode:04o}, which lets its group or others access \
             it: make it readable by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// How long start-up waits for the sidecar's storage socket: in a pod both containers start
/// together, and the sidecar opens its socket only once it has recovered.
const SIDECAR_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits until the sidecar answers on `socket`, saying so now and then; an error naming the
/// socket after [`SIDECAR_WAIT`].
async fn wait_for_sidecar(socket: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut reported: Option<std::time::Instant> = None;
    loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() >= SIDECAR_WAIT => {
                anyhow::bail!(
                    "the sidecar's storage socket {} did not answer within {}s: {e}",
                    socket.display(),
                    SIDECAR_WAIT.as_secs()
                );
            }
            Err(e) => {
                if reported.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(5)) {
                    info!(socket = %socket.display(), error = %e, "waiting for the sidecar's storage socket");
                    reported = Some(std::time::Instant::now());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves requests forwarded by secondaries (through the sidecar) on `socket`, which only this
/// user may open: whoever reaches it acts as any identity.
fn serve_forwarded(
    socket: &std::path::Path,
    routes: axum::Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = ferry_proto::bind_private_unix(socket)
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    let service = ferry_proto::forward::forwarding_server::ForwardingServer::new(
        forward_server::ForwardServer { routes },
    )
    .max_decoding_message_size(2 * server::MAX_BODY_BYTES);
    info!(socket = %socket.display(), "taking forwarded requests");
    Ok(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
        {
            warn!(error = %e, "the forward socket failed");
        }
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("failed to install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
