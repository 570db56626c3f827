//! The behaviour every datalet must have, as test cases.
//!
//! Each case takes a constructor `make(limits)` that returns a fresh, empty datalet with those
//! limits, and panics on a violation. A backend runs them all with
//! `tailorkv_datalet::conformance_tests!(MyDatalet::new);` in its tests, which
//! expands to one `#[tokio::test]` per case.
//!
//! Every backend must pass every case, the remote one included, whose items live in a real
//! memcached. Hence two allowances:
//! - `stats` may trail the store by a moment (a remote store's counters are the remote
//!   server's, fetched in the background), so checks of `stats` wait up to
//!   [`STATS_SETTLE`] for the counters to show what was done.
//! - Memory limits are 8 MiB and more: memcached can be given no less through
//!   `cache_memlimit`, and counts memory in 1 MiB pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Clock, Expiry, NodeId, SystemClock, UnixSecs, Version};

use crate::{BatchOp, Datalet, DataletError, DataletStats, Item, Limits, Marks, Mutation, Outcome};

/// Every case, by name; [`conformance_tests!`](crate::conformance_tests) makes a test of each.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            set_then_get_returns_value_flags_and_version,
            add_stores_only_when_absent,
            replace_stores_only_when_present,
            append_and_prepend_keep_flags_and_expiry,
            append_past_the_item_size_limit_is_not_stored,
            cas_stores_only_on_a_matching_unique,
            delete_removes,
            incr_and_decr_follow_memcached,
            touch_changes_expiry_and_keeps_version,
            items_expire_at_their_second,
            flush_all_now_and_delayed,
            memory_limit_refuses_and_keeps_what_is_stored,
            expired_items_are_reclaimed_to_make_room,
            mutations_of_one_key_never_interleave,
            scan_returns_exactly_the_live_items,
            scan_returns_every_one_of_many_items,
            a_snapshot_is_the_state_when_taken_read_in_bounded_parts,
            keys_of_any_bytes_a_client_can_send_are_kept,
            reset_empties_the_store_and_keeps_the_clock,
            items_written_after_a_reset_are_served,
            a_batch_applies_in_order_with_each_outcome,
            meta_marks_are_kept_with_the_item,
            meta_mutations_follow_memcached,
        );
    };
    (@each $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::conformance::$case($make).await;
            }
        )*
    };
}

const NOW: UnixSecs = 1_700_000_000;
/// The version a test's `flush_all` is applied at.
const FLUSH_VERSION: Version = Version::new(1, NodeId(0));

fn v(ts: u64) -> Version {
    Version::new(ts, NodeId(1))
}

/// `k` as a key.
pub fn key(k: &str) -> Bytes {
    Bytes::copy_from_slice(k.as_bytes())
}

