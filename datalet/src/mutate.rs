//! What a mutation does to the item under a key: pure, shared by every backend that stores
//! items itself.

use bytes::{BufMut, Bytes, BytesMut};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::codec::{item_fits, strtoull};
use tailorkv_common::{Expiry, UnixSecs, Version};

use crate::{Fetched, Item, Marks, MetaGet, MetaSet, Mutation, Outcome};

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
            let (mode, compare) = match mode {
                StoreMode::Cas(unique) => (StoreMode::Set, Some(unique)),
                mode => (mode, None),
            };
            let set = MetaSet {
                mode,
                compare,
                invalidate: false,
                flags,
                expiry,
                value,
                marks: Marks::default(),
            };
            let (change, outcome) = store(key, current, set, version, item_size_max);
            let outcome = match outcome {
                StoredAt(_) => Stored,
                other => other,
            };
            (change, outcome)
        }
        (Mutation::MetaSet(set), current) => store(key, current, set, version, item_size_max),
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
        (Mutation::MetaGet(get), current) => fetch(current, get, version),
        (Mutation::MetaDelete(delete), Some(old)) => {
            if delete.compare.is_some_and(|cas| cas != old.version.cas()) {
                return (Change::Keep, Exists);
            }
            if !delete.invalidate {
                return (Change::Remove, Deleted);
            }
            // memcached's `md ... I`: a new CAS unique, marked stale, and the win token free
            // again so that the next reader recaches.
            let item = Item {
                version,
                expiry: delete.touch.unwrap_or(old.expiry),
                marks: old.marks.with(Marks::STALE).without(Marks::WON),
                ..old.clone()
            };
            (Change::Put(item), Invalidated)
        }
        (Mutation::MetaArith(arith), Some(old)) => {
            if arith
                .compare
                .is_some_and(|cas| cas != 0 && cas != old.version.cas())
            {
                return (Change::Keep, Exists);
            }
            let (change, outcome) = arithmetic(old, arith.delta, arith.incr, version);
            let (Change::Put(mut item), Number(number)) = (change, outcome.clone()) else {
                return (Change::Keep, outcome);
            };
            item.expiry = arith.touch.unwrap_or(item.expiry);
            let counted = crate::Counted {
                number,
                item: item.clone(),
                expiry_before: old.expiry,
                created: false,
            };
            (Change::Put(item), Counted(Box::new(counted)))
        }
        (Mutation::MetaArith(arith), None) => match arith.vivify {
            Some((expiry, initial)) => {
                let item = Item {
                    value: Bytes::from(initial.to_string()),
                    flags: 0,
                    expiry,
                    version,
                    marks: Marks::default(),
                };
                let counted = crate::Counted {
                    number: initial,
                    item: item.clone(),
                    expiry_before: Expiry::Never,
                    created: true,
                };
                (Change::Put(item), Counted(Box::new(counted)))
            }
            None => (Change::Keep, NotFound),
        },
        (
            Mutation::Delete
            | Mutation::Incr(_)
            | Mutation::Decr(_)
            | Mutation::Touch { .. }
            | Mutation::MetaDelete(_),
            None,
        ) => (Change::Keep, NotFound),
    }
}

/// Every storage command, as memcached's `do_store_item` decides it: the CAS check first
/// (a unique of 0 checks nothing), then the mode. A `set` or `replace` with a unique is a
/// `cas`; `append`/`prepend` refuse a unique that does not match; `add` ignores it.
fn store(
    key: &[u8],
    current: Option<&Item>,
    set: MetaSet,
    version: Version,
    item_size_max: usize,
) -> (Change, Outcome) {
    use Outcome::*;
    let is_cas = set.compare.is_some() && matches!(set.mode, StoreMode::Set | StoreMode::Replace);
    let unique = set.compare.unwrap_or(0);
    let new = Item {
        value: set.value,
        flags: set.flags,
        expiry: set.expiry,
        version,
        marks: set.marks,
    };
    let Some(old) = current else {
        return match set.mode {
            _ if is_cas => (Change::Keep, NotFound),
            StoreMode::Set | StoreMode::Add => (Change::Put(new), StoredAt(version)),
            _ => (Change::Keep, NotStored),
        };
    };
    let old_unique = old.version.cas();
    let matched = unique != 0 && unique == old_unique;
    let checked = unique == 0 || matched;
    if is_cas {
        if matched {
            return (Change::Put(new), StoredAt(version));
        }
        if set.invalidate && unique != 0 && unique < old_unique {
            // A late writer's value is kept, marked stale, with the old expiry and win token.
            let item = Item {
                expiry: old.expiry,
                marks: new
                    .marks
                    .with(Marks::STALE)
                    .with(Marks(old.marks.0 & Marks::WON.0)),
                ..new
            };
            return (Change::Put(item), StoredAt(version));
        }
        return (Change::Keep, Exists);
    }
    match set.mode {
        StoreMode::Set | StoreMode::Replace => (Change::Put(new), StoredAt(version)),
        StoreMode::Append | StoreMode::Prepend if !checked => (Change::Keep, Exists),
        StoreMode::Append | StoreMode::Prepend => {
            let (first, second) = if set.mode == StoreMode::Append {
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
            // A new item in memcached: the old one's flags and expiry, no marks.
            let item = Item {
                value: joined.freeze(),
                flags: old.flags,
                expiry: old.expiry,
                version,
                marks: Marks::default(),
            };
            (Change::Put(item), StoredAt(version))
        }
        StoreMode::Add | StoreMode::Cas(_) => (Change::Keep, NotStored),
    }
}

/// `mg` with flags that may change the item, as memcached's `process_mget_command` does it:
/// a miss with `N` creates an empty item whose reader wins; `T` sets the expiry; `R` wins if
/// the item expires before its point and no one has won; a stale item's first reader wins.
fn fetch(current: Option<&Item>, get: MetaGet, version: Version) -> (Change, Outcome) {
    let Some(old) = current else {
        let Some(expiry) = get.vivify else {
            return (Change::Keep, Outcome::NotFound);
        };
        let item = Item {
            value: Bytes::new(),
            flags: 0,
            // `T` after `N` would set it again: the caller folds both into `vivify`.
            expiry,
            version,
            marks: Marks::WON,
        };
        let fetched = Fetched {
            item: item.clone(),
            marks_before: Marks::default(),
            expiry_before: Expiry::Never,
            created: true,
            won: true,
        };
        return (Change::Put(item), Outcome::Fetched(Box::new(fetched)));
    };
    let expiry = get.touch.unwrap_or(old.expiry);
    let compared = if get.touch_first { expiry } else { old.expiry };
    let recache = match (get.recache, compared) {
        (Some(Expiry::At(point)), Expiry::At(at)) => at < point,
        _ => false,
    };
    let sent = old.marks.contains(Marks::WON);
    let won = !sent && (recache || old.marks.contains(Marks::STALE));
    let mut item = Item {
        expiry,
        ..old.clone()
    };
    if won {
        item.marks = item.marks.with(Marks::WON);
    }
    let change = if item == *old {
        Change::Keep
    } else {
        Change::Put(item.clone())
    };
    let fetched = Fetched {
        item,
        marks_before: old.marks,
        expiry_before: old.expiry,
        created: false,
        won,
    };
    (change, Outcome::Fetched(Box::new(fetched)))
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
