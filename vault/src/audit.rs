//! Audit devices: every authenticated request is written, before it runs, to the cluster's
//! audit devices, and its response after, one JSON line each in Vault's format ([`entry`]),
//! with every secret and token replaced by its HMAC under the device's salt ([`hash`]). Vault
//! users enable them with `sys/audit/<path>` (see `audit_api`); the only type is `file`
//! ([`file`]).
//!
//! **A request that cannot be audited is not executed**, as in Vault: when devices are enabled
//! and none of them writes the request entry, the client gets a 500 naming the failure and the
//! handler never runs. One device that writes is enough (the failures of the others are logged
//! as warnings). A response entry that no device writes turns the response into a 500 too,
//! though the request has run by then (Vault does the same). With no device enabled, requests
//! run as before and nothing is computed. Vault's status endpoints (`sys/health`,
//! `sys/seal-status`, `sys/init`) and requests refused before they are parsed are not audited;
//! a request whose token is refused is, with its error, and stays refused whatever the devices
//! say.
//!
//! A request and its response go to the devices enabled when the request arrived: enabling a
//! device does not write that request's response to the new device, and disabling one still
//! writes the disable request's response to it.
//!
//! **The audit table is per cluster.** A file path names a file on one machine, so the table
//! lives at [`AUDIT_TABLE`], a local path (`core/local/`, see the sidecar's
//! `DEFAULT_LOCAL_PREFIXES`) sealed by the local keyring, like tokens: it is never shipped to
//! secondaries, and a secondary writes its own. `sys/audit` is not among the paths a secondary
//! forwards (`forwarding::forwardable`) and its write never meets a read-only refusal, so
//! enabling a device on a secondary configures that secondary's device, and the primary refuses
//! to execute `sys/audit` for another cluster. A write a secondary forwards to the primary is
//! audited on both: on the secondary with the caller's token hashed, with the response the
//! primary sent; on the primary as a request of the forwarded identity (no token, its accessor).
//!
//! Each device's salt is 32 random bytes drawn when it is enabled and kept only in the sealed
//! table: disabling a device forgets it, and enabling the same path again draws a new one, so
//! hashes in an old log can no longer be computed through `sys/audit-hash`.
//!
//! Entries are bounded by what they describe: a request body is at most
//! `server::MAX_BODY_BYTES`, and hashing replaces each string by 76 characters.

pub mod entry;
pub mod file;
pub mod hash;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use self::entry::{Hashing, RequestFacts, ResponseFacts};
use self::file::Sink;
use self::hash::Salt;
use crate::barrier::Keyring;
use crate::request::ApiRequest;
use crate::server::{ApiError, ServerState, error};
use crate::storage::Storage;
use crate::token::TokenEntry;

/// Where the audit table is stored: a local path, sealed by the local keyring.
pub const AUDIT_TABLE: &str = "core/local/audit";

/// One enabled device, as stored in the audit table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// With its trailing slash: `file/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// As Vault lists them: `file_path`, `hmac_accessor`, ...
    pub options: BTreeMap<String, String>,
    pub local: bool,
    /// The HMAC key, hex. Only ever stored sealed, never listed.
    pub salt: String,
}

/// The cluster's audit devices, in the order they were enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTable {
    pub devices: Vec<DeviceConfig>,
}

/// The options a `file` device takes, read from its configuration.
#[derive(Debug)]
pub struct FileOptions {
    pub sink: Sink,
    pub hmac_accessor: bool,
}