/// A store of `value` (`set`, `add`, ... by `mode`).
pub fn store(mode: StoreMode, value: &str, flags: u32, expiry: Expiry) -> Mutation {
    Mutation::Store {
        mode,
        flags,
        expiry,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// A plain `set` of `value`.
pub fn set(value: &str) -> Mutation {
    store(StoreMode::Set, value, 0, Expiry::Never)
}

async fn apply<D: Datalet>(d: &D, k: &str, m: Mutation, ts: u64) -> Outcome {
    d.apply(&key(k), m, v(ts), NOW).await.expect("apply")
}

fn meta_set(value: &str, compare: Option<u64>, invalidate: bool, marks: Marks) -> Mutation {
    Mutation::MetaSet(crate::MetaSet {
        mode: StoreMode::Set,
        compare,
        invalidate,
        flags: 3,
        expiry: Expiry::At(NOW + 100),
        value: key(value),
        marks,
    })
}

fn meta_get(vivify: Option<Expiry>) -> Mutation {
    Mutation::MetaGet(crate::MetaGet {
        vivify,
        recache: None,
        touch: None,
        touch_first: false,
        bump: true,
    })
}

/// The item under `k`, which must be there.
async fn live<D: Datalet>(d: &D, k: &str) -> Item {
    d.get(k.as_bytes(), NOW)
        .await
        .expect("get")
        .expect("an item")
}

/// The meta protocol's marks are stored with the item and read back, as every write leaves
/// them, by every backend (the disk and remote ones keep them in their headers).
pub async fn meta_marks_are_kept_with_the_item<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let binary = meta_set("v", None, false, Marks::BINARY_KEY);
    assert_eq!(apply(&d, "k", binary, 2).await, Outcome::StoredAt(v(2)));
    assert_eq!(live(&d, "k").await.marks, Marks::BINARY_KEY);
    let every = meta_set("w", None, false, Marks::ALL);
    assert_eq!(apply(&d, "k", every, 3).await, Outcome::StoredAt(v(3)));
    assert_eq!(live(&d, "k").await.marks, Marks::ALL);
    // A classic write starts the item without marks.
    assert_eq!(apply(&d, "k", set("x"), 4).await, Outcome::Stored);
    assert_eq!(live(&d, "k").await.marks, Marks::default());
    let scanned = scanned(&d, NOW).await;
    assert_eq!(scanned[&key("k")].marks, Marks::default());
}

/// `md I`, the win token of `mg`, a stale `ms I`, `ma` with `N` and `C`, `mg N`: decided as
/// memcached decides them, with the marks every backend keeps.
pub async fn meta_mutations_follow_memcached<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let invalidate = Mutation::MetaDelete(crate::MetaDelete {
        compare: None,
        invalidate: true,
        touch: Some(Expiry::At(NOW + 30)),
    });
    assert_eq!(
        apply(&d, "gone", invalidate.clone(), 2).await,
        Outcome::NotFound
    );
    apply(&d, "k", meta_set("old", None, false, Marks::default()), 3).await;
    let wrong = Mutation::MetaDelete(crate::MetaDelete {
        compare: Some(v(2).cas()),
        invalidate: false,
        touch: None,
    });
    assert_eq!(apply(&d, "k", wrong, 4).await, Outcome::Exists);
    assert_eq!(apply(&d, "k", invalidate, 5).await, Outcome::Invalidated);
    let stale = live(&d, "k").await;
    assert_eq!(stale.marks, Marks::STALE, "stale, a new version");
    assert_eq!((stale.version, stale.expiry), (v(5), Expiry::At(NOW + 30)));
    // The first reader of a stale item wins; the next sees the win handed out.
    let Outcome::Fetched(first) = apply(&d, "k", meta_get(None), 6).await else {
        panic!("a hit");
    };
    assert!(first.won && !first.created);
    assert_eq!(first.marks_before, Marks::STALE);
    let Outcome::Fetched(second) = apply(&d, "k", meta_get(None), 7).await else {
        panic!("a hit");
    };
    assert!(!second.won);
    assert_eq!(second.marks_before, Marks::STALE.with(Marks::WON));
    assert_eq!(
        live(&d, "k").await.version,
        v(5),
        "a read keeps the version"
    );
    // A late write with an older unique and `I` is kept, stale, with the old expiry.
    let late = meta_set("late", Some(v(3).cas()), true, Marks::default());
    assert_eq!(apply(&d, "k", late, 8).await, Outcome::StoredAt(v(8)));
    let item = live(&d, "k").await;
    assert_eq!(item.value, key("late"));
    assert_eq!(item.marks, Marks::STALE.with(Marks::WON));
    assert_eq!(item.expiry, Expiry::At(NOW + 30));
    // Without `I`, or with a newer unique, it is refused.
    let refused = meta_set("no", Some(v(3).cas()), false, Marks::default());
    assert_eq!(apply(&d, "k", refused, 9).await, Outcome::Exists);
    let newer = meta_set("no", Some(v(50).cas()), true, Marks::default());
    assert_eq!(apply(&d, "k", newer, 10).await, Outcome::Exists);
    // `mg N` on a miss creates an empty item whose reader wins.
    let Outcome::Fetched(created) =
        apply(&d, "lease", meta_get(Some(Expiry::At(NOW + 9))), 11).await
    else {
        panic!("created");
    };
    assert!(created.created && created.won);
    let lease = live(&d, "lease").await;
    assert_eq!((lease.value, lease.marks), (Bytes::new(), Marks::WON));
    assert_eq!(lease.expiry, Expiry::At(NOW + 9));
    // `ma`: created from `J` on a miss, refused on a wrong unique, counted otherwise.
    let arith = |compare, vivify| {
        Mutation::MetaArith(crate::MetaArith {
            incr: true,
            delta: 5,
            compare,
            vivify,
            touch: None,
        })
    };
    assert_eq!(
        apply(&d, "n", arith(None, None), 12).await,
        Outcome::NotFound
    );
    let Outcome::Counted(made) = apply(&d, "n", arith(None, Some((Expiry::Never, 40))), 13).await
    else {
        panic!("created");
    };
    assert_eq!((made.number, made.created), (40, true));
    let wrong = arith(Some(v(12).cas()), None);
    assert_eq!(apply(&d, "n", wrong, 14).await, Outcome::Exists);
    let Outcome::Counted(next) = apply(&d, "n", arith(Some(v(13).cas()), None), 15).await else {
        panic!("counted");
    };
    assert_eq!((next.number, next.item.version), (45, v(15)));
    assert_eq!(value(&d, "n").await, Some(key("45")));
}

/// The longest a backend's `stats` may trail what it has done.
pub const STATS_SETTLE: Duration = Duration::from_secs(3);

