//! The HTTP side of KV version 2 at a mount: the capabilities each call needs, dispatch by
//! sub-path and operation, and Vault's response shapes. The bookkeeping itself is in `kv`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::barrier::Keyring;
use crate::kv::{
    KvConfig, KvError, KvMetadata, config_path, metadata_path, validate_path, version_path,
};
use crate::mounts::Mount;
use crate::request::{ApiRequest, Operation, WriteKind};
use crate::server::{ApiError, ServerState, envelope, envelope_json, parse_body};
use crate::unseal::unix_now;

/// The secret whose existence decides how a write on `<mount>/<rest>` is authorized: Vault's
/// KV v2 has an existence check on `data/<path>` and `metadata/<path>`, true while the
/// secret's metadata exists (even with every version deleted or destroyed), and none on
/// `config`, `delete/`, `undelete/` and `destroy/`, whose writes are updates
/// (vault-plugin-secrets-kv `path_data.go` `dataExistenceCheck`, `path_metadata.go`
/// `metadataExistenceCheck`).
pub fn existence_subject(rest: &str) -> Option<&str> {
    match rest.split_once('/') {
        Some(("data" | "metadata", path)) => Some(path),
        _ => None,
    }
}

/// How a write on `<mount>/<rest>` is authorized ([`existence_subject`]). A path the handler
/// will refuse (400) is checked as an update and never read: the caller learns it is malformed
/// only once authorized.
pub async fn write_kind(
    state: &ServerState,
    mount: &Mount,
    rest: &str,
) -> Result<WriteKind, ApiError> {
    let Some(path) = existence_subject(rest).filter(|p| validate_path(p).is_ok()) else {
        return Ok(WriteKind::Update);
    };
    let kv = Kv {
        state,
        keyring: state.keyring()?,
        root: mount.storage_root(),
    };
    Ok(WriteKind::of(kv.load_metadata(path).await?.is_some()))
}

/// `<mount>/<rest>` of `request`, once the caller has been authorized on the request's path
/// (`mounts_api::logical` does it, a write by its [`write_kind`]). A create and an update run
/// the same way, as in Vault: the secret may have been created or removed since the check
/// (Vault accepts that race too).
pub async fn serve(
    state: &ServerState,
    mount: &Mount,
    request: &ApiRequest,
    rest: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kv = Kv {
        state,
        keyring: state.keyring()?,
        root: mount.storage_root(),
    };
    let operation = request.operation;
    let (section, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Writes read the metadata, then write it back: one at a time per path.
    let _writing = match operation {
        Operation::Write | Operation::Delete => {
            Some(state.path_locks.lock(&format!("{}{path}", kv.root)).await)
        }
        Operation::Read | Operation::List => None,
    };
    use Operation::{Delete, List, Read, Write};
    match (section, operation) {
        ("config", Read) if path.is_empty() => kv.read_config().await,
        ("config", Write) if path.is_empty() => kv.write_config(&body).await,
        ("metadata", List) => kv.list(path).await,
        ("data", Read) => kv.read(path, &request.query).await,
        ("data", Write) => kv.write(path, &body).await,
        ("data", Delete) => kv.delete_current(path).await,
        ("metadata", Read) => kv.read_metadata(path).await,
        ("metadata", Write) => kv.write_metadata(path, &body).await,
        ("metadata", Delete) => kv.delete_all(path).await,
        ("delete", Write) => kv.versions(path, &body, Change::Delete).await,
        ("undelete", Write) => kv.versions(path, &body, Change::Undelete).await,
        ("destroy", Write) => kv.versions(path, &body, Change::Destroy).await,
        // Every operation on `metadata/` is served above.
        ("config" | "data" | "delete" | "undelete" | "destroy", _) => Err(request.unsupported()),
        _ => Ok(outside_the_api()),
    }
}

/// Vault's answer to a path outside the KV version 2 API (`secret/app` for
/// `secret/data/app`): a 404 in the response envelope, with a warning that says where to look.
fn outside_the_api() -> Response {
    let mut answer = envelope_json(Value::Null);
    answer["warnings"] = json!([
        "invalid path for a versioned K/V secrets engine: use <mount>/data/<path>, \
         <mount>/metadata/<path>, delete/, undelete/, destroy/ or config"
    ]);
    (StatusCode::NOT_FOUND, axum::Json(answer)).into_response()
}

type KvResult = Result<Response, ApiError>;

struct Kv<'s> {
    state: &'s ServerState,
    keyring: Keyring,
    /// The mount's storage root, `logical/<uuid>/`.
    root: String,
}

