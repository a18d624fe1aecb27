//! The write-ahead log: entry format, the stream record, retention and the shipping reader.

pub mod gc;
pub mod reader;
pub mod recent;
pub mod record;

use record::StreamId;

use crate::codec::{DecodeError, Reader, Writer};

/// This cluster's WAL stream and replication epoch, stored at `meta/stream`.
///
/// ```text
/// "FSTR" frame: 16 stream id, 8 epoch
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamState {
    pub stream_id: StreamId,
    pub epoch: u64,
}

impl StreamState {
    const MAGIC: &[u8; 4] = b"FSTR";

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::MAGIC, 24);
        w.put_bytes(&self.stream_id.0);
        w.put_u64(self.epoch);
        w.finish()
    }

    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open("stream record", Self::MAGIC, record)?;
        let stream_id = StreamId(r.array("stream id")?);
        let epoch = r.u64("epoch")?;
        r.finish()?;
        Ok(Self { stream_id, epoch })
    }
}

/// Where the WAL stands: shared by the committer (which appends), the GC (which trims) and the
/// reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalPosition {
    /// The last index written, 0 when the WAL is empty.
    pub last: u64,
    /// The oldest index still retained, 0 when the WAL is empty.
    pub first: u64,
    /// Cumulative bytes through `last`.
    pub cumulative_last: u64,
    /// Cumulative bytes before `first`.
    pub cumulative_before_first: u64,
}

impl WalPosition {
    /// Records that entry `index`, `len` bytes long, with `cumulative` bytes through it, was
    /// appended.
    pub fn append(&mut self, index: u64, cumulative: u64, len: u64) {
        self.last = index;
        self.cumulative_last = cumulative;
        if self.first == 0 {
            self.first = index;
            self.cumulative_before_first = cumulative - len;
        }
    }

    pub fn retained_entries(&self) -> u64 {
        if self.last == 0 {
            0
        } else {
            self.last - self.first + 1
        }
    }

    pub fn retained_bytes(&self) -> u64 {
        self.cumulative_last - self.cumulative_before_first
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::damage::{damages, reframed};

    proptest! {
        /// `meta/stream` as read from etcd: an error or the one record it encodes.
        #[test]
        fn stream_records_decode_to_an_error_or_what_they_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            id: [u8; 16],
            epoch: u64,
            damages in damages(),
        ) {
            let damaged = reframed(&StreamState { stream_id: StreamId(id), epoch }.encode(), &damages);
            for record in [bytes, damaged] {
                if let Ok(s) = StreamState::decode(&record) {
                    prop_assert_eq!(s.encode(), record);
                }
            }
        }
    }

    #[test]
    fn stream_record_round_trips() {
        let s = StreamState {
            stream_id: StreamId([7; 16]),
            epoch: 3,
        };
        assert_eq!(StreamState::decode(&s.encode()).unwrap(), s);
        assert!(StreamState::decode(b"garbage!!").is_err());
    }
}