/// The datalet's stats once `settled` holds of them, or as they are after [`STATS_SETTLE`]
/// (for the caller's assertions to report).
async fn stats_once<D: Datalet>(d: &D, settled: impl Fn(&DataletStats) -> bool) -> DataletStats {
    let deadline = Instant::now() + STATS_SETTLE;
    loop {
        let stats = d.stats();
        if settled(&stats) || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn value<D: Datalet>(d: &D, k: &str) -> Option<Bytes> {
    d.get(k.as_bytes(), NOW)
        .await
        .expect("get")
        .map(|i| i.value)
}

pub async fn set_then_get_returns_value_flags_and_version<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    assert_eq!(d.get(b"k", NOW).await, Ok(None));
    let m = store(StoreMode::Set, "hello", 42, Expiry::At(NOW + 100));
    assert_eq!(apply(&d, "k", m, 5).await, Outcome::Stored);
    let item = d.get(b"k", NOW).await.unwrap().unwrap();
    let expected = Item {
        value: key("hello"),
        flags: 42,
        expiry: Expiry::At(NOW + 100),
        version: v(5),
        marks: Marks::default(),
    };
    assert_eq!(item, expected);
    assert_eq!(apply(&d, "k", set("bye"), 6).await, Outcome::Stored);
    let item = d.get(b"k", NOW).await.unwrap().unwrap();
    assert_eq!(
        (item.value, item.flags, item.version),
        (key("bye"), 0, v(6))
    );
    let stats = stats_once(&d, |s| s.curr_items == 1 && s.bytes >= 4).await;
    assert_eq!(stats.curr_items, 1);
    assert!(stats.bytes >= 4, "bytes must count the item");
}

pub async fn add_stores_only_when_absent<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let add = |s| store(StoreMode::Add, s, 0, Expiry::Never);
    assert_eq!(apply(&d, "k", add("a"), 1).await, Outcome::Stored);
    assert_eq!(apply(&d, "k", add("b"), 2).await, Outcome::NotStored);
    assert_eq!(value(&d, "k").await, Some(key("a")));
}

pub async fn replace_stores_only_when_present<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let replace = |s| store(StoreMode::Replace, s, 3, Expiry::Never);
    assert_eq!(apply(&d, "k", replace("a"), 1).await, Outcome::NotStored);
    assert_eq!(value(&d, "k").await, None);
    apply(&d, "k", set("a"), 2).await;
    assert_eq!(apply(&d, "k", replace("b"), 3).await, Outcome::Stored);
    let item = d.get(b"k", NOW).await.unwrap().unwrap();
    assert_eq!((item.value, item.flags), (key("b"), 3));
}

pub async fn append_and_prepend_keep_flags_and_expiry<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let append = |s| store(StoreMode::Append, s, 9, Expiry::Never);
    let prepend = |s| store(StoreMode::Prepend, s, 9, Expiry::Never);
    assert_eq!(apply(&d, "k", append("x"), 1).await, Outcome::NotStored);
    assert_eq!(apply(&d, "k", prepend("x"), 2).await, Outcome::NotStored);
    let m = store(StoreMode::Set, "b", 5, Expiry::At(NOW + 60));
    apply(&d, "k", m, 3).await;
    assert_eq!(apply(&d, "k", append("c"), 4).await, Outcome::Stored);
    assert_eq!(apply(&d, "k", prepend("a"), 5).await, Outcome::Stored);
    let item = d.get(b"k", NOW).await.unwrap().unwrap();
    assert_eq!(item.value, key("abc"));
    assert_eq!((item.flags, item.expiry), (5, Expiry::At(NOW + 60)));
    assert_eq!(item.version, v(5), "an append is a new version");
}

pub async fn append_past_the_item_size_limit_is_not_stored<D: Datalet>(make: impl Fn(Limits) -> D) {
    let limits = Limits {
        item_size_max: 1024,
        ..Limits::default()
    };
    let d = make(limits);
    let big = "x".repeat(600);
    apply(&d, "k", set(&big), 1).await;
    let m = store(StoreMode::Append, &big, 0, Expiry::Never);
    assert_eq!(apply(&d, "k", m, 2).await, Outcome::NotStored);
    assert_eq!(value(&d, "k").await, Some(key(&big)));
}

pub async fn cas_stores_only_on_a_matching_unique<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let cas = |unique, s| store(StoreMode::Cas(unique), s, 0, Expiry::Never);
    assert_eq!(apply(&d, "k", cas(1, "a"), 1).await, Outcome::NotFound);
    apply(&d, "k", set("a"), 7).await;
    let unique = d.get(b"k", NOW).await.unwrap().unwrap().version.cas();
    assert_eq!(unique, v(7).cas());
    assert_eq!(
        apply(&d, "k", cas(unique + 1, "b"), 8).await,
        Outcome::Exists
    );
    assert_eq!(apply(&d, "k", cas(0, "b"), 9).await, Outcome::Exists);
    assert_eq!(apply(&d, "k", cas(unique, "c"), 10).await, Outcome::Stored);
    assert_eq!(value(&d, "k").await, Some(key("c")));
    assert_eq!(apply(&d, "k", cas(unique, "d"), 11).await, Outcome::Exists);
}

pub async fn delete_removes<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    assert_eq!(apply(&d, "k", Mutation::Delete, 1).await, Outcome::NotFound);
    apply(&d, "k", set("a"), 2).await;
    let before = stats_once(&d, |s| s.curr_items == 1).await.bytes;
    assert_eq!(apply(&d, "k", Mutation::Delete, 3).await, Outcome::Deleted);
    assert_eq!(value(&d, "k").await, None);
    assert_eq!(apply(&d, "k", Mutation::Delete, 4).await, Outcome::NotFound);
    let after = stats_once(&d, |s| s.bytes < before && s.curr_items == 0).await;
    assert!(after.bytes < before, "a delete frees memory");
    assert_eq!(after.curr_items, 0);
}

