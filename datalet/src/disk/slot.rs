//! How an item is laid out on disk.
//!
//! ```text
//! format u8 = 2 | ts u64 | node u16 | flags u32 | expiry u64 (u64::MAX = never) | stored_at u64 | marks u8 | value...
//! ```
//! Little-endian, fixed header of 32 bytes, then the value. `marks` are the meta protocol's
//! (stale, win token sent, base64 key). Format 1, written before marks existed, is the same
//! without the marks byte, and is still read. The version and expiry are stored
//! with the value, so both survive a restart.

use bytes::Bytes;
use tailorkv_common::{Expiry, NodeId, UnixSecs, Version};

use crate::{Item, Marks};

const FORMAT: u8 = 2;
/// The header of format 1, without marks.
const FORMAT_1: u8 = 1;
const HEADER_1_BYTES: usize = 1 + 8 + 2 + 4 + 8 + 8;
const HEADER_BYTES: usize = HEADER_1_BYTES + 1;
const NEVER: u64 = u64::MAX;

/// An item and the second it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub item: Item,
    pub stored_at: UnixSecs,
}

impl Slot {
    pub fn encode(&self) -> Vec<u8> {
        let item = &self.item;
        let mut out = Vec::with_capacity(HEADER_BYTES + item.value.len());
        out.push(FORMAT);
        out.extend_from_slice(&item.version.ts.to_le_bytes());
        out.extend_from_slice(&item.version.node.0.to_le_bytes());
        out.extend_from_slice(&item.flags.to_le_bytes());
        let expiry = match item.expiry {
            Expiry::Never => NEVER,
            Expiry::At(at) => at,
        };
        out.extend_from_slice(&expiry.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        out.push(item.marks.0);
        out.extend_from_slice(&item.value);
        out
    }

    /// `None` for bytes this code did not write.
    pub fn decode(bytes: &[u8]) -> Option<Slot> {
        let (header, marks) = match bytes.first() {
            Some(&FORMAT) if bytes.len() >= HEADER_BYTES => {
                (HEADER_BYTES, Marks(bytes[HEADER_1_BYTES]))
            }
            Some(&FORMAT_1) if bytes.len() >= HEADER_1_BYTES => (HEADER_1_BYTES, Marks::default()),
            _ => return None,
        };
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let ts = u64_at(1);
        let node = u16::from_le_bytes(bytes[9..11].try_into().unwrap());
        let flags = u32::from_le_bytes(bytes[11..15].try_into().unwrap());
        let expiry = match u64_at(15) {
            NEVER => Expiry::Never,
            at => Expiry::At(at),
        };
        let stored_at = u64_at(23);
        Some(Slot {
            item: Item {
                value: Bytes::copy_from_slice(&bytes[header..]),
                flags,
                expiry,
                version: Version::new(ts, NodeId(node)),
                marks,
            },
            stored_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for expiry in [Expiry::Never, Expiry::At(0), Expiry::At(1_700_000_000)] {
            for marks in [Marks::default(), Marks::ALL] {
                let slot = Slot {
                    item: Item {
                        value: Bytes::from_static(b"value\r\nwith anything\0"),
                        flags: u32::MAX,
                        expiry,
                        version: Version::new(1 << 40, NodeId(7)),
                        marks,
                    },
                    stored_at: 42,
                };
                assert_eq!(Slot::decode(&slot.encode()), Some(slot));
            }
        }
        assert_eq!(Slot::decode(b"short"), None);
        // Format 1, as written before marks: the same fields without the marks byte.
        let mut old = vec![FORMAT_1];
        old.extend_from_slice(&5u64.to_le_bytes());
        old.extend_from_slice(&3u16.to_le_bytes());
        old.extend_from_slice(&9u32.to_le_bytes());
        old.extend_from_slice(&u64::MAX.to_le_bytes());
        old.extend_from_slice(&7u64.to_le_bytes());
        old.extend_from_slice(b"old");
        let read = Slot::decode(&old).expect("format 1 is read");
        assert_eq!(read.item.value, Bytes::from_static(b"old"));
        assert_eq!(read.item.version, Version::new(5, NodeId(3)));
        assert_eq!((read.item.flags, read.item.expiry), (9, Expiry::Never));
        assert_eq!((read.item.marks, read.stored_at), (Marks::default(), 7));
        assert_eq!(Slot::decode(&[9; 40]), None, "unknown format");
    }
}
