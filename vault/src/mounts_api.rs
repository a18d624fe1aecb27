//! `sys/mounts` (list, read, enable, disable, tune) and the routing of every other `/v1/` path
//! to the engine mounted there (see `mounts` for the table itself).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::info;

use crate::barrier::Keyring;
use crate::mounts::{Engine, MOUNTS_PATH, Mount, MountError, MountTable, normalize_path};
use crate::policy_api::{authorize, authorize_request};
use crate::request::{ApiRequest, Operation, WriteKind};
use crate::server::{ApiError, ServerState, parse_body, top_level_envelope};
use crate::storage::{Storage, StorageError};
use crate::token::TokenEntry;
use crate::token_api::parse_duration;
use crate::unseal::unix_now;

/// Keys deleted per storage batch when a mount is disabled.
const DELETE_BATCH: usize = 100;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn sealed_table(keyring: &Keyring, table: &MountTable) -> Vec<u8> {
    keyring.seal(
        MOUNTS_PATH,
        &serde_json::to_vec(table).expect("the mount table serialises"),
    )
}

fn open_table(keyring: &Keyring, sealed: &[u8]) -> Result<MountTable, ApiError> {
    let plain = keyring
        .open(MOUNTS_PATH, sealed)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    serde_json::from_slice(&plain).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored mount table is unreadable: {e}"),
        )
    })
}

/// Creates the default mount table unless one exists. A secondary is refused the write and
/// gets the primary's table instead.
pub async fn create_default_table(
    storage: &Storage,
    keyring: &Keyring,
) -> Result<(), StorageError> {
    if storage.get(MOUNTS_PATH).await?.is_some() {
        return Ok(());
    }
    let table = MountTable::defaults(unix_now());
    match storage
        .put(MOUNTS_PATH, sealed_table(keyring, &table))
        .await
    {
        Ok(_) => {
            info!("mounted kv (version 2) at secret/ and transit at transit/");
            Ok(())
        }
        Err(StorageError::ReadOnly(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl ServerState {
    /// The mount table as stored now, parsed again only when it changed, and the keyring it
    /// opened with (reloaded when the table no longer opens with the one in memory).
    pub async fn mount_table(&self) -> Result<(Arc<MountTable>, Keyring), ApiError> {
        let keyring = self.keyring()?;
        let Some(sealed) = self.storage.get(MOUNTS_PATH).await? else {
            return Ok((Arc::default(), keyring));
        };
        if let Some((seen, table)) = &*self.mount_cache.lock().expect("mount cache poisoned")
            && *seen == sealed
        {
            return Ok((table.clone(), keyring));
        }
        let (table, keyring) = match open_table(&keyring, &sealed) {
            Ok(t) => (t, keyring),
            Err(e) => {
                if !self.reload_keyring().await {
                    return Err(e);
                }
                let keyring = self.keyring()?;
                (open_table(&keyring, &sealed)?, keyring)
            }
        };
        let table = Arc::new(table);
        *self.mount_cache.lock().expect("mount cache poisoned") = Some((sealed, table.clone()));
        Ok((table, keyring))
    }
}

/// Every path the server does not serve itself: the engine mounted there serves it. The ACL
/// check comes before the mount is looked up for serving, so a caller learns whether a mount
/// exists only where its policies let it act.
///
/// A write is authorized as Vault's existence check decides (see `request`): the engine reads
/// whether its target exists first, and only then is the caller authorized for `create` or
/// `update`. A caller with neither is refused alike whether the target exists or not; one with
/// only one of them learns it, as in Vault. Existence may change between the check and the
/// write (a concurrent create or delete); Vault accepts that race, and so does ferry-vault.
pub async fn logical(
    state: &ServerState,
    request: &ApiRequest,
    entry: &TokenEntry,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (table, _) = state.mount_table().await?;
    let routed = table.route(&request.path);
    let kind = match (request.operation, routed) {
        (Operation::Write, Some((mount, rest))) => match mount.engine {
            Engine::Kv => crate::kv_api::write_kind(state, mount, rest).await?,
            Engine::Transit => crate::transit_api::write_kind(state, mount, rest).await?,
        },
        _ => WriteKind::Update,
    };
    let needed = match request.operation {
        Operation::Write => kind.capabilities(),
        other => other.capabilities(),
    };
    authorize(state, entry, request.operation, &request.path, needed).await?;
    let Some((mount, rest)) = routed else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no handler for route \"{}\": no mount at this path",
                request.path
            ),
        ));
    };
    match mount.engine {
        Engine::Kv => crate::kv_api::serve(state, mount, request, rest, body).await,
        Engine::Transit => crate::transit_api::serve(state, mount, request, rest, kind, body).await,
    }
}