pub async fn incr_and_decr_follow_memcached<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    assert_eq!(
        apply(&d, "n", Mutation::Incr(1), 1).await,
        Outcome::NotFound
    );
    let m = store(StoreMode::Set, "10", 7, Expiry::Never);
    apply(&d, "n", m, 2).await;
    assert_eq!(
        apply(&d, "n", Mutation::Decr(1), 3).await,
        Outcome::Number(9)
    );
    // memcached rewrites a shorter result in place, padded with spaces.
    assert_eq!(value(&d, "n").await, Some(key("9 ")));
    assert_eq!(
        apply(&d, "n", Mutation::Incr(991), 4).await,
        Outcome::Number(1000)
    );
    let item = d.get(b"n", NOW).await.unwrap().unwrap();
    assert_eq!(
        (item.value, item.flags, item.version),
        (key("1000"), 7, v(4))
    );
    assert_eq!(
        apply(&d, "n", Mutation::Decr(5000), 5).await,
        Outcome::Number(0)
    );
    apply(&d, "n", set("18446744073709551615"), 6).await;
    assert_eq!(
        apply(&d, "n", Mutation::Incr(2), 7).await,
        Outcome::Number(1)
    );
    apply(&d, "n", set("12abc"), 8).await;
    assert_eq!(
        apply(&d, "n", Mutation::Incr(1), 9).await,
        Outcome::NonNumeric
    );
    apply(&d, "n", set(""), 10).await;
    assert_eq!(
        apply(&d, "n", Mutation::Decr(1), 11).await,
        Outcome::NonNumeric
    );
}

pub async fn touch_changes_expiry_and_keeps_version<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let touch = |expiry| Mutation::Touch { expiry };
    assert_eq!(
        apply(&d, "k", touch(Expiry::Never), 1).await,
        Outcome::NotFound
    );
    apply(&d, "k", set("a"), 2).await;
    let Outcome::Touched(item) = apply(&d, "k", touch(Expiry::At(NOW + 5)), 3).await else {
        panic!("touch of a present key must report the item");
    };
    assert_eq!((item.expiry, item.version), (Expiry::At(NOW + 5), v(2)));
    assert!(d.get(b"k", NOW + 4).await.unwrap().is_some());
    assert_eq!(d.get(b"k", NOW + 5).await, Ok(None));
}

pub async fn items_expire_at_their_second<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let m = store(StoreMode::Set, "a", 0, Expiry::At(NOW + 10));
    apply(&d, "k", m, 1).await;
    assert!(d.get(b"k", NOW + 9).await.unwrap().is_some());
    assert_eq!(d.get(b"k", NOW + 10).await, Ok(None));
    // An expired item is absent for every command, not only for reads.
    let add = store(StoreMode::Add, "b", 0, Expiry::Never);
    assert_eq!(
        d.apply(&key("k"), add, v(2), NOW + 10).await,
        Ok(Outcome::Stored)
    );
    let m = store(StoreMode::Set, "gone", 0, Expiry::At(0));
    apply(&d, "old", m, 3).await;
    assert_eq!(
        value(&d, "old").await,
        None,
        "a past expiry is expired at once"
    );
    let incr = d.apply(&key("old"), Mutation::Incr(1), v(4), NOW).await;
    assert_eq!(incr, Ok(Outcome::NotFound));
}

pub async fn flush_all_now_and_delayed<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    apply(&d, "a", set("1"), 1).await;
    d.flush_all(NOW - 1, NOW, FLUSH_VERSION).await.unwrap();
    assert_eq!(value(&d, "a").await, None);
    let stats = stats_once(&d, |s| s.bytes == 0).await;
    assert_eq!(stats.bytes, 0, "a flush frees memory");
    apply(&d, "after", set("2"), 2).await;
    assert!(
        value(&d, "after").await.is_some(),
        "stored after the flush point"
    );

    // A flush point of this very second also hides what is stored during it.
    d.flush_all(NOW, NOW, FLUSH_VERSION).await.unwrap();
    assert_eq!(value(&d, "after").await, None);
    apply(&d, "same_second", set("3"), 3).await;
    assert_eq!(value(&d, "same_second").await, None);
    d.apply(&key("next_second"), set("4"), v(4), NOW + 1)
        .await
        .unwrap();
    assert!(d.get(b"next_second", NOW + 1).await.unwrap().is_some());

    // A delayed flush point hides items stored up to and during its second, once reached.
    d.apply(&key("b"), set("5"), v(5), NOW + 1).await.unwrap();
    d.flush_all(NOW + 10, NOW + 1, FLUSH_VERSION).await.unwrap();
    assert!(d.get(b"b", NOW + 9).await.unwrap().is_some());
    d.apply(&key("c"), set("6"), v(6), NOW + 10).await.unwrap();
    d.apply(&key("e"), set("7"), v(7), NOW + 11).await.unwrap();
    assert_eq!(
        d.get(b"b", NOW + 10).await,
        Ok(None),
        "stored before the flush point"
    );
    assert_eq!(
        d.get(b"c", NOW + 11).await,
        Ok(None),
        "stored in the flush point's second"
    );
    assert!(
        d.get(b"e", NOW + 11).await.unwrap().is_some(),
        "stored after it"
    );

    // A flush replaces a pending delayed one.
    d.apply(&key("f"), set("8"), v(8), NOW + 12).await.unwrap();
    d.flush_all(NOW + 30, NOW + 12, FLUSH_VERSION)
        .await
        .unwrap();
    d.flush_all(NOW + 12, NOW + 13, FLUSH_VERSION)
        .await
        .unwrap();
    assert_eq!(d.get(b"f", NOW + 13).await, Ok(None));
    d.apply(&key("g"), set("9"), v(9), NOW + 14).await.unwrap();
    let g = d.get(b"g", NOW + 40).await.unwrap();
    assert!(g.is_some(), "the replaced delayed flush never happens");
}

