//! How an item is laid out on disk.
//!
//! ```text
//! format u8 = 1 | ts u64 | node u16 | flags u32 | expiry u64 (u64::MAX = never) | stored_at u64 | value...
//! ```
//! Little-endian, fixed header of 31 bytes, then the value. The version and expiry are stored
//! with the value, so both survive a restart.

use bytes::Bytes;
use tailorkv_common::{Expiry, NodeId, UnixSecs, Version};

use crate::Item;

const FORMAT: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 2 + 4 + 8 + 8;
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
        out.extend_from_slice(&item.value);
        out
    }

    /// `None` for bytes this code did not write.
    pub fn decode(bytes: &[u8]) -> Option<Slot> {
        if bytes.len() < HEADER_BYTES || bytes[0] != FORMAT {
            return None;
        }
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
                value: Bytes::copy_from_slice(&bytes[HEADER_BYTES..]),
                flags,
                expiry,
                version: Version::new(ts, NodeId(node)),
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
            let slot = Slot {
                item: Item {
                    value: Bytes::from_static(b"value\r\nwith anything\0"),
                    flags: u32::MAX,
                    expiry,
                    version: Version::new(1 << 40, NodeId(7)),
                },
                stored_at: 42,
            };
            assert_eq!(Slot::decode(&slot.encode()), Some(slot));
        }
        assert_eq!(Slot::decode(b"short"), None);
        assert_eq!(Slot::decode(&[9; 40]), None, "unknown format");
    }
}
