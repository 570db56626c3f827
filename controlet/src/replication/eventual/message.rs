//! What eventual-mode peers send each other: updates, and the steps of anti-entropy.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::{Expiry, Ts, UnixSecs, Version};
use tailorkv_datalet::Marks;

use super::causal::{Context, Write};
use super::quorum::VersionVector;
use crate::replication::antientropy::Entry;

/// One replicated change: the item a write left, a delete's tombstone, or a flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// The item a write (or a `touch`) left under `key`, whole, at its version.
    Item {
        key: Bytes,
        value: Bytes,
        flags: u32,
        expiry: Expiry,
        version: Version,
        /// The meta protocol's marks (stale, win token sent, base64 key).
        marks: Marks,
    },
    /// A delete's tombstone: `key` holds nothing at `version`.
    Deleted {
        key: Bytes,
        version: Version,
        /// When the delete was made, by its node's clock: tombstones are collected by it.
        deleted_at: UnixSecs,
    },
    /// `flush_all`: items stored at or before second `at` go once the clock reaches it, as
    /// [`Datalet::flush_all`](tailorkv_datalet::Datalet::flush_all) says; `now` is the
    /// flushing node's clock then.
    Flush {
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    },
}

impl Update {
    /// The version it carries: replicas keep the highest.
    pub(super) fn version(&self) -> Version {
        match self {
            Update::Item { version, .. }
            | Update::Deleted { version, .. }
            | Update::Flush { version, .. } => *version,
        }
    }

    /// The key it changes (none for a flush).
    pub(super) fn key(&self) -> Option<&Bytes> {
        match self {
            Update::Item { key, .. } | Update::Deleted { key, .. } => Some(key),
            Update::Flush { .. } => None,
        }
    }

    /// Roughly how many bytes it takes on the wire.
    pub(super) fn size(&self) -> usize {
        match self {
            Update::Item { key, value, .. } => key.len() + value.len() + 32,
            Update::Deleted { key, .. } => key.len() + 24,
            Update::Flush { .. } => 32,
        }
    }
}

/// What eventual-mode peers send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Local writes, or hints, on their way to every replica.
    Updates(Vec<Update>),
    /// Anti-entropy, step 1: the sender's range hashes, clock and last flush.
    Summary {
        round: u64,
        clock: Ts,
        flush: Option<Update>,
        ranges: Vec<u64>,
    },
    /// Step 2: the answer to summary `round`: the bucket hashes of each range that differs;
    /// none when the two agree.
    Buckets {
        round: u64,
        ranges: Vec<(u16, Vec<u64>)>,
    },
    /// Step 3: the sender's keys and versions in buckets that differ.
    Entries { buckets: Vec<(u16, Vec<Entry>)> },
    /// Step 4: items and tombstones the receiver lacks or holds older, and keys the sender
    /// wants in return.
    Repair {
        updates: Vec<Update>,
        want: Vec<Bytes>,
    },
    /// A whole copy of the group has been sent (the updates before this): the receiver, new
    /// to the group, may serve it.
    Filled,
    /// A member offers a new member a copy of the group, as soon as it is there to take it.
    Offer,
    /// The answer to an [`Message::Offer`]: the group is running here, send the copy.
    Ready,
    /// A client's write for a quorum (`--write-quorum`): the receiver applies it as an update
    /// and answers [`Message::QuorumAck`]; `clock` is the key's version vector.
    QuorumWrite {
        id: u64,
        update: Update,
        clock: VersionVector,
    },
    /// Write `id` is held here.
    QuorumAck { id: u64 },
    /// A read's quorum (`--read-quorum`): what does the receiver hold for `key`?
    QuorumRead { id: u64, key: Bytes },
    /// The answer to read `id`: the item or tombstone held, if any.
    QuorumEntry { id: u64, entry: Option<Update> },
    /// Causal mode: writes of the sender's stream (its run `run`), in order.
    CausalWrites { run: u64, writes: Vec<Write> },
    /// Causal mode: the sender (its run `run`) shows the receiver's writes of run `of` up
    /// to `seq`; `resend`: messages from the receiver were lost, send again after `seq`.
    CausalAck {
        run: u64,
        of: u64,
        seq: u64,
        resend: bool,
    },
    /// Causal mode: part of the sender's whole state, read at `context` (the same in every
    /// part; `first` starts one, `last` ends it).
    Refill {
        run: u64,
        context: Context,
        updates: Vec<Update>,
        first: bool,
        last: bool,
    },
}

impl crate::weigh::Weigh for Message {
    fn weight(&self) -> usize {
        let updates = |u: &[Update]| u.iter().map(Update::size).sum::<usize>();
        let data = match self {
            Message::Updates(u) => updates(u),
            Message::Summary { ranges, .. } => 8 * ranges.len() + 40,
            Message::Buckets { ranges, .. } => {
                ranges.iter().map(|(_, b)| 8 * b.len() + 10).sum::<usize>()
            }
            Message::Entries { buckets } => buckets
                .iter()
                .flat_map(|(_, entries)| entries)
                .map(|e| e.key.len() + 24)
                .sum(),
            Message::Repair { updates: u, want } => {
                updates(u) + want.iter().map(|k| k.len() + 8).sum::<usize>()
            }
            Message::CausalWrites { writes, .. } => writes.iter().map(Write::size).sum(),
            Message::Refill {
                updates: u,
                context,
                ..
            } => updates(u) + 24 * context.len(),
            Message::QuorumWrite { update, clock, .. } => update.size() + 10 * clock.len(),
            Message::QuorumRead { key, .. } => key.len(),
            Message::QuorumEntry { entry, .. } => entry.as_ref().map_or(0, Update::size),
            Message::Filled
            | Message::Offer
            | Message::Ready
            | Message::CausalAck { .. }
            | Message::QuorumAck { .. } => 0,
        };
        data + 16
    }
}