/// Stores 64,000-byte values until the store is full: 8 MiB, the least memcached takes.
const VALUE_BYTES: usize = 64_000;
const MEMORY_LIMIT_BYTES: usize = 8 << 20;

/// Stores `value` under `{prefix}{n}`, `{prefix}{n+1}`... from `n` at `now` until the store
/// refuses for memory; returns how many keys were stored.
async fn fill<D: Datalet>(d: &D, prefix: &str, m: &Mutation, now: UnixSecs) -> u64 {
    let mut n = 0;
    loop {
        let k = key(&format!("{prefix}{n}"));
        match d.apply(&k, m.clone(), v(n + 1), now).await {
            Ok(Outcome::Stored) => n += 1,
            Err(DataletError::OutOfMemory) => return n,
            other => panic!("storing {k:?}: unexpected {other:?}"),
        }
        assert!(n < 1000, "the memory limit is never enforced");
    }
}

/// A full store refuses with `OutOfMemory` and evicts nothing; shrinking and deleting work
/// when full and make room; raising the limit makes room. Some of the limit goes to overhead
/// (memcached loses about a tenth to its slab classes), so three quarters must fit.
pub async fn memory_limit_refuses_and_keeps_what_is_stored<D: Datalet>(make: impl Fn(Limits) -> D) {
    let limits = Limits {
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
        ..Limits::default()
    };
    let d = make(limits);
    let big = "v".repeat(VALUE_BYTES);
    let stored = fill(&d, "key", &set(&big), NOW).await;
    let fitting = MEMORY_LIMIT_BYTES as u64 / VALUE_BYTES as u64;
    assert!(
        stored * 4 >= fitting * 3,
        "only {stored} of {fitting} values fit in the limit"
    );
    for i in 0..stored {
        let k = format!("key{i}");
        assert_eq!(value(&d, &k).await, Some(key(&big)), "{k} was evicted");
    }
    assert!(d.stats().bytes <= MEMORY_LIMIT_BYTES as u64);
    // Shrinking and deleting always work when full, and make room again.
    assert_eq!(apply(&d, "key0", set("small"), 5000).await, Outcome::Stored);
    assert_eq!(
        apply(&d, "key1", Mutation::Delete, 5001).await,
        Outcome::Deleted
    );
    assert_eq!(apply(&d, "new", set(&big), 5002).await, Outcome::Stored);
    // Full again, until the limit is raised.
    fill(&d, "again", &set(&big), NOW).await;
    d.set_memory_limit(2 * MEMORY_LIMIT_BYTES);
    assert_eq!(d.stats().limit_maxbytes, 2 * MEMORY_LIMIT_BYTES as u64);
    assert_eq!(apply(&d, "more", set(&big), 5003).await, Outcome::Stored);
}

/// A full store reclaims expired items to make room for a new one. The items expire by the
/// wall clock and the new one is retried, as time passes, until the store takes it: a remote
/// store reclaims by its own clock, which no caller's `now` can move. A store that reclaims by
/// the caller's clock takes it at once.
pub async fn expired_items_are_reclaimed_to_make_room<D: Datalet>(make: impl Fn(Limits) -> D) {
    let limits = Limits {
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
        ..Limits::default()
    };
    let d = make(limits);
    let big = "v".repeat(VALUE_BYTES);
    let start = SystemClock.now();
    let short = store(StoreMode::Set, &big, 0, Expiry::At(start + 1));
    assert!(fill(&d, "t", &short, start).await > 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = SystemClock.now().max(start + 1);
        match d.apply(&key("fresh"), set(&big), v(1000), now).await {
            Ok(Outcome::Stored) => break,
            Err(DataletError::OutOfMemory) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expired items must make room, got {other:?}"),
        }
    }
}

pub async fn mutations_of_one_key_never_interleave<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = Arc::new(make(Limits::default()));
    apply(&*d, "n", set("0"), 1).await;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let n = key("n");
                for i in 0..250 {
                    let outcome = d.apply(&n, Mutation::Incr(1), v(2 + t * 1000 + i), NOW);
                    assert!(matches!(outcome.await, Ok(Outcome::Number(_))));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(value(&*d, "n").await, Some(key("1000")));
}

