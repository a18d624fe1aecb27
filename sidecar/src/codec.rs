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

#[cfg(test)]
mod tests {
    use super::*;

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
