//! The framing shared by every record the sidecar stores in etcd.
//!
//! ```text
//! offset  size  field
//! 0       4     magic: which record this is ("FWAL", "FMSP", "FMCK", "FSTR")
//! 4       1     format version (1)
//! 5       n     body, big-endian integers
//! 5+n     4     CRC-32 (IEEE) of bytes 0..5+n
//! ```
//!
//! A record that fails any check (magic, version, checksum, truncation, trailing bytes) is
//! refused with a [`DecodeError`] naming what was wrong; nothing partial is returned.

use thiserror::Error;

const VERSION: u8 = 1;
const HEADER: usize = 5;
const TRAILER: usize = 4;

/// Why a stored record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {len} bytes, too short for a {what}")]
    TooShort { what: &'static str, len: usize },
    #[error("not a {what}: bad magic {found:?}")]
    BadMagic { what: &'static str, found: [u8; 4] },
    #[error("{what} has unsupported format version {found}")]
    BadVersion { what: &'static str, found: u8 },
    #[error("{what} checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    BadChecksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what} is truncated: needed {needed} more bytes for {field}")]
    Truncated {
        what: &'static str,
        field: &'static str,
        needed: usize,
    },
    #[error("{what} has {extra} unexpected trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what} is invalid: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Builds one record: header, body written through the `put_*` methods, then [`Writer::finish`].
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(magic: &[u8; 4], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER + capacity + TRAILER);
        buf.extend_from_slice(magic);
        buf.push(VERSION);
        Self { buf }
    }

    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Appends the checksum and returns the record.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// Reads one record's body after its frame was checked by [`Reader::open`].
pub struct Reader<'a> {
    what: &'static str,
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks magic, version and checksum of `record`, a `what` (used in error messages).
    pub fn open(
        what: &'static str,
        magic: &[u8; 4],
        record: &'a [u8],
    ) -> Result<Self, DecodeError> {
        if record.len() < HEADER + TRAILER {
            return Err(DecodeError::TooShort {
                what,
                len: record.len(),
            });
        }
        let found: [u8; 4] = record[..4].try_into().expect("4 bytes");
        if &found != magic {
            return Err(DecodeError::BadMagic { what, found });
        }
        if record[4] != VERSION {
            return Err(DecodeError::BadVersion {
                what,
                found: record[4],
            });
        }
        let (framed, trailer) = record.split_at(record.len() - TRAILER);
        let stored = u32::from_be_bytes(trailer.try_into().expect("4 bytes"));
        let computed = crc32fast::hash(framed);
        if stored != computed {
            return Err(DecodeError::BadChecksum {
                what,
                stored,
                computed,
            });
        }
        Ok(Self {
            what,
            body: &framed[HEADER..],
        })
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.body)
    }

    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.body.len() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                field,
                needed: n - self.body.len(),
            });
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(field, N)?.try_into().expect("length checked"))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A length that must not exceed what the record could possibly hold.
    pub fn count(
        &mut self,
        field: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item_bytes) > self.body.len() {
            return Err(self.invalid(format!(
                "{field} {n} does not fit in the remaining {} bytes",
                self.body.len()
            )));
        }
        Ok(n)
    }

    pub fn invalid(&self, reason: String) -> DecodeError {
        DecodeError::Invalid {
            what: self.what,
            reason,
        }
    }

    /// Fails unless the whole body was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                what: self.what,
                extra: self.body.len(),
            })
        }
    }
}

/// Damage for the record decoders' property tests: a record's body is changed and framed again
/// with a correct checksum, so that the body decoder, not the checksum, has to refuse it.
#[cfg(test)]
pub(crate) mod damage {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::{HEADER, TRAILER, Writer};

    /// One change to a record's body.
    #[derive(Clone, Debug)]
    pub enum Damage {
        Flip {
            at: Index,
            mask: u8,
        },
        Truncate {
            at: Index,
        },
        Insert {
            at: Index,
            bytes: Vec<u8>,
        },
        Append {
            bytes: Vec<u8>,
        },
        /// A length or count field made huge, or any other 4 bytes overwritten.
        Overwrite {
            at: Index,
            value: u32,
        },
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let bytes = || proptest::collection::vec(any::<u8>(), 1..16);
        let huge = prop_oneof![
            Just(u32::MAX),
            Just(u32::MAX / 2),
            Just(1 << 16),
            any::<u32>()
        ];
        prop_oneof![
            (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Damage::Flip { at, mask }),
            any::<Index>().prop_map(|at| Damage::Truncate { at }),
            (any::<Index>(), bytes()).prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
            bytes().prop_map(|bytes| Damage::Append { bytes }),
            (any::<Index>(), huge).prop_map(|(at, value)| Damage::Overwrite { at, value }),
        ]
    }

