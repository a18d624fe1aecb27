//! The secondary's applied record, `meta/applied`: which primary stream it follows and the last
//! index of that stream it applied. It is written in the same transaction as the writes it
//! covers, so after a restart the secondary asks to stream from exactly there.
//!
//! ```text
//! "FAPL" frame: 16 primary stream id, 8 last applied index, 8 primary epoch
//! ```

use crate::codec::{DecodeError, Reader, Writer};
use crate::core::Core;
use crate::error::StoreError;
use crate::wal::record::StreamId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub stream_id: StreamId,
    pub index: u64,
    pub epoch: u64,
}

impl Applied {
    const MAGIC: &[u8; 4] = b"FAPL";

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::MAGIC, 32);
        w.put_bytes(&self.stream_id.0);
        w.put_u64(self.index);
        w.put_u64(self.epoch);
        w.finish()
    }

    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open("applied record", Self::MAGIC, record)?;
        let stream_id = StreamId(r.array("stream id")?);
        let index = r.u64("index")?;
        let epoch = r.u64("epoch")?;
        r.finish()?;
        Ok(Self {
            stream_id,
            index,
            epoch,
        })
    }
}

/// The record stored at `meta/applied`, if any; a corrupt one reads as none (the follower then
/// reconciles from scratch).
pub async fn load(core: &Core) -> Result<Option<Applied>, StoreError> {
    Ok(crate::etcd::get(&mut core.kv(), &core.keyspace.applied())
        .await?
        .and_then(|kv| Applied::decode(kv.value()).ok()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::damage::{damages, reframed};

    proptest! {
        /// `meta/applied` as read from etcd: an error or the one record it encodes.
        #[test]
        fn applied_records_decode_to_an_error_or_what_they_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            id: [u8; 16],
            index: u64,
            epoch: u64,
            damages in damages(),
        ) {
            let a = Applied { stream_id: StreamId(id), index, epoch };
            let damaged = reframed(&a.encode(), &damages);
            for record in [bytes, damaged] {
                if let Ok(decoded) = Applied::decode(&record) {
                    prop_assert_eq!(decoded.encode(), record);
                }
            }
        }
    }

    #[test]
    fn round_trips() {
        let a = Applied {
            stream_id: StreamId([3; 16]),
            index: 42,
            epoch: 2,
        };
        assert_eq!(Applied::decode(&a.encode()).unwrap(), a);
        assert!(Applied::decode(b"FAPL").is_err());
    }
}
