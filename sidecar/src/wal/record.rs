//! The WAL entry: what one committed group of replicated writes looks like in etcd.
//!
//! Every etcd transaction that changes replicated paths carries exactly one entry, stored at
//! `wal/<index>` in the same transaction as the key updates. Inside the common frame (see
//! `codec`), the body is:
//!
//! ```text
//! size  field
//! 8     index: gap-free, increasing, starting at 1
//! 16    stream id: random per WAL stream; a promotion starts a new stream
//! 8     epoch: the replication epoch the writer held
//! 32    merkle root after applying this entry (the guard a secondary streams from)
//! 8     cumulative bytes: encoded size of this entry and every earlier one, so that
//!       retention by bytes needs only the first and last entries
//! 4     operation count
//! per operation:
//!   1   kind: 1 = put, 2 = delete
//!   2   key length, then the key (UTF-8 storage path)
//!   4   value length, then the value (puts only; opaque ciphertext)
//! ```

use crate::codec::{DecodeError, Reader, Writer};
use crate::merkle::Digest;

const MAGIC: &[u8; 4] = b"FWAL";
const WHAT: &str = "WAL entry";
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Identifies one WAL stream: a cluster's stream changes when it is promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    /// A fresh random stream id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the operating system's random source failed");
        Self(id)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// One replicated write inside a WAL entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOp {
    pub key: String,
    /// The new value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// One WAL entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalEntry {
    pub index: u64,
    pub stream_id: StreamId,
    pub epoch: u64,
    pub merkle_root: Digest,
    pub cumulative_bytes: u64,
    pub ops: Vec<WalOp>,
}

impl WalEntry {
    /// Bytes of an encoded entry besides its operations.
    const FIXED_BYTES: usize = 5 + 8 + 16 + 8 + 32 + 8 + 4 + 4;

    /// The encoded size of an entry holding `ops`.
    pub fn encoded_len(ops: &[WalOp]) -> usize {
        Self::FIXED_BYTES + Self::ops_size(ops)
    }

    /// Cumulative bytes before this entry.
    pub fn cumulative_before(&self) -> u64 {
        self.cumulative_bytes
            .saturating_sub(Self::encoded_len(&self.ops) as u64)
    }

    /// The encoded size of the operations, a close estimate of the whole entry.
    pub fn ops_size(ops: &[WalOp]) -> usize {
        ops.iter()
            .map(|op| 3 + op.key.len() + op.value.as_ref().map_or(0, |v| 4 + v.len()))
            .sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC, Self::encoded_len(&self.ops));
        w.put_u64(self.index);
        w.put_bytes(&self.stream_id.0);
        w.put_u64(self.epoch);
        w.put_bytes(&self.merkle_root);
        w.put_u64(self.cumulative_bytes);
        w.put_u32(self.ops.len() as u32);
        for op in &self.ops {
            w.put_u8(if op.value.is_some() { PUT } else { DELETE });
            w.put_u16(op.key.len() as u16);
            w.put_bytes(op.key.as_bytes());
            if let Some(value) = &op.value {
                w.put_u32(value.len() as u32);
                w.put_bytes(value);
            }
        }
        w.finish()
    }

    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(WHAT, MAGIC, record)?;
        let index = r.u64("index")?;
        let stream_id = StreamId(r.array("stream id")?);
        let epoch = r.u64("epoch")?;
        let merkle_root = r.array("merkle root")?;
        let cumulative_bytes = r.u64("cumulative bytes")?;
        let count = r.count("operation count", 3)?;
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = r.u8("operation kind")?;
            let key_len = r.u16("key length")? as usize;
            let key = std::str::from_utf8(r.take("key", key_len)?)
                .map_err(|e| r.invalid(format!("key is not UTF-8: {e}")))?
                .to_owned();
            let value = match kind {
                PUT => {
                    let len = r.u32("value length")? as usize;
                    Some(r.take("value", len)?.to_vec())
                }
                DELETE => None,
                other => return Err(r.invalid(format!("unknown operation kind {other}"))),
            };
            ops.push(WalOp { key, value });
        }
        r.finish()?;
        if index == 0 {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: "index 0 is reserved".into(),
            });
        }
        Ok(Self {
            index,
            stream_id,
            epoch,
            merkle_root,
            cumulative_bytes,
            ops,
        })
    }
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn op() -> impl Strategy<Value = WalOp> {
        (
            "[a-z/]{1,40}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(|(key, value)| WalOp { key, value })
    }

    fn entry() -> impl Strategy<Value = WalEntry> {
        (
            1u64..,
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            proptest::collection::vec(op(), 0..20),
        )
            .prop_map(
                |(index, id, epoch, merkle_root, cumulative_bytes, ops)| WalEntry {
                    index,
                    stream_id: StreamId(id),
                    epoch,
                    merkle_root,
                    cumulative_bytes,
                    ops,
                },
            )
    }

    proptest! {
        /// Bytes read from etcd or sent by a primary decode to an error or to the one entry they
        /// encode: never a panic, never an entry that encodes otherwise.
        #[test]
        fn arbitrary_bytes_are_an_error_or_the_entry_they_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(e) = WalEntry::decode(&bytes) {
                prop_assert_eq!(e.encode(), bytes);
            }
        }

        /// A damaged body under a valid checksum (what a bug or a forger writes) is refused by
        /// the body decoder, or is exactly another valid entry; its lengths and counts are
        /// checked against the bytes there, so a huge one allocates nothing.
        #[test]
        fn damaged_bodies_are_an_error_or_the_entry_they_encode(
            e in entry(),
            damages in crate::codec::damage::damages(),
        ) {
            let record = crate::codec::damage::reframed(&e.encode(), &damages);
            if let Ok(decoded) = WalEntry::decode(&record) {
                prop_assert_eq!(decoded.encode(), record);
            }
        }

        #[test]
        fn round_trips(e in entry()) {
            let record = e.encode();
            prop_assert_eq!(record.len(), WalEntry::encoded_len(&e.ops));
            prop_assert_eq!(WalEntry::decode(&record).unwrap(), e);
        }

        /// Any single flipped bit or truncation is refused, never decoded into something else.
        #[test]
        fn rejects_corruption(e in entry(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut record = e.encode();
            let i = at.index(record.len());
            record[i] ^= 1 << bit;
            prop_assert!(WalEntry::decode(&record).is_err());
            let whole = e.encode();
            prop_assert!(WalEntry::decode(&whole[..i]).is_err());
        }
    }

    #[test]
    fn rejects_trailing_bytes_even_with_a_valid_checksum() {
        let e = WalEntry {
            index: 1,
            stream_id: StreamId([1; 16]),
            epoch: 1,
            merkle_root: [0; 32],
            cumulative_bytes: 0,
            ops: vec![],
        };
        let record = e.encode();
        // Re-frame the body with one extra byte and a correct checksum.
        let mut forged = record[..record.len() - 4].to_vec();
        forged.push(0);
        let crc = crc32fast::hash(&forged);
        forged.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            WalEntry::decode(&forged),
            Err(DecodeError::Trailing { extra: 1, .. })
        ));
    }
}