/// Reads a `file` device's options (Vault's: `file_path`; `hmac_accessor`, default true;
/// `log_raw`, refused when true: secrets are never written in clear; `format`, `json` only).
/// Anything else is refused, so that an option Vault would honour is never silently ignored.
pub fn file_options(options: &BTreeMap<String, String>) -> Result<FileOptions, String> {
    let flag = |name: &str, default: bool| -> Result<bool, String> {
        match options.get(name).map(String::as_str) {
            None | Some("") => Ok(default),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(format!("invalid {name} {v:?}: expected true or false")),
        }
    };
    if let Some(unknown) = options.keys().find(|k| {
        !["file_path", "path", "hmac_accessor", "log_raw", "format"].contains(&k.as_str())
    }) {
        return Err(format!(
            "unsupported option {unknown:?}: a file device takes file_path, hmac_accessor, \
             log_raw (false) and format (json)"
        ));
    }
    if flag("log_raw", false)? {
        return Err(
            "log_raw is not supported: ferry-vault never writes secrets or tokens to \
                    an audit device in clear"
                .into(),
        );
    }
    match options.get("format").map(String::as_str) {
        None | Some("" | "json") => {}
        Some(other) => return Err(format!("unsupported format {other:?}: only json")),
    }
    let file_path = options
        .get("file_path")
        .or_else(|| options.get("path"))
        .map_or("", String::as_str);
    Ok(FileOptions {
        sink: Sink::new(file_path)?,
        hmac_accessor: flag("hmac_accessor", true)?,
    })
}

/// An enabled device, ready to write.
#[derive(Debug)]
pub struct Device {
    pub config: DeviceConfig,
    salt: Salt,
    hmac_accessor: bool,
    sink: Sink,
}

impl Device {
    /// The device a stored configuration describes.
    pub fn new(config: DeviceConfig) -> Result<Self, String> {
        if config.kind != "file" {
            return Err(format!("unsupported audit device type {:?}", config.kind));
        }
        let salt = decode_hex(&config.salt).ok_or("the stored salt is not hex")?;
        let FileOptions {
            sink,
            hmac_accessor,
        } = file_options(&config.options)?;
        Ok(Self {
            salt: Salt::new(&salt),
            config,
            hmac_accessor,
            sink,
        })
    }

    /// `hmac-sha256:<hex>` of `input` under this device's salt (`sys/audit-hash`).
    pub fn hash(&self, input: &str) -> String {
        self.salt.hash(input)
    }

    /// Checks that the device can be written (at enable); blocks on the file system.
    pub fn check(&self) -> std::io::Result<()> {
        self.sink.check()
    }

    fn hashing(&self) -> Hashing<'_> {
        Hashing {
            salt: &self.salt,
            hmac_accessor: self.hmac_accessor,
        }
    }
}

/// A new device salt, hex.
pub fn new_salt() -> String {
    crate::token::random_hex(hash::SALT_BYTES)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

type Devices = Arc<[Arc<Device>]>;

/// The enabled devices, shared by every request; changed one enable or disable at a time.
pub struct Broker {
    devices: RwLock<Devices>,
    change: tokio::sync::Mutex<()>,
}

impl Broker {
    /// The devices of the stored table (none when there is no table). A table that does not
    /// open or a device that cannot be set up stops start-up: running unaudited where devices
    /// were enabled would defeat them.
    pub async fn load(storage: &Storage, keyring: &Keyring) -> anyhow::Result<Self> {
        let table = load_table(storage, keyring).await.map_err(|e| {
            anyhow::anyhow!(
                "failed to read the audit table: {}",
                e.message.unwrap_or_default()
            )
        })?;
        let devices = build(&table).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            devices: RwLock::new(devices),
            change: tokio::sync::Mutex::new(()),
        })
    }

    /// The devices enabled now.
    pub fn devices(&self) -> Devices {
        self.devices.read().expect("audit lock poisoned").clone()
    }

    /// Applies `change` to the stored table (read again first), stores it and starts using
    /// its devices; one change at a time.
    pub async fn change<R>(
        &self,
        storage: &Storage,
        keyring: &Keyring,
        change: impl FnOnce(&mut AuditTable) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let _one_at_a_time = self.change.lock().await;
        let mut table = load_table(storage, keyring).await?;
        let result = change(&mut table)?;
        let devices = build(&table).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        let sealed = keyring.seal(
            AUDIT_TABLE,
            &serde_json::to_vec(&table).expect("the audit table serialises"),
        );
        storage.put(AUDIT_TABLE, sealed).await?;
        *self.devices.write().expect("audit lock poisoned") = devices;
        Ok(result)
    }
}