fn item(value: &str, flags: u32, expiry: Expiry, ts: u64) -> Item {
    Item {
        value: key(value),
        flags,
        expiry,
        version: v(ts),
        marks: Marks::default(),
    }
}

/// What a scan at `now` returns, by key; a key returned twice fails.
async fn scanned<D: Datalet>(d: &D, now: UnixSecs) -> BTreeMap<Bytes, Item> {
    let items = d.scan(now).await.expect("scan");
    let n = items.len();
    let by_key: BTreeMap<Bytes, Item> = items.into_iter().collect();
    assert_eq!(by_key.len(), n, "a scan returned a key twice");
    by_key
}

fn items(list: &[(&str, Item)]) -> BTreeMap<Bytes, Item> {
    list.iter().map(|(k, i)| (key(k), i.clone())).collect()
}

/// A scan returns the live items as `get` sees them, value, flags, expiry and version: not
/// deleted, expired or flushed ones.
pub async fn scan_returns_exactly_the_live_items<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    assert_eq!(
        scanned(&d, NOW).await,
        BTreeMap::new(),
        "a new store is empty"
    );
    let m = store(StoreMode::Set, "1", 7, Expiry::At(NOW + 100));
    apply(&d, "a", m, 1).await;
    apply(&d, "b", set("2"), 2).await;
    apply(&d, "deleted", set("3"), 3).await;
    apply(&d, "deleted", Mutation::Delete, 4).await;
    let m = store(StoreMode::Set, "4", 1, Expiry::At(NOW + 5));
    apply(&d, "short", m, 5).await;
    let m = store(StoreMode::Set, "5", 0, Expiry::At(0));
    apply(&d, "past", m, 6).await;
    apply(&d, "n", set("10"), 7).await;
    apply(&d, "n", Mutation::Incr(5), 8).await;
    apply(&d, "t", set("x"), 9).await;
    let touch = Mutation::Touch {
        expiry: Expiry::At(NOW + 50),
    };
    apply(&d, "t", touch, 10).await;
    let mut expected = items(&[
        ("a", item("1", 7, Expiry::At(NOW + 100), 1)),
        ("b", item("2", 0, Expiry::Never, 2)),
        ("short", item("4", 1, Expiry::At(NOW + 5), 5)),
        ("n", item("15", 0, Expiry::Never, 8)),
        ("t", item("x", 0, Expiry::At(NOW + 50), 9)),
    ]);
    assert_eq!(scanned(&d, NOW).await, expected);
    for (k, i) in &expected {
        let got = d.get(k, NOW).await.unwrap();
        assert_eq!(got.as_ref(), Some(i), "get and scan disagree on {k:?}");
    }
    expected.remove(&key("short"));
    assert_eq!(
        scanned(&d, NOW + 5).await,
        expected,
        "an item expires at its second"
    );

    // A flush hides everything stored up to it, and what is stored after shows.
    d.flush_all(NOW, NOW, FLUSH_VERSION).await.unwrap();
    assert_eq!(scanned(&d, NOW).await, BTreeMap::new());
    d.apply(&key("after"), set("6"), v(11), NOW + 1)
        .await
        .unwrap();
    let after = items(&[("after", item("6", 0, Expiry::Never, 11))]);
    assert_eq!(scanned(&d, NOW + 1).await, after);

    // A delayed flush point hides them once reached, as for `get`.
    d.flush_all(NOW + 10, NOW + 1, FLUSH_VERSION).await.unwrap();
    assert_eq!(scanned(&d, NOW + 9).await, after);
    assert_eq!(scanned(&d, NOW + 10).await, BTreeMap::new());
}

/// Keys a client can send: any bytes but space, NUL and `\n`, at most 250 of them. memcached
/// stores keys with control characters (memcaslap's all start with `\x10`), so every backend
/// must keep them as they are: stored, read, changed, deleted and listed by a scan.
pub async fn keys_of_any_bytes_a_client_can_send_are_kept<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    let long = [0x10u8; 250];
    let keys: [&[u8]; 9] = [
        b"\x10\x10\x10\x10\x10\x10\x10\x10QHYg2vgu",
        b"a\x01b",
        b"tab\there",
        b"\x7f",
        b"high\x80\xff",
        b"cr\rinside",
        b"ends_in_cr\r",
        b"\x1b[0m\x0b\x0c",
        &long,
    ];
    for (i, k) in keys.iter().enumerate() {
        let k = Bytes::copy_from_slice(k);
        let ts = 10 * i as u64;
        let m = store(StoreMode::Set, "10", 3, Expiry::Never);
        assert_eq!(
            d.apply(&k, m, v(ts + 1), NOW).await,
            Ok(Outcome::Stored),
            "{k:?}"
        );
        let incr = d.apply(&k, Mutation::Incr(5), v(ts + 2), NOW).await;
        assert_eq!(incr, Ok(Outcome::Number(15)), "incr {k:?}");
        let item = d.get(&k, NOW).await.unwrap();
        assert_eq!(
            item.map(|i| (i.value, i.flags)),
            Some((key("15"), 3)),
            "{k:?}"
        );
    }
    let listed: Vec<Bytes> = scanned(&d, NOW).await.into_keys().collect();
    let mut expected: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "the scan lists every key as it was stored"
    );
    for (i, k) in keys.iter().enumerate() {
        let k = Bytes::copy_from_slice(k);
        let deleted = d
            .apply(&k, Mutation::Delete, v(10 * i as u64 + 3), NOW)
            .await;
        assert_eq!(deleted, Ok(Outcome::Deleted), "delete {k:?}");
        assert_eq!(d.get(&k, NOW).await, Ok(None), "{k:?} after delete");
    }
}

