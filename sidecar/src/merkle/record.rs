//! How the merkle index is stored in etcd: subpage records and the checkpoint.
//!
//! The subpage is the unit of flushing. Each record carries its LSN, the WAL index it reflects
//! (the page LSN of ARIES): every change from WAL entries up to the LSN is in it, none after.
//! Inside the common frame (see `codec`):
//!
//! ```text
//! subpage record "FMSP"           checkpoint "FMCK"
//! 4   subpage number               4   pages
//! 8   LSN                          4   subpages per page
//! 4   leaf count                   8   checkpoint: every subpage reflects at least this index
//! 32  per leaf: path hash, value hash (16 + 16), sorted by path hash
//! ```
//!
//! Recovery loads every record, treats a subpage's effective LSN as the larger of its own and the
//! checkpoint, and redoes the WAL after the checkpoint, applying an entry to a subpage only when
//! the entry's index is above that subpage's LSN.

use super::{Geometry, Leaf};
use crate::codec::{DecodeError, Reader, Writer};

const SUBPAGE_MAGIC: &[u8; 4] = b"FMSP";
const CHECKPOINT_MAGIC: &[u8; 4] = b"FMCK";

/// One flushed subpage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubpageRecord {
    pub subpage: u32,
    pub lsn: u64,
    pub leaves: Vec<Leaf>,
}

impl SubpageRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(SUBPAGE_MAGIC, 16 + 32 * self.leaves.len());
        w.put_u32(self.subpage);
        w.put_u64(self.lsn);
        w.put_u32(self.leaves.len() as u32);
        for leaf in &self.leaves {
            w.put_bytes(&leaf.path);
            w.put_bytes(&leaf.value);
        }
        w.finish()
    }

    /// Decodes a record and checks that its leaves are sorted and belong to its subpage.
    pub fn decode(record: &[u8], geometry: Geometry) -> Result<Self, DecodeError> {
        let mut r = Reader::open("merkle subpage record", SUBPAGE_MAGIC, record)?;
        let subpage = r.u32("subpage")?;
        let lsn = r.u64("lsn")?;
        let count = r.count("leaf count", 32)?;
        let mut leaves = Vec::with_capacity(count);
        for _ in 0..count {
            let leaf = Leaf {
                path: r.array("leaf path hash")?,
                value: r.array("leaf value hash")?,
            };
            if geometry.subpage_of(&leaf.path) != subpage {
                return Err(r.invalid(format!("a leaf does not belong to subpage {subpage}")));
            }
            if leaves
                .last()
                .is_some_and(|prev: &Leaf| prev.path >= leaf.path)
            {
                return Err(r.invalid("leaves are not sorted by path hash".into()));
            }
            leaves.push(leaf);
        }
        r.finish()?;
        if subpage >= geometry.subpages() {
            return Err(DecodeError::Invalid {
                what: "merkle subpage record",
                reason: format!("subpage {subpage} is outside the geometry"),
            });
        }
        Ok(Self {
            subpage,
            lsn,
            leaves,
        })
    }
}

/// The merkle checkpoint: the geometry the records were written with, and the WAL index every
/// subpage reflects at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub geometry: Geometry,
    pub lsn: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(CHECKPOINT_MAGIC, 16);
        w.put_u32(self.geometry.pages);
        w.put_u32(self.geometry.subpages_per_page);
        w.put_u64(self.lsn);
        w.finish()
    }

    pub fn decode(record: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open("merkle checkpoint", CHECKPOINT_MAGIC, record)?;
        let pages = r.u32("pages")?;
        let per = r.u32("subpages per page")?;
        let lsn = r.u64("lsn")?;
        r.finish()?;
        let geometry = Geometry::new(pages, per).map_err(|e| DecodeError::Invalid {
            what: "merkle checkpoint",
            reason: e.to_string(),
        })?;
        Ok(Self { geometry, lsn })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::damage::{damages, reframed};
    use crate::merkle::{Change, MerkleIndex};

    fn geometry() -> Geometry {
        Geometry::new(2, 2).unwrap()
    }

    /// A valid record: sorted leaves, all of the subpage of the first one.
    fn subpage_record() -> impl Strategy<Value = SubpageRecord> {
        (
            proptest::collection::vec(any::<([u8; 16], [u8; 16])>(), 1..12),
            any::<u64>(),
        )
            .prop_map(|(leaves, lsn)| {
                let subpage = geometry().subpage_of(&leaves[0].0);
                let mut leaves: Vec<Leaf> = leaves
                    .into_iter()
                    .filter(|(path, _)| geometry().subpage_of(path) == subpage)
                    .map(|(path, value)| Leaf { path, value })
                    .collect();
                leaves.sort_by_key(|l| l.path);
                leaves.dedup_by_key(|l| l.path);
                SubpageRecord {
                    subpage,
                    lsn,
                    leaves,
                }
            })
    }

    proptest! {
        /// A subpage record read from etcd is an error or the one record it encodes, whatever
        /// its bytes, and a huge leaf count allocates nothing.
        #[test]
        fn subpage_records_decode_to_an_error_or_what_they_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            record in subpage_record(),
            damages in damages(),
        ) {
            prop_assert_eq!(SubpageRecord::decode(&record.encode(), geometry()), Ok(record.clone()));
            let damaged = reframed(&record.encode(), &damages);
            for raw in [bytes, damaged] {
                if let Ok(decoded) = SubpageRecord::decode(&raw, geometry()) {
                    prop_assert_eq!(decoded.encode(), raw);
                }
            }
        }

        /// The checkpoint read from etcd is an error or the one checkpoint it encodes, with a
        /// geometry that [`Geometry::new`] accepts.
        #[test]
        fn checkpoints_decode_to_an_error_or_what_they_encode(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            pages in 1u32..64,
            per in 1u32..64,
            lsn: u64,
            damages in damages(),
        ) {
            let checkpoint = Checkpoint { geometry: Geometry::new(pages, per).unwrap(), lsn };
            let damaged = reframed(&checkpoint.encode(), &damages);
            for raw in [bytes, damaged] {
                if let Ok(decoded) = Checkpoint::decode(&raw) {
                    let g = decoded.geometry;
                    prop_assert_eq!(Geometry::new(g.pages, g.subpages_per_page), Ok(g));
                    prop_assert_eq!(decoded.encode(), raw);
                }
            }
        }
    }

    #[test]
    fn subpage_records_round_trip_and_are_checked() {
        let geometry = Geometry::new(2, 2).unwrap();
        let mut index = MerkleIndex::new(geometry);
        let changes: Vec<Change> = (0..50)
            .map(|i| Change::put(&format!("k{i}"), b"v"))
            .collect();
        index.apply(&changes);
        let ids = index.dirty_ids();
        for (subpage, leaves) in index.take_dirty(&ids) {
            let record = SubpageRecord {
                subpage,
                lsn: 9,
                leaves,
            };
            assert_eq!(
                SubpageRecord::decode(&record.encode(), geometry).unwrap(),
                record
            );
            let other = SubpageRecord {
                subpage: (subpage + 1) % 4,
                ..record.clone()
            };
            assert!(SubpageRecord::decode(&other.encode(), geometry).is_err());
        }
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = Checkpoint {
            geometry: Geometry::default(),
            lsn: 77,
        };
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        assert!(Checkpoint::decode(&c.encode()[1..]).is_err());
    }
}