#[derive(Clone, Copy)]
enum Change {
    Delete,
    Undelete,
    Destroy,
}

fn kv_error(e: KvError) -> ApiError {
    match e {
        KvError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
        KvError::NotFound => ApiError::not_found(),
    }
}

impl Kv<'_> {
    async fn load_config(&self) -> Result<KvConfig, ApiError> {
        let key = config_path(&self.root);
        let Some(sealed) = self.state.storage.get(&key).await? else {
            return Ok(KvConfig::default());
        };
        let plain = self
            .keyring
            .open(&key, &sealed)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored {key} is unreadable: {e}"),
            )
        })
    }

    async fn read_config(&self) -> KvResult {
        Ok(envelope(self.load_config().await?.to_json()))
    }

    /// `<mount>/config`: the mount's `max_versions` and `cas_required`.
    async fn write_config(&self, body: &Bytes) -> KvResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            max_versions: Option<u64>,
            cas_required: Option<bool>,
            delete_version_after: Option<Value>,
        }
        let req: Settings = parse_body(body)?;
        if let Some(after) = req.delete_version_after
            && after != json!("0s")
            && after != json!(0)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "delete_version_after is not supported by ferry-vault (only \"0s\")",
            ));
        }
        let mut config = self.load_config().await?;
        if let Some(n) = req.max_versions {
            config.max_versions = n;
        }
        if let Some(c) = req.cas_required {
            config.cas_required = c;
        }
        let key = config_path(&self.root);
        self.state
            .storage
            .put(&key, self.seal_json(&key, &config))
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn load_metadata(&self, path: &str) -> Result<Option<KvMetadata>, ApiError> {
        let key = metadata_path(&self.root, path);
        let Some(sealed) = self.state.storage.get(&key).await? else {
            return Ok(None);
        };
        let plain = self
            .keyring
            .open(&key, &sealed)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        serde_json::from_slice(&plain).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metadata of {path:?}: {e}"),
            )
        })
    }

    fn seal_json(&self, key: &str, value: &impl serde::Serialize) -> Vec<u8> {
        self.keyring
            .seal(key, &serde_json::to_vec(value).expect("serialises"))
    }

    async fn read(&self, path: &str, query: &HashMap<String, String>) -> KvResult {
        validate_path(path).map_err(kv_error)?;
        let requested = match query.get("version") {
            Some(v) => v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("version {v:?} is not a number"),
                )
            })?,
            None => 0,
        };
        let meta = self.load_metadata(path).await?.ok_or_else(not_found)?;
        let (version, vmeta) = meta.resolve(requested).ok_or_else(not_found)?;
        if vmeta.deletion_time != 0 || vmeta.destroyed {
            // Vault's 404 for a deleted or destroyed version is a whole response: the envelope
            // with the version's metadata and no data.
            let data = json!({ "data": null, "metadata": meta.version_answer(version, vmeta) });
            return Ok((StatusCode::NOT_FOUND, axum::Json(envelope_json(data))).into_response());
        }
        let key = version_path(&self.root, path, version);
        let sealed = self.state.storage.get(&key).await?.ok_or_else(not_found)?;
        let data: Value = serde_json::from_slice(
            &self
                .keyring
                .open(&key, &sealed)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(envelope(
            json!({ "data": data, "metadata": meta.version_answer(version, vmeta) }),
        ))
    }

    async fn write(&self, path: &str, body: &Bytes) -> KvResult {
        #[derive(Deserialize)]
        struct Write {
            data: Option<Map<String, Value>>,
            #[serde(default)]
            options: Options,
        }
        #[derive(Deserialize, Default)]
        struct Options {
            cas: Option<u64>,
        }
        validate_path(path).map_err(kv_error)?;
        let req: Write = parse_body(body)?;
        let data = req
            .data
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "no data provided"))?;
        let mut meta = self.load_metadata(path).await?.unwrap_or_default();
        let config = self.load_config().await?;
        let (version, dropped) = meta
            .add_version(req.options.cas, unix_now(), &config)
            .map_err(kv_error)?;
        let vkey = version_path(&self.root, path, version);
        let mkey = metadata_path(&self.root, path);
        let mut ops = vec![
            (vkey.clone(), Some(self.seal_json(&vkey, &data))),
            (mkey.clone(), Some(self.seal_json(&mkey, &meta))),
        ];
        ops.extend(
            dropped
                .into_iter()
                .map(|n| (version_path(&self.root, path, n), None)),
        );
        self.state.storage.batch(ops).await?;
        let vmeta = meta.versions.get(&version).expect("just added");
        Ok(envelope(meta.version_answer(version, vmeta)))
    }

    async fn delete_current(&self, path: &str) -> KvResult {
        validate_path(path).map_err(kv_error)?;
        let Some(meta) = self.load_metadata(path).await? else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let current = meta.current_version;
        self.change_versions(path, meta, &[current], Change::Delete)
            .await
    }

    async fn versions(&self, path: &str, body: &Bytes, change: Change) -> KvResult {
        #[derive(Deserialize)]
        struct Versions {
            #[serde(default)]
            versions: Vec<u64>,
        }
        validate_path(path).map_err(kv_error)?;
        let req: Versions = parse_body(body)?;
        if req.versions.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "no versions provided",
            ));
        }
        let Some(meta) = self.load_metadata(path).await? else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        self.change_versions(path, meta, &req.versions, change)
            .await
    }

    async fn change_versions(
        &self,
        path: &str,
        mut meta: KvMetadata,
        versions: &[u64],
        change: Change,
    ) -> KvResult {
        let now = unix_now();
        let mut ops = Vec::new();
        for n in versions {
            let Some(v) = meta.versions.get_mut(n) else {
                continue;
            };
            match change {
                Change::Delete if v.deletion_time == 0 => v.deletion_time = now,
                Change::Undelete => v.deletion_time = 0,
                Change::Destroy if !v.destroyed => {
                    v.destroyed = true;
                    ops.push((version_path(&self.root, path, *n), None));
                }
                _ => {}
            }
        }
        let mkey = metadata_path(&self.root, path);
        ops.push((mkey.clone(), Some(self.seal_json(&mkey, &meta))));
        self.state.storage.batch(ops).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn read_metadata(&self, path: &str) -> KvResult {
        validate_path(path).map_err(kv_error)?;
        let meta = self.load_metadata(path).await?.ok_or_else(not_found)?;
        Ok(envelope(meta.to_json()))
    }

    async fn write_metadata(&self, path: &str, body: &Bytes) -> KvResult {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            max_versions: Option<u64>,
            cas_required: Option<bool>,
            custom_metadata: Option<std::collections::BTreeMap<String, String>>,
            delete_version_after: Option<Value>,
        }
        validate_path(path).map_err(kv_error)?;
        let req: Settings = parse_body(body)?;
        let _ = req.delete_version_after;
        let mut meta = self.load_metadata(path).await?.unwrap_or_default();
        if let Some(n) = req.max_versions {
            meta.max_versions = n;
        }
        if let Some(c) = req.cas_required {
            meta.cas_required = c;
        }
        if req.custom_metadata.is_some() {
            meta.custom_metadata = req.custom_metadata;
        }
        let mkey = metadata_path(&self.root, path);
        self.state
            .storage
            .put(&mkey, self.seal_json(&mkey, &meta))
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn delete_all(&self, path: &str) -> KvResult {
        validate_path(path).map_err(kv_error)?;
        let Some(meta) = self.load_metadata(path).await? else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let mut ops: Vec<(String, Option<Vec<u8>>)> = meta
            .versions
            .keys()
            .map(|n| (version_path(&self.root, path, *n), None))
            .collect();
        ops.push((metadata_path(&self.root, path), None));
        for part in ops.chunks(100) {
            self.state.storage.batch(part.to_vec()).await?;
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn list(&self, prefix: &str) -> KvResult {
        // Vault lists `app` and `app/` alike.
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            p => {
                validate_path(p).map_err(kv_error)?;
                format!("{p}/")
            }
        };
        let keys = self
            .state
            .storage
            .list(&metadata_path(&self.root, &prefix))
            .await?;
        if keys.is_empty() {
            return Err(not_found());
        }
        Ok(envelope(json!({ "keys": keys })))
    }
}

fn not_found() -> ApiError {
    ApiError::not_found()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_metadata_writes_are_checked_for_existence_and_nothing_else() {
        assert_eq!(existence_subject("data/app"), Some("app"));
        assert_eq!(existence_subject("data/team/app"), Some("team/app"));
        assert_eq!(existence_subject("metadata/app"), Some("app"));
        // Malformed: checked as an update (`write_kind` does not read), refused by the handler.
        assert_eq!(existence_subject("data/"), Some(""));
        for rest in [
            "config",
            "delete/app",
            "undelete/app",
            "destroy/app",
            "data",
            "metadata",
            "subkeys/app",
        ] {
            assert_eq!(existence_subject(rest), None, "{rest}");
        }
    }
}
