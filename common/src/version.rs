//! Versions stored with every item.
//!
//! A version is a Lamport timestamp paired with the id of the node that issued it. Ordering is
//! by timestamp, then node id, so two versions issued anywhere in a cluster never compare
//! equal. The CAS unique a memcached client sees is the version packed into 64 bits, so every
//! replica that applied the same write reports the same CAS unique.

use serde::{Deserialize, Serialize};

/// A Lamport timestamp.
pub type Ts = u64;

/// The id of a controlet in a cluster. A single node uses `NodeId(0)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u16);

/// The version of a stored item: `(timestamp, node)`, ordered in that order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub ts: Ts,
    pub node: NodeId,
}

/// Timestamps use the high 48 bits of a CAS unique, node ids the low 16.
const NODE_BITS: u32 = 16;

/// The largest timestamp that still packs into a CAS unique.
pub const MAX_TS: Ts = (1 << (64 - NODE_BITS)) - 1;

/// A CAS unique no version packs into in practice (it would take timestamp [`MAX_TS`] of
/// node 65535): compared against an item's, it never matches. Used where memcached compares
/// against an item that has no unique (CAS turned off with `-C`).
pub const NO_MATCH_CAS: u64 = u64::MAX;

impl Version {
    pub const fn new(ts: Ts, node: NodeId) -> Self {
        Version { ts, node }
    }

    /// The CAS unique reported by `gets` and checked by `cas`. Never 0 for a version issued
    /// with `ts >= 1`, so `cas ... 0` never matches, as in memcached.
    pub fn cas(self) -> u64 {
        debug_assert!(
            self.ts <= MAX_TS,
            "timestamp {} overflows a CAS unique",
            self.ts
        );
        (self.ts << NODE_BITS) | u64::from(self.node.0)
    }

    /// The version a CAS unique was made from.
    pub fn from_cas(cas: u64) -> Self {
        Version {
            ts: cas >> NODE_BITS,
            node: NodeId((cas & ((1 << NODE_BITS) - 1)) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_round_trips_and_orders_like_versions() {
        let a = Version::new(7, NodeId(3));
        let b = Version::new(7, NodeId(4));
        let c = Version::new(8, NodeId(0));
        for v in [a, b, c] {
            assert_eq!(Version::from_cas(v.cas()), v);
        }
        assert!(a < b && b < c);
        assert!(a.cas() < b.cas() && b.cas() < c.cas());
        assert_ne!(Version::new(1, NodeId(0)).cas(), 0);
    }
}