/// Items written a few at a time from several tasks, so a batching store batches them.
const MANY_ITEMS: u64 = 2_000;

/// A scan of many items misses none and repeats none.
pub async fn scan_returns_every_one_of_many_items<D: Datalet>(make: impl Fn(Limits) -> D) {
    const TASKS: u64 = 8;
    let d = Arc::new(make(Limits::default()));
    let many = |i: u64| (format!("many{i}"), format!("value{i}"));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                for i in (t..MANY_ITEMS).step_by(TASKS as usize) {
                    let (k, value) = many(i);
                    let m = store(StoreMode::Set, &value, i as u32, Expiry::Never);
                    assert_eq!(apply(&*d, &k, m, i + 1).await, Outcome::Stored);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let got = scanned(&*d, NOW).await;
    assert_eq!(got.len() as u64, MANY_ITEMS, "items missing from the scan");
    for i in 0..MANY_ITEMS {
        let (k, value) = many(i);
        let expected = item(&value, i as u32, Expiry::Never, i + 1);
        assert_eq!(got.get(&key(&k)), Some(&expected), "{k}");
    }
}

/// A snapshot holds the live items as they were when it was taken, whatever is applied while
/// it is read, and hands them out in parts no larger than asked (but for one larger item,
/// which comes alone).
pub async fn a_snapshot_is_the_state_when_taken_read_in_bounded_parts<D: Datalet>(
    make: impl Fn(Limits) -> D,
) {
    let d = make(Limits::default());
    let value = "v".repeat(1000);
    for i in 0..50u64 {
        let m = store(StoreMode::Set, &value, i as u32, Expiry::Never);
        apply(&d, &format!("snap{i}"), m, i + 1).await;
    }
    let large = "L".repeat(10_000);
    apply(&d, "large", set(&large), 51).await;
    apply(
        &d,
        "expired",
        store(StoreMode::Set, "x", 0, Expiry::At(NOW - 1)),
        52,
    )
    .await;
    let before = scanned(&d, NOW).await;
    assert_eq!(before.len(), 51);

    let mut snapshot = d.snapshot(NOW).await.expect("snapshot");
    // Changes after the snapshot was taken: none of them is in it.
    apply(&d, "snap0", set("changed"), 60).await;
    apply(&d, "snap1", Mutation::Delete, 61).await;
    apply(&d, "late", set("late"), 62).await;

    const PART: usize = 4096;
    let mut got = BTreeMap::new();
    let mut parts = 0;
    loop {
        let part = snapshot.next_part(PART).expect("part");
        if part.is_empty() {
            break;
        }
        parts += 1;
        let bytes: usize = part.iter().map(|(k, i)| crate::part_bytes(k, i)).sum();
        assert!(
            bytes <= PART || part.len() == 1,
            "a part of {} items holds {bytes} bytes",
            part.len()
        );
        for (k, item) in part {
            assert!(got.insert(k.clone(), item).is_none(), "{k:?} came twice");
        }
    }
    assert_eq!(got, before, "the snapshot is the state when it was taken");
    assert!(
        parts >= 13,
        "{parts} parts: 51 KB in parts of 4 KiB takes at least 13"
    );
}

/// A reset leaves nothing to read, scan or count, and keeps the clock reservation.
pub async fn reset_empties_the_store_and_keeps_the_clock<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        apply(&d, k, set(k), i as u64 + 1).await;
    }
    stats_once(&d, |s| s.curr_items == 3).await;
    d.reset().await.unwrap();
    for k in ["a", "b", "c"] {
        assert_eq!(d.get(k.as_bytes(), NOW).await, Ok(None), "{k} survived");
    }
    assert_eq!(scanned(&d, NOW).await, BTreeMap::new());
    let stats = stats_once(&d, |s| s.curr_items == 0 && s.bytes == 0).await;
    assert_eq!((stats.curr_items, stats.bytes), (0, 0), "{stats:?}");

    // The clock reservation survives, once the reset state is confirmed with a
    // `save_clock` (until then a durable store reports no position), and a reset of an
    // empty store is no different.
    d.save_clock(5_000).await.unwrap();
    let clock = d.load_clock().await.unwrap();
    apply(&d, "d", set("d"), 4).await;
    d.reset().await.unwrap();
    assert_eq!(d.get(b"d", NOW).await, Ok(None));
    let unconfirmed = d.load_clock().await.unwrap();
    assert!(
        unconfirmed == 0 || unconfirmed == clock,
        "a reset store reports {unconfirmed}: neither no position nor the clock {clock}"
    );
    d.save_clock(0).await.unwrap();
    assert_eq!(d.load_clock().await, Ok(clock), "a reset lost the clock");
    d.reset().await.unwrap();
    d.save_clock(0).await.unwrap();
    assert_eq!(d.load_clock().await, Ok(clock));
    assert_eq!(scanned(&d, NOW).await, BTreeMap::new());
}

