//! The HTTP side of transit at a mount (`transit/` by default): keys (create, read, list, config, rotate, delete) and
//! encrypt, decrypt and rewrap, single or `batch_input`, in Vault's shapes.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::barrier::Keyring;
use crate::mounts::Mount;
use crate::request::{ApiRequest, Operation, WriteKind};
use crate::server::{ApiError, ServerState, envelope, parse_body};
use crate::transit::TransitKey;
use crate::unseal::unix_now;

/// Most items in one `batch_input`.
const MAX_BATCH: usize = 1000;
const MAX_NAME_BYTES: usize = 128;

/// The key whose existence decides how a write on `<mount>/<rest>` is authorized: Vault's
/// transit has an existence check on `encrypt/<name>` alone (`path_encrypt.go`
/// `pathEncryptExistenceCheck`), so encrypting with a key that does not exist yet, which
/// creates it, needs `create`, and with one that exists `update`. `keys/<name>` has none
/// (`path_keys.go` serves only an update there): creating a key needs `update`, as do
/// `keys/<name>/config`, `keys/<name>/rotate`, `decrypt/` and `rewrap/`.
pub fn existence_subject(rest: &str) -> Option<&str> {
    match rest.split_once('/') {
        Some(("encrypt", name)) if !name.is_empty() && !name.contains('/') => Some(name),
        _ => None,
    }
}

/// How a write on `<mount>/<rest>` is authorized ([`existence_subject`]); a malformed name is
/// checked as an update, without a read, and refused by the handler.
pub async fn write_kind(
    state: &ServerState,
    mount: &Mount,
    rest: &str,
) -> Result<WriteKind, ApiError> {
    let Some(name) = existence_subject(rest).filter(|n| validate_name(n).is_ok()) else {
        return Ok(WriteKind::Update);
    };
    let t = Transit {
        state,
        keyring: state.keyring()?,
        root: mount.storage_root(),
    };
    Ok(WriteKind::of(t.load(name).await?.is_some()))
}

/// `<mount>/<rest>` of `request`, once the caller has been authorized for the request's
/// operation on its path, a write as `kind` (`mounts_api::logical` does it). `rest` is used as
/// it came: a trailing slash names another path (`keys/k/` is not the key `k`), except on a
/// list, whose path always ends with one.
pub async fn serve(
    state: &ServerState,
    mount: &Mount,
    request: &ApiRequest,
    rest: &str,
    kind: WriteKind,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = Transit {
        state,
        keyring: state.keyring()?,
        root: mount.storage_root(),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    // A name is one non-empty segment.
    let named = |name: &str| !name.is_empty();
    use Operation::{Delete, List, Read, Write};
    match (parts.as_slice(), request.operation) {
        (["keys", ""], List) => t.list().await,
        (["keys", name], Write) if named(name) => t.create(name, &body).await,
        (["keys", name], Read) if named(name) => t.read(name).await,
        (["keys", name], Delete) if named(name) => t.delete(name).await,
        (["keys", name, "config"], Write) if named(name) => t.config(name, &body).await,
        (["keys", name, "rotate"], Write) if named(name) => t.rotate(name).await,
        (["encrypt", name], Write) if named(name) => t.encrypt(name, kind, &body).await,
        (["decrypt", name], Write) if named(name) => t.decrypt(name, &body).await,
        (["rewrap", name], Write) if named(name) => t.rewrap(name, &body).await,
        (["keys"] | ["keys", ""], _) => Err(request.unsupported()),
        (["keys" | "encrypt" | "decrypt" | "rewrap", name], _) if named(name) => {
            Err(request.unsupported())
        }
        (["keys", name, "config" | "rotate"], _) if named(name) => Err(request.unsupported()),
        _ => Err(request.no_handler()),
    }
}

struct Transit<'s> {
    state: &'s ServerState,
    keyring: Keyring,
    /// The mount's storage root, `logical/<uuid>/`; keys live under `keys/`.
    root: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn internal(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
}

/// Vault's 400 for a key that does not exist.
fn not_found_key(name: &str) -> ApiError {
    bad(format!("encryption key not found: {name}"))
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(()).ok_or_else(|| {
        bad(format!(
            "invalid key name {name:?}: use 1 to {MAX_NAME_BYTES} letters, digits, '-', '_' or '.'"
        ))
    })
}

/// One item of a request: the top-level fields or a `batch_input` entry.
#[derive(Deserialize, Default, Clone)]
struct Item {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    /// Echoed in the item's batch result, as Vault does, to tell results apart.
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(flatten)]
    item: Item,
    batch_input: Option<Vec<Item>>,
}

