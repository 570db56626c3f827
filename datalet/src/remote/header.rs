//! The header a remote datalet puts in front of every value it stores, so that an item's
//! version, expiry and write time live in the remote server with the item itself.
//!
//! # Layout
//!
//! 31 bytes, integers big-endian, then the client's data unchanged:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 3 | magic `TKV` |
//! | 3 | 1 | layout version, 1 |
//! | 4 | 1 | bit 0: expiry kind (0 never, 1 at a second); bits 1-3: the meta protocol's marks (stale, win token sent, base64 key) |
//! | 5 | 8 | expiry second (0 when never) |
//! | 13 | 8 | version timestamp |
//! | 21 | 2 | version node id |
//! | 23 | 8 | stored at: the caller's second when the item was written, for `flush_all` |
//!
//! The item's 32-bit flags are not in the header: they travel in memcached's own flags field.
//!
//! A value that does not start with a valid header was written by someone else (or is the
//! empty value of a conditional delete). It is [`Foreign`]: the remote datalet treats it as
//! absent. Absent rather than an error, because a remote server shared with other clients
//! should not make our keys unusable, and a foreign value is never shown to our clients as
//! if it were ours; a write that stores an item replaces it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tailorkv_common::{Expiry, NodeId, UnixSecs, Version};

use crate::Marks;

/// Bytes of header in front of every value.
pub const HEADER_LEN: usize = 31;

const MAGIC: &[u8; 3] = b"TKV";
const LAYOUT_VERSION: u8 = 1;

/// What the header holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub expiry: Expiry,
    /// The caller's `now` when the item was written: a flush point at or after it hides the
    /// item.
    pub stored_at: UnixSecs,
    /// The item's meta-protocol marks.
    pub marks: Marks,
}

/// A value without a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the remote value has no tailorkv header")]
pub struct Foreign;

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        w.put_slice(MAGIC);
        w.put_u8(LAYOUT_VERSION);
        match self.expiry {
            Expiry::Never => {
                w.put_u8(self.marks.0 << 1);
                w.put_u64(0);
            }
            Expiry::At(at) => {
                w.put_u8(1 | self.marks.0 << 1);
                w.put_u64(at);
            }
        }
        w.put_u64(self.version.ts);
        w.put_u16(self.version.node.0);
        w.put_u64(self.stored_at);
        debug_assert!(w.is_empty());
        out
    }

    /// The header and the client's data of a value read back from the remote server.
    pub fn decode(value: &Bytes) -> Result<(Header, Bytes), Foreign> {
        if value.len() < HEADER_LEN || &value[..3] != MAGIC || value[3] != LAYOUT_VERSION {
            return Err(Foreign);
        }
        let mut r = &value[4..HEADER_LEN];
        let kind = r.get_u8();
        let marks = Marks(kind >> 1);
        if marks.without(Marks::ALL) != Marks::default() {
            return Err(Foreign);
        }
        let expiry = match (kind & 1, r.get_u64()) {
            (0, 0) => Expiry::Never,
            (1, at) => Expiry::At(at),
            _ => return Err(Foreign),
        };
        let version = Version::new(r.get_u64(), NodeId(r.get_u16()));
        let stored_at = r.get_u64();
        let header = Header {
            version,
            expiry,
            stored_at,
            marks,
        };
        Ok((header, value.slice(HEADER_LEN..)))
    }

    /// The header followed by `data`, as one value.
    pub fn join(&self, data: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + data.len());
        out.put_slice(&self.encode());
        out.put_slice(data);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(expiry: Expiry) -> Header {
        Header {
            version: Version::new(0x0102_0304_0506, NodeId(0xBEEF)),
            expiry,
            stored_at: 1_700_000_123,
            marks: Marks::default(),
        }
    }

    #[test]
    fn headers_round_trip_with_the_data_untouched() {
        for expiry in [Expiry::Never, Expiry::At(0), Expiry::At(u64::MAX)] {
            for data in [&b""[..], b"hello", b"TKV\x01 looks like a header"] {
                let h = header(expiry);
                let value = h.join(data);
                assert_eq!(value.len(), HEADER_LEN + data.len());
                assert_eq!(
                    Header::decode(&value),
                    Ok((h, Bytes::copy_from_slice(data)))
                );
            }
        }
    }

    #[test]
    fn the_layout_is_fixed() {
        let bytes = header(Expiry::At(0x11)).encode();
        assert_eq!(&bytes[..5], b"TKV\x01\x01");
        assert_eq!(&bytes[5..13], &0x11u64.to_be_bytes());
        assert_eq!(&bytes[13..21], &0x0102_0304_0506u64.to_be_bytes());
        assert_eq!(&bytes[21..23], &[0xBE, 0xEF]);
        assert_eq!(&bytes[23..31], &1_700_000_123u64.to_be_bytes());
        let marked = Header {
            marks: Marks::STALE.with(Marks::BINARY_KEY),
            ..header(Expiry::Never)
        };
        let bytes = marked.encode();
        assert_eq!(bytes[4], 0b1010);
        let value = marked.join(b"v");
        assert_eq!(Header::decode(&value).unwrap().0, marked);
        let mut unknown = value.to_vec();
        unknown[4] = 1 << 4;
        assert_eq!(Header::decode(&Bytes::from(unknown)), Err(Foreign));
    }

    #[test]
    fn values_without_a_valid_header_are_foreign() {
        let good = header(Expiry::Never).join(b"x");
        // Bit 4 and up of the kind byte are no mark.
        let mut wrong_kind = BytesMut::from(&good[..]);
        wrong_kind[4] = 0x10;
        let mut never_with_a_second = BytesMut::from(&good[..]);
        never_with_a_second[12] = 1;
        let mut later_layout = BytesMut::from(&good[..]);
        later_layout[3] = 2;
        for foreign in [
            Bytes::new(),
            Bytes::from_static(b"hello"),
            Bytes::from_static(b"12345678901234567890123456789012345"),
            good.slice(..HEADER_LEN - 1),
            wrong_kind.freeze(),
            never_with_a_second.freeze(),
            later_layout.freeze(),
        ] {
            assert_eq!(Header::decode(&foreign), Err(Foreign), "{foreign:?}");
        }
    }
}
