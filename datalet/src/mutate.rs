//! What a mutation does to the item under a key: pure, shared by every backend that stores
//! items itself.

use bytes::{BufMut, Bytes, BytesMut};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::codec::{item_fits, strtoull};
use tailorkv_common::{UnixSecs, Version};

use crate::{Item, Mutation, Outcome};

/// The change to make to the key's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Keep,
    Put(Item),
    Remove,
}

/// Decides a mutation against the live item under `key` (`None` when there is none).
pub fn decide(
    key: &[u8],
    current: Option<&Item>,
    mutation: Mutation,
    version: Version,
    item_size_max: usize,
) -> (Change, Outcome) {
    use Outcome::*;
    match (mutation, current) {
        (
            Mutation::Store {
                mode,
                flags,
                expiry,
                value,
            },
            current,
        ) => {
            let new = Item {
                value,
                flags,
                expiry,
                version,
            };
            match (mode, current) {
                (StoreMode::Set, _) | (StoreMode::Add, None) | (StoreMode::Replace, Some(_)) => {
                    (Change::Put(new), Stored)
                }
                (StoreMode::Cas(unique), Some(old)) if old.version.cas() == unique => {
                    (Change::Put(new), Stored)
                }
                (StoreMode::Cas(_), Some(_)) => (Change::Keep, Exists),
                (StoreMode::Cas(_), None) => (Change::Keep, NotFound),
                (StoreMode::Append | StoreMode::Prepend, Some(old)) => {
                    let (first, second) = if mode == StoreMode::Append {
                        (&old.value, &new.value)
                    } else {
                        (&new.value, &old.value)
                    };
                    let len = first.len() + second.len();
                    if !item_fits(key.len(), old.flags, len, item_size_max) {
                        return (Change::Keep, NotStored);
                    }
                    let mut joined = BytesMut::with_capacity(len);
                    joined.put_slice(first);
                    joined.put_slice(second);
                    let item = Item {
                        value: joined.freeze(),
                        version,
                        ..old.clone()
                    };
                    (Change::Put(item), Stored)
                }
                _ => (Change::Keep, NotStored),
            }
        }
        (Mutation::Delete, Some(_)) => (Change::Remove, Deleted),
        (Mutation::Evict { version }, Some(old)) if old.version == version => {
            (Change::Remove, Deleted)
        }
        (Mutation::Evict { .. }, _) => (Change::Keep, NotFound),
        (Mutation::Incr(delta), Some(old)) => arithmetic(old, delta, true, version),
        (Mutation::Decr(delta), Some(old)) => arithmetic(old, delta, false, version),
        (Mutation::Touch { expiry }, Some(old)) => {
            let item = Item {
                expiry,
                ..old.clone()
            };
            (Change::Put(item.clone()), Touched(item))
        }
        (
            Mutation::Delete | Mutation::Incr(_) | Mutation::Decr(_) | Mutation::Touch { .. },
            None,
        ) => (Change::Keep, NotFound),
    }
}

/// `incr`/`decr` exactly as memcached does them: the value is read with `strtoull`, and a
/// result shorter than the old value is padded with spaces to the old length (memcached
/// rewrites the item in place), so `decr` of `10` by 1 reads back as `9 `.
fn arithmetic(old: &Item, delta: u64, incr: bool, version: Version) -> (Change, Outcome) {
    let Some(value) = strtoull(&old.value) else {
        return (Change::Keep, Outcome::NonNumeric);
    };
    let new = if incr {
        value.wrapping_add(delta)
    } else {
        value.saturating_sub(delta)
    };
    let digits = new.to_string();
    let mut text = BytesMut::with_capacity(digits.len().max(old.value.len()));
    text.put_slice(digits.as_bytes());
    if digits.len() < old.value.len() {
        text.put_bytes(b' ', old.value.len() - digits.len());
    }
    let item = Item {
        value: Bytes::from(text),
        version,
        ..old.clone()
    };
    (Change::Put(item), Outcome::Number(new))
}

/// Bytes an item counts against the memory limit besides its key and value, like memcached's
/// item header.
pub const ITEM_OVERHEAD_BYTES: usize = 56;

/// What an item counts against the memory limit.
pub fn item_bytes(key: &[u8], item: &Item) -> usize {
    key.len() + item.value.len() + ITEM_OVERHEAD_BYTES
}

/// Why a stored item is no longer visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dead {
    Expired,
    Flushed,
}

/// Whether an item last written at second `stored_at` is gone at `now`: past its expiry, or
/// stored at or before the flush point `flush_at` (0: no flush) once that point is reached.
pub fn dead(item: &Item, stored_at: UnixSecs, flush_at: UnixSecs, now: UnixSecs) -> Option<Dead> {
    if flush_at != 0 && flush_at <= now && stored_at <= flush_at {
        Some(Dead::Flushed)
    } else if item.expiry.is_expired(now) {
        Some(Dead::Expired)
    } else {
        None
    }
}