impl Request {
    /// The items and whether the caller used `batch_input`.
    fn items(self) -> Result<(Vec<Item>, bool), ApiError> {
        match self.batch_input {
            Some(batch) if batch.len() > MAX_BATCH => Err(bad(format!(
                "batch_input holds {} items, over the limit of {MAX_BATCH}",
                batch.len()
            ))),
            Some(batch) if !batch.is_empty() => Ok((batch, true)),
            _ => Ok((vec![self.item], false)),
        }
    }
}

fn context(item: &Item) -> Result<Vec<u8>, String> {
    match &item.context {
        Some(c) => B64
            .decode(c)
            .map_err(|_| "context is not base64".to_owned()),
        None => Ok(Vec::new()),
    }
}

/// Runs `op` on each item of a single or `batch_input` request and answers as Vault does.
fn each_item(
    req: Request,
    key: &TransitKey,
    op: impl Fn(&TransitKey, &Item) -> Result<Value, String>,
) -> Result<Response, ApiError> {
    let (items, batch) = req.items()?;
    let results = items.iter().map(|item| op(key, item)).collect();
    answer(results, &items, batch)
}

/// Vault's answer: the single result, or `batch_results` (errors per item, each with the
/// item's `reference`).
fn answer(
    results: Vec<Result<Value, String>>,
    items: &[Item],
    batch: bool,
) -> Result<Response, ApiError> {
    if !batch {
        let single = results.into_iter().next().expect("one item");
        return single.map(envelope).map_err(bad);
    }
    let results: Vec<Value> = results
        .into_iter()
        .zip(items)
        .map(|(r, item)| {
            let mut result = r.unwrap_or_else(|e| json!({ "error": e }));
            result["reference"] = json!(item.reference.as_deref().unwrap_or_default());
            result
        })
        .collect();
    Ok(envelope(json!({ "batch_results": results })))
}

/// What Vault answers about a key: to a read, and to a create, rotate or config, which return
/// the key as it now is. `keys` holds the versions that still decrypt (from
/// `min_decryption_version` on), with their creation times.
fn key_data(key: &TransitKey) -> Value {
    let keys: serde_json::Map<String, Value> = key
        .version_times()
        .into_iter()
        .filter(|(v, _)| *v >= key.min_decryption_version)
        .map(|(v, t)| (v.to_string(), json!(t)))
        .collect();
    json!({
        "name": key.name,
        "type": "aes256-gcm96",
        "keys": keys,
        "latest_version": key.latest_version,
        "min_decryption_version": key.min_decryption_version,
        "min_encryption_version": 0,
        "min_available_version": 0,
        "deletion_allowed": key.deletion_allowed,
        "derived": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "auto_rotate_period": 0,
        "imported_key": false,
        "soft_deleted": false,
        "supports_encryption": true,
        "supports_decryption": true,
        "supports_derivation": false,
        "supports_signing": false,
    })
}

