//! Unattended start-up: open (or, on a cluster's first start, create) the keyrings with the root
//! key, and make sure the cluster has a root token.
//!
//! * The local keyring (`core/local/keyring`) is created on a cluster's first start, with the
//!   initial root token: taken from `--initial-root-token-file`, or generated and printed once.
//! * The replicated keyring (`core/keyring`) is created by the first cluster that may write it.
//!   A performance secondary is refused that write (read-only) and waits until the keyring
//!   arrives from its primary; it reports itself sealed meanwhile.
//!
//! A root key that does not open a stored keyring stops start-up with an error naming the path:
//! the key file is wrong, and nothing is written.

use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::barrier::{Key, Keyring};
use crate::storage::{Storage, StorageError};
use crate::token::{TokenEntry, TokenStore, new_token};

pub const REPLICATED_KEYRING: &str = "core/keyring";
pub const LOCAL_KEYRING: &str = "core/local/keyring";
/// How long start-up waits for storage that answers but fails (a sidecar still recovering).
const STORAGE_WAIT: Duration = Duration::from_secs(60);

/// Opens the local keyring, creating it (and the root token) on the first start.
pub async fn local_keyring(
    storage: &Storage,
    root: &Key,
    initial_token: Option<String>,
) -> anyhow::Result<Keyring> {
    let mut warned = false;
    let started = std::time::Instant::now();
    let mut storage_warned = false;
    loop {
        match open_or_create_local_keyring(storage, root, initial_token.clone()).await {
            // The sidecar answers but cannot serve yet (it took the write fence and is
            // recovering, or etcd is restarting): wait, within bounds, as for its socket.
            Err(e)
                if matches!(
                    e.downcast_ref::<StorageError>(),
                    Some(StorageError::Failed(_))
                ) && started.elapsed() < STORAGE_WAIT =>
            {
                if !storage_warned {
                    warn!(error = %format!("{e:#}"), "storage is not ready yet; retrying for up to {}s", STORAGE_WAIT.as_secs());
                    storage_warned = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e)
                if matches!(
                    e.downcast_ref::<StorageError>(),
                    Some(StorageError::NotActive { .. })
                ) =>
            {
                // A standby of a cluster whose active node has not initialised it yet.
                if !warned {
                    warn!(
                        "a performance standby: waiting for the active node to initialise the cluster"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

async fn open_or_create_local_keyring(
    storage: &Storage,
    root: &Key,
    initial_token: Option<String>,
) -> anyhow::Result<Keyring> {
    if let Some(sealed) = storage.get(LOCAL_KEYRING).await? {
        return Keyring::open_with_root(root, LOCAL_KEYRING, &sealed).with_context(|| {
            format!("the root key does not open {LOCAL_KEYRING}: wrong key file?")
        });
    }
    let keyring = Keyring::generate();
    let (generated, accessor) = new_token();
    let (token, printed) = match initial_token {
        Some(t) => (t, false),
        None => (generated, true),
    };
    let entry = TokenEntry {
        accessor,
        policies: vec!["root".into()],
        display_name: "root".into(),
        creation_time: unix_now(),
        orphan: true,
        ..TokenEntry::default()
    };
    // The token first: a keyring without its root token would leave the cluster locked out.
    TokenStore {
        storage,
        keyring: &keyring,
    }
    .put(&token, &entry)
    .await?;
    storage
        .put(LOCAL_KEYRING, keyring.seal_with_root(root, LOCAL_KEYRING))
        .await?;
    if printed {
        println!("ferry-vault: initialised this cluster; initial root token: {token}");
    }
    info!("initialised this cluster's local keyring and root token");
    Ok(keyring)
}

/// Opens the replicated keyring; creates it if this cluster may write it, else waits for it.
pub async fn replicated_keyring(storage: &Storage, root: &Key) -> anyhow::Result<Keyring> {
    let mut warned = false;
    loop {
        if let Some(sealed) = storage.get(REPLICATED_KEYRING).await? {
            return Keyring::open_with_root(root, REPLICATED_KEYRING, &sealed).with_context(|| {
                format!(
                    "the root key does not open {REPLICATED_KEYRING}: every region of a replication set needs the same root key"
                )
            });
        }
        let keyring = Keyring::generate();
        match storage
            .put(
                REPLICATED_KEYRING,
                keyring.seal_with_root(root, REPLICATED_KEYRING),
            )
            .await
        {
            Ok(_) => {
                info!("created the replicated keyring");
                return Ok(keyring);
            }
            Err(StorageError::ReadOnly(_)) => {
                if !warned {
                    warn!("a performance secondary: waiting for the keyring from the primary");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(StorageError::NotActive { .. }) => {
                if !warned {
                    warn!(
                        "a performance standby: waiting for the active node to create the keyring"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("failed to create the replicated keyring: {e}"),
        }
    }
}

/// How often a running server checks whether the replicated keyring changed.
const KEYRING_CHECK: Duration = Duration::from_millis(250);

/// Keeps `slot` holding the replicated keyring: opens or creates it, then picks up each new
/// version. A cluster that joins a replication set takes the primary's keyring with its data;
/// from then on its server must open values with that one.
pub async fn keep_replicated_keyring(
    storage: Storage,
    root: Key,
    slot: std::sync::Arc<std::sync::RwLock<Option<Keyring>>>,
) {
    let set = |keyring| *slot.write().expect("keyring lock poisoned") = Some(keyring);
    match replicated_keyring(&storage, &root).await {
        Ok(keyring) => {
            if let Err(e) = crate::mounts_api::create_default_table(&storage, &keyring).await {
                warn!(error = %e, "failed to create the default mounts");
            }
            set(keyring);
            info!("unsealed");
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "staying sealed");
            return;
        }
    }
    let mut seen = storage.get(REPLICATED_KEYRING).await.ok().flatten();
    loop {
        tokio::time::sleep(KEYRING_CHECK).await;
        let Ok(Some(sealed)) = storage.get(REPLICATED_KEYRING).await else {
            continue;
        };
        if seen.as_ref() == Some(&sealed) {
            continue;
        }
        match Keyring::open_with_root(&root, REPLICATED_KEYRING, &sealed) {
            Ok(keyring) => {
                set(keyring);
                info!(
                    "the replicated keyring changed (joined a replication set?): using the new one"
                );
            }
            Err(e) => {
                warn!(error = %e, "the new replicated keyring does not open with this root key")
            }
        }
        seen = Some(sealed);
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
