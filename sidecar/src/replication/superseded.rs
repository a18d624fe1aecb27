//! `meta/superseded`: the durable record that a newer primary exists.
//!
//! A primary that learns of a higher epoch (the new primary's announcement, a secondary's
//! request, a peer's answer when it checks) must never accept a replicated write again at its
//! own epoch, restart or not. Its role is stored in the cluster definition, but that is a
//! storage write under the write fence, and the moment a primary learns it was superseded is
//! often the moment its fence is gone: it stalled past its lease while a secondary was
//! force-promoted. So the epoch is stored here first, outside the fence, by a compare-and-swap
//! that only ever raises it; the fenced definition follows as soon as this node holds its fence
//! again (at start-up, or when it retakes a fence that expired), and until then the node refuses
//! replicated writes in memory. A newer primary's announcement is answered as fenced only once
//! this record is stored, so the announcer keeps trying until it is.
//!
//! ```text
//! "FSUP" frame: 8 newer epoch, 1 shipped-known flag, 8 shipped_to
//! ```
//!
//! `shipped_to` is the last index of this cluster's WAL stream the new primary had applied when
//! it was promoted, when it said so: the entries after it are exactly what this cluster
//! acknowledged and never shipped, the only keys worth keeping aside when it follows the new
//! primary.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::definition::ClusterDefinition;
use crate::codec::{DecodeError, Reader, Writer};
use crate::core::{Core, TXN_TIMEOUT, txn_response};
use crate::error::StoreError;

/// Compare-and-swap attempts before giving up on a record other nodes keep changing.
const MAX_ATTEMPTS: usize = 8;

/// A newer primary's epoch, as stored at `meta/superseded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub epoch: u64,
    /// The last index of this cluster's stream the newer primary applied, when known.
    pub shipped_to: Option<u64>,
}

impl Superseded {
    const MAGIC: &[u8; 4] = b"FSUP";

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::MAGIC, 17);
        w.put_u64(self.epoch);
        w.put_u8(u8::from(self.shipped_to.is_some()));
        w.put_u64(self.shipped_to.unwrap_or(0));
        w.finish()
    }

    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open("superseded record", Self::MAGIC, record)?;
        let epoch = r.u64("epoch")?;
        let known = r.u8("shipped-known flag")?;
        let shipped_to = r.u64("shipped_to")?;
        let shipped_to = match known {
            0 => None,
            1 => Some(shipped_to),
            other => return Err(r.invalid(format!("shipped-known flag {other}"))),
        };
        r.finish()?;
        Ok(Self { epoch, shipped_to })
    }

    /// What to store when `self` is already stored and `newer` is learned: the higher epoch;
    /// at the same epoch, a known shipped index wins over an unknown one. `None` when `self`
    /// already says as much.
    pub fn merge(stored: Option<Self>, newer: Self) -> Option<Self> {
        match stored {
            Some(s) if s.epoch > newer.epoch => None,
            Some(s)
                if s.epoch == newer.epoch
                    && (s.shipped_to.is_some() || newer.shipped_to.is_none()) =>
            {
                None
            }
            _ => Some(newer),
        }
    }
}

/// The role a cluster defined by `definition`, at epoch `own_epoch`, takes on learning that a
/// primary at `epoch` exists: fenced when it is an active primary of an older epoch, else
/// unchanged (`None`).
pub fn fenced_definition(
    definition: &ClusterDefinition,
    own_epoch: u64,
    epoch: u64,
) -> Option<ClusterDefinition> {
    Some(ClusterDefinition {
        role: definition.role.fence(own_epoch, epoch)?,
        primary_cluster_addr: String::new(),
        ..definition.clone()
    })
}

/// The stored record, if any.
pub async fn load(core: &Core) -> Result<Option<Superseded>, StoreError> {
    let Some(kv) = crate::etcd::get(&mut core.kv(), &core.keyspace.superseded()).await? else {
        return Ok(None);
    };
    Superseded::decode(kv.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("failed to read meta/superseded: {e}")))
}