impl Transit<'_> {
    fn path(&self, name: &str) -> String {
        format!("{}keys/{name}", self.root)
    }

    async fn load(&self, name: &str) -> Result<Option<TransitKey>, ApiError> {
        validate_name(name)?;
        let path = self.path(name);
        let Some(sealed) = self.state.storage.get(&path).await? else {
            return Ok(None);
        };
        let plain = self.keyring.open(&path, &sealed).map_err(internal)?;
        serde_json::from_slice(&plain).map(Some).map_err(internal)
    }

    async fn load_existing(&self, name: &str) -> Result<TransitKey, ApiError> {
        self.load(name).await?.ok_or_else(|| not_found_key(name))
    }

    async fn store(&self, key: &TransitKey) -> Result<(), ApiError> {
        let path = self.path(&key.name);
        let sealed = self
            .keyring
            .seal(&path, &serde_json::to_vec(key).expect("serialises"));
        self.state
            .storage
            .put(&path, sealed)
            .await
            .map(|_| ())
            .map_err(ApiError::from)
    }

    async fn create(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        #[derive(Deserialize)]
        struct Create {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let req: Create = parse_body(body)?;
        if let Some(kind) = req.kind.filter(|k| k != "aes256-gcm96") {
            return Err(bad(format!(
                "unsupported key type {kind:?}; use aes256-gcm96"
            )));
        }
        let _lock = self.state.path_locks.lock(&self.path(name)).await;
        let key = match self.load(name).await? {
            Some(key) => key,
            None => {
                let key = TransitKey::new(name, unix_now());
                self.store(&key).await?;
                key
            }
        };
        Ok(envelope(key_data(&key)))
    }

    async fn read(&self, name: &str) -> Result<Response, ApiError> {
        let key = self.load(name).await?.ok_or_else(ApiError::not_found)?;
        Ok(envelope(key_data(&key)))
    }

    async fn list(&self) -> Result<Response, ApiError> {
        let keys = self
            .state
            .storage
            .list(&format!("{}keys/", self.root))
            .await?;
        if keys.is_empty() {
            return Err(ApiError::not_found());
        }
        Ok(envelope(json!({ "keys": keys })))
    }

    async fn config(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        #[derive(Deserialize)]
        struct Config {
            deletion_allowed: Option<bool>,
            min_decryption_version: Option<u32>,
        }
        let req: Config = parse_body(body)?;
        let _lock = self.state.path_locks.lock(&self.path(name)).await;
        let mut key = self.load_existing(name).await?;
        if let Some(d) = req.deletion_allowed {
            key.deletion_allowed = d;
        }
        if let Some(v) = req.min_decryption_version {
            if v == 0 || v > key.latest_version {
                return Err(bad(format!(
                    "min_decryption_version {v} must be between 1 and the latest version {}",
                    key.latest_version
                )));
            }
            key.min_decryption_version = v;
        }
        self.store(&key).await?;
        Ok(envelope(key_data(&key)))
    }

    async fn rotate(&self, name: &str) -> Result<Response, ApiError> {
        let _lock = self.state.path_locks.lock(&self.path(name)).await;
        let mut key = self.load_existing(name).await?;
        key.rotate(unix_now());
        self.store(&key).await?;
        Ok(envelope(key_data(&key)))
    }

    async fn delete(&self, name: &str) -> Result<Response, ApiError> {
        let _lock = self.state.path_locks.lock(&self.path(name)).await;
        let key = self.load_existing(name).await?;
        if !key.deletion_allowed {
            return Err(bad("deletion is not allowed for this key"));
        }
        self.state.storage.delete(&self.path(name)).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Encrypts with `name`. As in Vault, a create (the key did not exist when the caller was
    /// authorized) makes the key if it still does not exist; an update never does, so a key
    /// deleted since the check is "not found" rather than created for a caller without `create`.
    async fn encrypt(
        &self,
        name: &str,
        kind: WriteKind,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let req: Request = parse_body(body)?;
        let key = match self.load(name).await? {
            Some(k) => k,
            None if kind == WriteKind::Update => return Err(not_found_key(name)),
            None => {
                let _lock = self.state.path_locks.lock(&self.path(name)).await;
                match self.load(name).await? {
                    Some(k) => k,
                    None => {
                        let k = TransitKey::new(name, unix_now());
                        self.store(&k).await?;
                        k
                    }
                }
            }
        };
        each_item(req, &key, |key, item| {
            let plaintext = item
                .plaintext
                .as_deref()
                .ok_or("missing plaintext to encrypt")?;
            let plain = B64
                .decode(plaintext)
                .map_err(|_| "plaintext is not base64".to_owned())?;
            let ciphertext = key.encrypt(&plain, &context(item)?).map_err(|e| e.0)?;
            Ok(json!({ "ciphertext": ciphertext, "key_version": key.latest_version }))
        })
    }

    async fn decrypt(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let req: Request = parse_body(body)?;
        let key = self.load_existing(name).await?;
        each_item(req, &key, |key, item| {
            let ciphertext = item
                .ciphertext
                .as_deref()
                .ok_or("missing ciphertext to decrypt")?;
            let plain = key.decrypt(ciphertext, &context(item)?).map_err(|e| e.0)?;
            Ok(json!({ "plaintext": B64.encode(plain) }))
        })
    }

    async fn rewrap(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let req: Request = parse_body(body)?;
        let key = self.load_existing(name).await?;
        each_item(req, &key, |key, item| {
            let ciphertext = item
                .ciphertext
                .as_deref()
                .ok_or("missing ciphertext to rewrap")?;
            let ctx = context(item)?;
            let plain = key.decrypt(ciphertext, &ctx).map_err(|e| e.0)?;
            let again = key.encrypt(&plain, &ctx).map_err(|e| e.0)?;
            Ok(json!({ "ciphertext": again, "key_version": key.latest_version }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_lists_the_versions_that_still_decrypt() {
        let mut key = TransitKey::new("orders", 100);
        key.rotate(200);
        key.rotate(300);
        key.min_decryption_version = 2;
        let data = key_data(&key);
        assert_eq!(data["keys"], json!({ "2": 200, "3": 300 }));
        assert_eq!(data["latest_version"], 3);
        assert_eq!(data["min_decryption_version"], 2);
    }

    #[test]
    fn only_encrypt_writes_are_checked_for_existence() {
        assert_eq!(existence_subject("encrypt/orders"), Some("orders"));
        for rest in [
            "keys/orders",
            "keys/orders/config",
            "keys/orders/rotate",
            "decrypt/orders",
            "rewrap/orders",
            "encrypt/",
            "encrypt/orders/",
            "encrypt",
        ] {
            assert_eq!(existence_subject(rest), None, "{rest}");
        }
    }
}