/// After a reset the store serves writes as a fresh one: keys are absent to every command,
/// and a flush point pending before the reset is gone.
pub async fn items_written_after_a_reset_are_served<D: Datalet>(make: impl Fn(Limits) -> D) {
    let d = make(Limits::default());
    apply(&d, "a", set("old"), 1).await;
    apply(&d, "n", set("41"), 2).await;
    d.flush_all(NOW + 10, NOW, FLUSH_VERSION).await.unwrap();
    d.reset().await.unwrap();

    let add = store(StoreMode::Add, "new", 3, Expiry::Never);
    assert_eq!(apply(&d, "a", add, 3).await, Outcome::Stored);
    let replace = store(StoreMode::Replace, "x", 0, Expiry::Never);
    assert_eq!(apply(&d, "n", replace, 4).await, Outcome::NotStored);
    assert_eq!(
        apply(&d, "n", Mutation::Incr(1), 5).await,
        Outcome::NotFound
    );
    apply(&d, "n", set("7"), 6).await;
    assert_eq!(
        apply(&d, "n", Mutation::Incr(1), 7).await,
        Outcome::Number(8)
    );
    d.apply(&key("c"), set("c"), v(8), NOW + 10).await.unwrap();

    // Stored before and at the forgotten flush point, and still there after it.
    for now in [NOW, NOW + 11] {
        let a = d.get(b"a", now).await.unwrap();
        assert_eq!(a, Some(item("new", 3, Expiry::Never, 3)), "at {now}");
    }
    let expected = items(&[
        ("a", item("new", 3, Expiry::Never, 3)),
        ("n", item("8", 0, Expiry::Never, 7)),
        ("c", item("c", 0, Expiry::Never, 8)),
    ]);
    assert_eq!(scanned(&d, NOW + 11).await, expected);
    let stats = stats_once(&d, |s| s.curr_items == 3).await;
    assert_eq!(stats.curr_items, 3);
}

/// `apply_batch` gives each operation the outcome `apply` one after another would, in order,
/// and leaves the same items: a few operations on two keys whose results depend on their
/// order, then 2,000 on 50 keys (more than one disk commit takes).
pub async fn a_batch_applies_in_order_with_each_outcome<D: Datalet>(make: impl Fn(Limits) -> D) {
    let small = vec![
        ("a", set("1")),
        ("a", store(StoreMode::Append, "2", 0, Expiry::Never)),
        ("a", store(StoreMode::Add, "x", 0, Expiry::Never)),
        ("n", Mutation::Incr(1)),
        ("n", set("5")),
        ("n", Mutation::Incr(3)),
        ("b", Mutation::Delete),
        ("a", store(StoreMode::Prepend, "0", 0, Expiry::Never)),
    ];
    let large: Vec<(String, Mutation)> = (0..2000)
        .map(|i| {
            let k = format!("k{}", i % 50);
            let m = match i % 4 {
                0 => set(&format!("{i}")),
                1 => store(StoreMode::Append, "+", 0, Expiry::Never),
                2 => Mutation::Incr(1),
                _ => store(StoreMode::Add, "never", 0, Expiry::Never),
            };
            (k, m)
        })
        .collect();
    let small: Vec<(String, Mutation)> =
        small.into_iter().map(|(k, m)| (k.to_string(), m)).collect();
    for ops in [small, large] {
        let one_by_one = make(Limits::default());
        let mut expected = Vec::new();
        for (i, (k, m)) in ops.iter().enumerate() {
            expected.push(
                one_by_one
                    .apply(&key(k), m.clone(), v(i as u64 + 1), NOW)
                    .await,
            );
        }
        let batched = make(Limits::default());
        let batch = ops
            .iter()
            .enumerate()
            .map(|(i, (k, m))| BatchOp {
                key: key(k),
                mutation: m.clone(),
                version: v(i as u64 + 1),
                now: NOW,
            })
            .collect();
        let outcomes = batched.apply_batch(batch).await;
        assert_eq!(
            outcomes, expected,
            "the outcomes differ from one-by-one application"
        );
        let keys: std::collections::BTreeSet<&String> = ops.iter().map(|(k, _)| k).collect();
        for k in keys {
            let want = one_by_one.get(k.as_bytes(), NOW).await.unwrap();
            assert_eq!(batched.get(k.as_bytes(), NOW).await.unwrap(), want, "{k}");
        }
    }
}