async fn load_table(storage: &Storage, keyring: &Keyring) -> Result<AuditTable, ApiError> {
    let Some(sealed) = storage.get(AUDIT_TABLE).await? else {
        return Ok(AuditTable::default());
    };
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
    let plain = keyring
        .open(AUDIT_TABLE, &sealed)
        .map_err(|e| internal(e.to_string()))?;
    serde_json::from_slice(&plain).map_err(|e| {
        internal(format!(
            "the audit table at {AUDIT_TABLE} does not parse: {e}"
        ))
    })
}

fn build(table: &AuditTable) -> Result<Devices, String> {
    table
        .devices
        .iter()
        .map(|config| {
            Device::new(config.clone())
                .map(Arc::new)
                .map_err(|e| format!("failed to set up audit device {}: {e}", config.path))
        })
        .collect()
}

/// A request whose entry was written: its response is to be written to the same devices.
#[derive(Clone)]
pub struct AuditedRequest {
    devices: Devices,
    facts: Arc<RequestFacts>,
}

/// Carried by a response the forwarding layer is about to replace by the primary's: the
/// response entry is written with what the client gets.
#[derive(Clone)]
pub struct PendingAudit(pub AuditedRequest);

/// Who made a request, when it was authenticated: its token and entry.
pub type Caller<'a> = Option<(&'a str, &'a TokenEntry)>;

/// Writes the request entry of `request` (with `error` when it is already refused) to every
/// enabled device. A 500 naming the failures when none wrote it: the request must not run.
pub async fn log_request(
    state: &ServerState,
    request: &ApiRequest,
    caller: Caller<'_>,
    body: &[u8],
    remote: Option<SocketAddr>,
    error: &str,
) -> Result<AuditedRequest, ApiError> {
    let devices = state.audit.devices();
    if devices.is_empty() {
        return Ok(AuditedRequest {
            devices,
            facts: Arc::default(),
        });
    }
    let facts = Arc::new(RequestFacts {
        id: crate::server::request_id(),
        operation: request.operation.to_string(),
        path: request.path.clone(),
        mount_type: mount_type(state, &request.path).await,
        client_token: caller.map_or_else(String::new, |(t, _)| t.to_owned()),
        caller: caller.map(|(_, e)| e.clone()),
        data: serde_json::from_slice(body).ok(),
        remote,
    });
    let now = SystemTime::now();
    let entry_facts = facts.clone();
    let error = error.to_owned();
    write_everywhere(&devices, move |h| {
        h.request_entry(&entry_facts, &error, now)
    })
    .await
    .map_err(|failures| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "failed to write the request to any audit device ({failures}): \
                 the request was not executed"
            ),
        )
    })?;
    Ok(AuditedRequest { devices, facts })
}

impl AuditedRequest {
    /// Writes the response entry and returns `response`, or a 500 when no device wrote it. A
    /// response to be forwarded is returned as it is, carrying this for the forwarding layer.
    pub async fn log_response(self, mut response: Response) -> Response {
        if self.devices.is_empty() {
            return response;
        }
        if response
            .extensions()
            .get::<crate::forwarding::MustForward>()
            .is_some()
        {
            response.extensions_mut().insert(PendingAudit(self));
            return response;
        }
        self.log_final_response(response).await
    }

    /// Writes the response entry of the response the client gets, as it is.
    pub async fn log_final_response(self, response: Response) -> Response {
        if self.devices.is_empty() {
            return response;
        }
        let (parts, body) = response.into_parts();
        // A handler's response is already in memory: collecting it costs a copy at most.
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to read the response to audit it: {e}"),
                );
            }
        };
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let error_text = if parts.status.is_client_error() || parts.status.is_server_error() {
            errors_of(body.as_ref()).unwrap_or_else(|| parts.status.to_string())
        } else {
            String::new()
        };
        let response_facts = ResponseFacts {
            body,
            error: error_text,
        };
        let now = SystemTime::now();
        let facts = self.facts.clone();
        if let Err(failures) = write_everywhere(&self.devices, move |h| {
            h.response_entry(&facts, &response_facts, now)
        })
        .await
        {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "failed to write the response to any audit device ({failures}): \
                     the request was executed"
                ),
            );
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

