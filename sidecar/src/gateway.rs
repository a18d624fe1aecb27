//! The storage gateway's operations: reads straight from etcd ([`read`], [`list`], which a
//! standby serves too), writes through the committer.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::KvClient;
use tokio::sync::oneshot;

use crate::commit::{Pending, Source, WriteOp, validate};
use crate::core::Core;
use crate::error::StoreError;
use crate::etcd::{Scan, get, scan};
use crate::keyspace::{Keyspace, prefix_end};
use crate::list::{child_of, skip_folder};
use crate::path::{validate_key, validate_prefix};

/// How long a write waits for room in a full queue before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Keys read per round trip while listing.
const LIST_PAGE: i64 = 500;

/// The storage operations the gRPC service exposes.
#[derive(Clone)]
pub struct Gateway {
    core: Arc<Core>,
}

impl Gateway {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// A write operation on `key`, classed by its path.
    pub fn op(&self, key: String, value: Option<Vec<u8>>) -> WriteOp {
        let class = self.core.classes.classify(&key);
        WriteOp { key, value, class }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read(
            &mut self.core.kv(),
            &self.core.keyspace,
            self.core.limits.max_key_bytes,
            key,
        )
        .await
    }

    /// Validates `ops` and commits them atomically; returns the WAL index that carries them.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<u64, StoreError> {
        validate(&ops, &self.core.limits)?;
        self.commit(ops, Source::Client).await
    }

    /// Commits writes that came from the primary, with the record of what was applied, if any.
    /// `ops` must already fit one transaction.
    pub async fn apply(
        &self,
        ops: Vec<WriteOp>,
        applied: Option<Vec<u8>>,
    ) -> Result<u64, StoreError> {
        self.commit(ops, Source::Primary { applied }).await
    }

    async fn commit(&self, ops: Vec<WriteOp>, source: Source) -> Result<u64, StoreError> {
        if !self.core.fence.is_held() {
            return Err(self.core.fence.refusal());
        }
        let (reply, outcome) = oneshot::channel();
        self.core
            .commits
            .write(Pending { ops, source, reply }, QUEUE_WAIT)
            .await?;
        outcome.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// The direct children of `prefix`, Vault style, read at one etcd revision.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        list(
            &mut self.core.kv(),
            &self.core.keyspace,
            self.core.limits.max_key_bytes,
            prefix,
        )
        .await
    }
}

/// Reads the value at storage path `key` straight from etcd (a standby reads this way too).
pub async fn read(
    kv: &mut KvClient,
    ks: &Keyspace,
    max_key_bytes: usize,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    validate_key(key, max_key_bytes).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
    let found = get(kv, &ks.data(key)).await?;
    Ok(found.map(|kv| kv.into_key_value().1))
}

/// The direct children of `prefix`, Vault style, read at one etcd revision.
pub async fn list(
    kv: &mut KvClient,
    ks: &Keyspace,
    max_key_bytes: usize,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    validate_prefix(prefix, max_key_bytes)
        .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
    let end = prefix_end(&ks.data(prefix));
    let mut children: Vec<String> = Vec::new();
    let mut from = ks.data(prefix).into_bytes();
    let mut revision = 0;
    loop {
        // Read until the first folder, then jump past its subtree.
        let mut jump = None;
        revision = scan(
            kv,
            from.clone(),
            end.clone(),
            Scan {
                revision,
                keys_only: true,
                page: LIST_PAGE,
            },
            |kv| {
                let Some(child) = ks.path_of(kv.key()).and_then(|p| child_of(prefix, p)) else {
                    return Ok(ControlFlow::Continue(()));
                };
                if children.last().map(String::as_str) != Some(child) {
                    children.push(child.to_owned());
                }
                if child.ends_with('/') {
                    jump = Some(ks.data(&skip_folder(prefix, child)).into_bytes());
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        match jump {
            Some(next) => from = next,
            None => return Ok(children),
        }
    }
}