/// Stores `newer` unless the stored record already says as much, outside the write fence.
/// Returns what is stored afterwards.
pub async fn raise(core: &Core, newer: Superseded) -> Result<Superseded, StoreError> {
    let key = core.keyspace.superseded();
    for _ in 0..MAX_ATTEMPTS {
        let current = crate::etcd::get(&mut core.kv(), &key).await?;
        let (stored, revision) = match &current {
            Some(kv) => (
                Some(Superseded::decode(kv.value()).map_err(|e| {
                    StoreError::Corrupt(format!("failed to read meta/superseded: {e}"))
                })?),
                kv.mod_revision(),
            ),
            None => (None, 0),
        };
        let Some(record) = Superseded::merge(stored, newer) else {
            return Ok(stored.expect("merge keeps only what is stored"));
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), record.encode(), None)]);
        let resp = txn_response(tokio::time::timeout(TXN_TIMEOUT, core.kv().txn(txn)).await)?;
        if resp.succeeded() {
            return Ok(record);
        }
    }
    Err(StoreError::Unavailable(format!(
        "meta/superseded changed {MAX_ATTEMPTS} times while storing epoch {}",
        newer.epoch
    )))
}

/// Removes the record: this cluster starts a new replication set, whose epochs are its own.
pub async fn clear(core: &Core) -> Result<(), StoreError> {
    let txn = Txn::new().and_then([TxnOp::delete(core.keyspace.superseded(), None)]);
    txn_response(tokio::time::timeout(TXN_TIMEOUT, core.kv().txn(txn)).await)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::damage::{damages, reframed};

    proptest! {
        /// `meta/superseded` as read from etcd: an error or a record that survives its own
        /// round trip, whatever the bytes. (An unknown `shipped_to` need not be stored as 0.)
        #[test]
        fn superseded_records_decode_to_an_error_or_a_valid_record(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            epoch: u64,
            shipped_to: Option<u64>,
            damages in damages(),
        ) {
            let damaged = reframed(&Superseded { epoch, shipped_to }.encode(), &damages);
            for record in [bytes, damaged] {
                if let Ok(s) = Superseded::decode(&record) {
                    prop_assert_eq!(record.len(), s.encode().len());
                    prop_assert_eq!(Superseded::decode(&s.encode()), Ok(s));
                }
            }
        }
    }

    fn primary() -> ClusterDefinition {
        ClusterDefinition::active_primary_for_tests()
    }

    #[test]
    fn round_trips() {
        for record in [
            Superseded {
                epoch: 2,
                shipped_to: None,
            },
            Superseded {
                epoch: 7,
                shipped_to: Some(0),
            },
            Superseded {
                epoch: 3,
                shipped_to: Some(u64::MAX),
            },
        ] {
            assert_eq!(Superseded::decode(&record.encode()).unwrap(), record);
        }
        assert!(Superseded::decode(b"FSUP").is_err());
        let mut flipped = Superseded {
            epoch: 2,
            shipped_to: None,
        }
        .encode();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(Superseded::decode(&flipped).is_err());
    }

    #[test]
    fn the_epoch_only_grows() {
        let s = |epoch, shipped_to| Superseded { epoch, shipped_to };
        assert_eq!(Superseded::merge(None, s(2, None)), Some(s(2, None)));
        assert_eq!(Superseded::merge(Some(s(3, None)), s(2, Some(5))), None);
        assert_eq!(Superseded::merge(Some(s(2, Some(5))), s(2, None)), None);
        assert_eq!(
            Superseded::merge(Some(s(2, None)), s(2, Some(5))),
            Some(s(2, Some(5)))
        );
        assert_eq!(
            Superseded::merge(Some(s(2, Some(5))), s(3, None)),
            Some(s(3, None))
        );
    }

    #[test]
    fn only_an_active_primary_of_an_older_epoch_is_fenced() {
        let fenced = fenced_definition(&primary(), 1, 2).expect("fenced");
        assert_eq!(fenced.role.fenced_by_epoch(), Some(2));
        assert_eq!(fenced.role.write_mode(), crate::core::WriteMode::Closed);
        assert!(!fenced.follows_primary());
        assert_eq!(fenced_definition(&primary(), 2, 2), None);
        assert_eq!(fenced_definition(&primary(), 3, 2), None);
        assert_eq!(fenced_definition(&fenced, 1, 3), None);
    }
}