    impl Damage {
        fn apply(&self, body: &mut Vec<u8>) {
            match self {
                Self::Flip { at, mask } if !body.is_empty() => {
                    let at = at.index(body.len());
                    body[at] ^= mask;
                }
                Self::Truncate { at } => body.truncate(at.index(body.len() + 1)),
                Self::Insert { at, bytes } => {
                    let at = at.index(body.len() + 1);
                    let tail = body.split_off(at);
                    body.extend_from_slice(bytes);
                    body.extend(tail);
                }
                Self::Append { bytes } => body.extend_from_slice(bytes),
                Self::Overwrite { at, value } if body.len() >= 4 => {
                    let at = at.index(body.len() - 3);
                    body[at..at + 4].copy_from_slice(&value.to_be_bytes());
                }
                Self::Flip { .. } | Self::Overwrite { .. } => body.push(0),
            }
        }
    }

    /// `body` in a valid frame with `magic`.
    pub fn framed(magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(magic, body.len());
        w.put_bytes(body);
        w.finish()
    }

    /// `record`, a valid frame, with its body changed by `damages` and framed again.
    pub fn reframed(record: &[u8], damages: &[Damage]) -> Vec<u8> {
        let magic: [u8; 4] = record[..4].try_into().expect("a framed record");
        let mut body = record[HEADER..record.len() - TRAILER].to_vec();
        for d in damages {
            d.apply(&mut body);
        }
        framed(&magic, &body)
    }

    pub fn damages() -> impl Strategy<Value = Vec<Damage>> {
        proptest::collection::vec(damage(), 1..4)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One read a body decoder makes.
    #[derive(Clone, Debug)]
    enum Read {
        U8,
        U16,
        U32,
        U64,
        Take(usize),
        Count(usize),
    }

    fn read() -> impl Strategy<Value = Read> {
        prop_oneof![
            Just(Read::U8),
            Just(Read::U16),
            Just(Read::U32),
            Just(Read::U64),
            prop_oneof![0usize..80, Just(usize::MAX)].prop_map(Read::Take),
            prop_oneof![1usize..40, Just(usize::MAX)].prop_map(Read::Count),
        ]
    }

    proptest! {
        /// Bytes that are not a record are refused by name, whatever they hold.
        #[test]
        fn open_refuses_what_is_not_a_frame_of_its_magic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(mut r) = Reader::open("test record", b"TEST", &bytes) {
                prop_assert_eq!(&bytes[..4], b"TEST");
                prop_assert_eq!(r.rest(), &bytes[HEADER..bytes.len() - TRAILER]);
            }
        }

        /// Whatever a body holds and whatever a decoder reads from it, a read fails rather than
        /// run past the body, and a count never promises more items than the bytes left hold.
        #[test]
        fn reads_stay_within_the_body(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            reads in proptest::collection::vec(read(), 0..16),
        ) {
            let record = damage::framed(b"TEST", &body);
            let mut r = Reader::open("test record", b"TEST", &record).unwrap();
            for read in reads {
                let before = r.body.len();
                let taken = match read {
                    Read::U8 => r.u8("f").map(|_| 1),
                    Read::U16 => r.u16("f").map(|_| 2),
                    Read::U32 => r.u32("f").map(|_| 4),
                    Read::U64 => r.u64("f").map(|_| 8),
                    Read::Take(n) => r.take("f", n).map(<[u8]>::len),
                    Read::Count(min_item_bytes) => match r.count("f", min_item_bytes) {
                        Ok(n) => {
                            prop_assert!(n.saturating_mul(min_item_bytes) <= r.body.len());
                            Ok(4)
                        }
                        Err(e) => Err(e),
                    },
                };
                match taken {
                    Ok(n) => prop_assert_eq!(before - r.body.len(), n),
                    Err(_) => prop_assert!(r.body.len() <= before),
                }
            }
            let left = r.body.len();
            prop_assert_eq!(r.finish().is_ok(), left == 0);
        }
    }

    #[test]
    fn frame_round_trips_and_detects_damage() {
        let mut w = Writer::new(b"TEST", 8);
        w.put_u64(7);
        let record = w.finish();
        let mut r = Reader::open("test record", b"TEST", &record).unwrap();
        assert_eq!(r.u64("n").unwrap(), 7);
        r.finish().unwrap();

        let mut flipped = record.clone();
        flipped[6] ^= 1;
        assert!(matches!(
            Reader::open("test record", b"TEST", &flipped),
            Err(DecodeError::BadChecksum { .. })
        ));
        assert!(matches!(
            Reader::open("test record", b"OTHR", &record),
            Err(DecodeError::BadMagic { .. })
        ));
        assert!(matches!(
            Reader::open("test record", b"TEST", &record[..5]),
            Err(DecodeError::TooShort { .. })
        ));
    }
}