/// Vault's description of one mount.
fn mount_json(m: &Mount) -> Value {
    let options = m.options();
    json!({
        "type": m.engine.type_name(),
        "description": m.description,
        "accessor": m.accessor,
        "uuid": m.uuid,
        "config": {
            "default_lease_ttl": m.config.default_lease_ttl,
            "max_lease_ttl": m.config.max_lease_ttl,
            "force_no_cache": false,
        },
        "options": if options.is_empty() { Value::Null } else { json!(options) },
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        // Vault's word on a builtin engine's future: both of ferry-vault's are supported.
        "deprecation_status": "supported",
    })
}

fn tune_json(m: &Mount) -> Value {
    let options = m.options();
    json!({
        "description": m.description,
        "default_lease_ttl": m.config.default_lease_ttl,
        "max_lease_ttl": m.config.max_lease_ttl,
        "force_no_cache": false,
        "options": if options.is_empty() { Value::Null } else { json!(options) },
    })
}

/// `sys/mounts` (read the table) and `sys/mounts/<path>[/tune]`, for an authenticated caller.
///
/// A mount has one ACL path, `sys/mounts/<path>` without the trailing slash, however the
/// request spelled it (`sys/mounts/kv/` and `sys/mounts/kv` change the same mount): that path
/// is authorized and the mount it names is what the handler changes.
pub async fn handle(
    state: &ServerState,
    request: &ApiRequest,
    entry: &TokenEntry,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let operation = request.operation;
    let sub = match request.path.strip_prefix("sys/mounts") {
        Some(sub) if sub.is_empty() || sub.starts_with('/') => sub,
        _ => return Err(request.no_handler()),
    };
    if sub.trim_matches('/').is_empty() {
        authorize_request(state, entry, request).await?;
        if operation != Operation::Read {
            return Err(request.unsupported());
        }
        let (table, _) = state.mount_table().await?;
        let data: Map<String, Value> = table
            .mounts
            .iter()
            .map(|m| (m.path.clone(), mount_json(m)))
            .collect();
        return Ok(top_level_envelope(Value::Object(data)));
    }
    let sub = &sub[1..];
    let (mount_path, tune) = match sub.trim_end_matches('/').strip_suffix("/tune") {
        Some(p) => (p, true),
        None => (sub, false),
    };
    let mount_path = normalize_path(mount_path).map_err(|MountError(m)| bad(m))?;
    let acl_path = format!(
        "sys/mounts/{}{}",
        mount_path.trim_end_matches('/'),
        if tune { "/tune" } else { "" }
    );
    authorize(state, entry, operation, &acl_path, operation.capabilities()).await?;
    // Through the table, so that a keyring replaced under the server is picked up first.
    let (table, keyring) = state.mount_table().await?;
    let change = Change { state, keyring };
    match (operation, tune) {
        (Operation::Read, _) => {
            let mount = table
                .get(&mount_path)
                .ok_or_else(|| bad(format!("no mount at {mount_path}")))?;
            Ok(top_level_envelope(if tune {
                tune_json(mount)
            } else {
                mount_json(mount)
            }))
        }
        (Operation::Write, false) => change.enable(&mount_path, body).await,
        (Operation::Write, true) => change.tune(&mount_path, body).await,
        (Operation::Delete, false) => change.disable(&mount_path).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("unsupported operation {operation} on {acl_path}"),
        )),
    }
}

/// Read-modify-write cycles on the mount table, one at a time.
struct Change<'s> {
    state: &'s ServerState,
    keyring: Keyring,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tune {
    description: Option<String>,
    default_lease_ttl: Option<Value>,
    max_lease_ttl: Option<Value>,
    options: Option<HashMap<String, Value>>,
    // Sent by clients, not used.
    #[allow(dead_code)]
    force_no_cache: Option<bool>,
}