/// The messages of a Vault error body (`{"errors": [...]}`), joined.
fn errors_of(body: Option<&Value>) -> Option<String> {
    let errors = body?.get("errors")?.as_array()?;
    let messages: Vec<&str> = errors.iter().filter_map(Value::as_str).collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// The `mount_type` of an entry: `token` and `system` for the server's own paths, else the
/// engine mounted there (empty when none is, or while sealed).
async fn mount_type(state: &ServerState, path: &str) -> String {
    if path.starts_with("auth/token/") {
        return "token".into();
    }
    if path.starts_with("sys/") {
        return "system".into();
    }
    match state.mount_table().await {
        Ok((table, _)) => table
            .route(path)
            .map_or_else(String::new, |(m, _)| m.engine.type_name().to_owned()),
        Err(_) => String::new(),
    }
}

/// Writes the entry `entry_of` makes for each device (its own hashes) to every device; `Ok`
/// when at least one wrote it, else every failure, named by device path.
async fn write_everywhere(
    devices: &Devices,
    entry_of: impl Fn(&Hashing<'_>) -> Value + Send + Sync + 'static,
) -> Result<(), String> {
    let mut failures = Vec::new();
    for device in devices.iter() {
        let mut line =
            serde_json::to_vec(&entry_of(&device.hashing())).expect("an entry serialises");
        line.push(b'\n');
        let writer = device.clone();
        let written = tokio::task::spawn_blocking(move || writer.sink.write_line(&line))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            warn!(device = %device.config.path, error = %e, "failed to write an audit entry");
            failures.push(format!("{}: {e}", device.config.path));
        }
    }
    if failures.len() == devices.len() {
        Err(failures.join("; "))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn file_options_take_vaults_defaults() {
        let read = file_options(&options(&[("file_path", "/var/log/audit.log")])).expect("valid");
        assert!(read.hmac_accessor);
        assert!(matches!(read.sink, Sink::File { .. }));
        let read = file_options(&options(&[
            ("file_path", "stdout"),
            ("hmac_accessor", "false"),
            ("log_raw", "false"),
            ("format", "json"),
        ]))
        .expect("valid");
        assert!(!read.hmac_accessor);
    }

    #[test]
    fn raw_logging_unknown_options_and_a_missing_path_are_refused() {
        for (opts, expected) in [
            (
                options(&[("file_path", "/tmp/a"), ("log_raw", "true")]),
                "log_raw",
            ),
            (
                options(&[("file_path", "/tmp/a"), ("mode", "0644")]),
                "unsupported option",
            ),
            (
                options(&[("file_path", "/tmp/a"), ("format", "jsonx")]),
                "format",
            ),
            (options(&[]), "missing file_path"),
        ] {
            let e = file_options(&opts).expect_err("refused");
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn a_device_hashes_with_its_stored_salt() {
        let salt = new_salt();
        let config = DeviceConfig {
            path: "file/".into(),
            kind: "file".into(),
            description: String::new(),
            options: options(&[("file_path", "discard")]),
            local: false,
            salt: salt.clone(),
        };
        let device = Device::new(config.clone()).expect("a device");
        let again = Device::new(config.clone()).expect("a device");
        assert_eq!(device.hash("x"), again.hash("x"));
        let other = Device::new(DeviceConfig {
            salt: new_salt(),
            ..config.clone()
        })
        .expect("a device");
        assert_ne!(device.hash("x"), other.hash("x"));
        assert!(
            Device::new(DeviceConfig {
                kind: "socket".into(),
                ..config
            })
            .is_err()
        );
    }
}