impl Change<'_> {
    /// The stored table (not the cache: this is a read-modify-write).
    async fn load(&self) -> Result<MountTable, ApiError> {
        match self.state.storage.get(MOUNTS_PATH).await? {
            Some(sealed) => open_table(&self.keyring, &sealed),
            None => Ok(MountTable::default()),
        }
    }

    async fn store(&self, table: &MountTable) -> Result<(), ApiError> {
        self.state
            .storage
            .put(MOUNTS_PATH, sealed_table(&self.keyring, table))
            .await?;
        Ok(())
    }

    async fn enable(&self, path: &str, body: &[u8]) -> Result<Response, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Enable {
            #[serde(rename = "type")]
            kind: Option<String>,
            description: Option<String>,
            config: Option<Tune>,
            options: Option<HashMap<String, Value>>,
            #[serde(default)]
            local: bool,
            #[serde(default)]
            seal_wrap: bool,
            plugin_name: Option<String>,
            plugin_version: Option<String>,
            #[allow(dead_code)]
            external_entropy_access: Option<bool>,
        }
        let req: Enable = parse_body(body)?;
        let kind = req
            .kind
            .or(req.plugin_name)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("the secrets engine type is required (\"type\")"))?;
        let version = option_version(req.options.as_ref())?;
        let engine = match (kind.as_str(), version.as_deref()) {
            ("kv-v2", None | Some("2")) | ("kv", Some("2")) => Engine::Kv,
            ("kv", _) => {
                return Err(bad(
                    "KV version 1 is not supported by ferry-vault: use type kv-v2, or kv with options {\"version\": \"2\"}",
                ));
            }
            ("transit", _) => Engine::Transit,
            (other, _) => {
                return Err(bad(format!(
                    "unsupported secrets engine type {other:?}: ferry-vault serves kv (version 2) and transit"
                )));
            }
        };
        if req.local {
            return Err(bad("local mounts are not supported by ferry-vault"));
        }
        if req.seal_wrap {
            return Err(bad("seal wrapping is not supported by ferry-vault"));
        }
        if req.plugin_version.is_some_and(|v| !v.is_empty()) {
            return Err(bad("plugin versions are not supported by ferry-vault"));
        }
        let mut mount = Mount::new(
            path,
            engine,
            req.description.as_deref().unwrap_or_default(),
            unix_now(),
        );
        if let Some(config) = req.config {
            apply_tune(&mut mount, config)?;
        }
        let _one_at_a_time = self.state.path_locks.lock(MOUNTS_PATH).await;
        let mut table = self.load().await?;
        table.add(mount).map_err(|MountError(m)| bad(m))?;
        self.store(&table).await?;
        info!(
            path,
            engine = engine.type_name(),
            "mounted a secrets engine"
        );
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn tune(&self, path: &str, body: &[u8]) -> Result<Response, ApiError> {
        let req: Tune = parse_body(body)?;
        let _one_at_a_time = self.state.path_locks.lock(MOUNTS_PATH).await;
        let mut table = self.load().await?;
        let mount = table
            .mounts
            .iter_mut()
            .find(|m| m.path == path)
            .ok_or_else(|| bad(format!("no mount at {path}")))?;
        apply_tune(mount, req)?;
        self.store(&table).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Removes the mount, then its data (a failure there leaves only unreachable data behind).
    async fn disable(&self, path: &str) -> Result<Response, ApiError> {
        let removed = {
            let _one_at_a_time = self.state.path_locks.lock(MOUNTS_PATH).await;
            let mut table = self.load().await?;
            let Some(removed) = table.remove(path) else {
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            self.store(&table).await?;
            removed
        };
        let deleted = delete_tree(&self.state.storage, &removed.storage_root()).await?;
        info!(
            path,
            deleted, "unmounted a secrets engine and deleted its data"
        );
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// `options.version`, as a string (clients send `"2"` or `2`).
fn option_version(options: Option<&HashMap<String, Value>>) -> Result<Option<String>, ApiError> {
    let Some(options) = options else {
        return Ok(None);
    };
    if let Some(unknown) = options.keys().find(|k| *k != "version") {
        return Err(bad(format!("unsupported mount option {unknown:?}")));
    }
    match options.get("version") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(bad(format!("options.version {other} is not a version"))),
    }
}

fn apply_tune(mount: &mut Mount, tune: Tune) -> Result<(), ApiError> {
    if let Some(d) = tune.description {
        mount.description = d;
    }
    if let Some(ttl) = tune.default_lease_ttl {
        mount.config.default_lease_ttl = parse_duration(&ttl)?;
    }
    if let Some(ttl) = tune.max_lease_ttl {
        mount.config.max_lease_ttl = parse_duration(&ttl)?;
    }
    if let Some(version) = option_version(tune.options.as_ref())? {
        let keeps = match mount.engine {
            Engine::Kv => version == "2",
            Engine::Transit => false,
        };
        if !keeps {
            return Err(bad(format!(
                "options.version {version:?} cannot be set on this {} mount",
                mount.engine.type_name()
            )));
        }
    }
    if mount.config.max_lease_ttl != 0
        && mount.config.default_lease_ttl > mount.config.max_lease_ttl
    {
        return Err(bad("default_lease_ttl is longer than max_lease_ttl"));
    }
    Ok(())
}

/// Deletes every key under `root`, in bounded batches; returns how many.
async fn delete_tree(storage: &Storage, root: &str) -> Result<usize, ApiError> {
    let mut folders = vec![root.to_owned()];
    let mut batch = Vec::with_capacity(DELETE_BATCH);
    let mut deleted = 0;
    while let Some(folder) = folders.pop() {
        for child in storage.list(&folder).await? {
            let key = format!("{folder}{child}");
            if child.ends_with('/') {
                folders.push(key);
                continue;
            }
            batch.push((key, None));
            if batch.len() == DELETE_BATCH {
                deleted += batch.len();
                storage.batch(std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        deleted += batch.len();
        storage.batch(batch).await?;
    }
    Ok(deleted)
}
