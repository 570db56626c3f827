use std::sync::Arc;

use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, NodeId};

use super::*;
use crate::mutate::item_bytes;
use crate::{Guarded, Marks};

fn open_temp(limits: Limits) -> Guarded<DiskDatalet> {
    let dir = tempfile::tempdir().expect("temp dir");
    let datalet = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).expect("open");
    Guarded::new(datalet, dir)
}

crate::conformance_tests!(open_temp);

const NOW: UnixSecs = 1_700_000_000;
/// The version a test's `flush_all` is applied at.
const FLUSH_VERSION: tailorkv_common::Version = tailorkv_common::Version::new(1, NodeId(0));

fn set(value: &[u8], flags: u32, expiry: Expiry) -> Mutation {
    Mutation::Store {
        mode: StoreMode::Set,
        flags,
        expiry,
        value: Bytes::copy_from_slice(value),
    }
}

#[tokio::test]
async fn a_reopened_store_has_every_item_its_version_expiry_flush_point_and_clock() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    {
        let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
        let keep = set(b"kept", 7, Expiry::At(NOW + 100));
        d.apply(
            &Bytes::from_static(b"a"),
            keep,
            Version::new(10, NodeId(2)),
            NOW,
        )
        .await
        .unwrap();
        let short = set(b"short", 0, Expiry::At(NOW + 5));
        d.apply(
            &Bytes::from_static(b"b"),
            short,
            Version::new(11, NodeId(2)),
            NOW,
        )
        .await
        .unwrap();
        d.save_clock(5_000).await.unwrap();
        d.flush_all(NOW + 50, NOW, FLUSH_VERSION).await.unwrap();
    }
    let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
    let a = d.get(b"a", NOW).await.unwrap().expect("a survives");
    assert_eq!(
        (a.value, a.flags, a.expiry, a.version),
        (
            Bytes::from_static(b"kept"),
            7,
            Expiry::At(NOW + 100),
            Version::new(10, NodeId(2))
        )
    );
    assert!(d.get(b"b", NOW + 4).await.unwrap().is_some());
    assert_eq!(d.get(b"b", NOW + 5).await.unwrap(), None, "expiry survives");
    assert_eq!(
        d.get(b"a", NOW + 50).await.unwrap(),
        None,
        "the flush point survives"
    );
    assert_eq!(d.load_clock().await.unwrap(), 5_000);
    assert!(d.stats().bytes > 0, "byte accounting survives");
}

#[tokio::test]
async fn a_reset_is_durable_and_the_clock_outlives_it() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let key = Bytes::from_static(b"a");
    {
        let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
        let m = set(b"gone", 1, Expiry::Never);
        d.apply(&key, m, Version::new(10, NodeId(2)), NOW)
            .await
            .unwrap();
        d.save_clock(7_000).await.unwrap();
        d.flush_all(NOW + 50, NOW, FLUSH_VERSION).await.unwrap();
        d.reset().await.unwrap();
        let m = set(b"after", 2, Expiry::Never);
        d.apply(
            &Bytes::from_static(b"b"),
            m,
            Version::new(11, NodeId(2)),
            NOW,
        )
        .await
        .unwrap();
    }
    let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
    assert_eq!(d.get(b"a", NOW).await.unwrap(), None, "the reset survives");
    let scanned = d.scan(NOW + 60).await.unwrap();
    let b = Item {
        value: Bytes::from_static(b"after"),
        flags: 2,
        expiry: Expiry::Never,
        version: Version::new(11, NodeId(2)),
        marks: Marks::default(),
    };
    assert_eq!(
        scanned,
        vec![(Bytes::from_static(b"b"), b)],
        "the flush point pending before the reset is gone"
    );
    assert_eq!(
        d.load_clock().await.unwrap(),
        0,
        "a reset not confirmed by save_clock is no position to restart from"
    );
    d.save_clock(0).await.unwrap();
    assert_eq!(
        d.load_clock().await.unwrap(),
        7_000,
        "the clock outlives it"
    );
    let used = item_bytes(b"b", &scanned[0].1) as u64;
    assert_eq!(d.stats().bytes, used, "byte accounting restarts from zero");
}

/// The clock never trails what the store holds: every commit raises it to the versions of
/// the mutations and flushes it applied, deletes and refused writes included, in the same
/// transaction, so it survives a crash with them.
#[tokio::test]
async fn the_clock_covers_every_applied_version_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    {
        let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
        let key = Bytes::from_static(b"k");
        d.apply(
            &key,
            set(b"v", 0, Expiry::Never),
            Version::new(40, NodeId(0)),
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(d.load_clock().await.unwrap(), 40);
        d.apply(&key, Mutation::Delete, Version::new(41, NodeId(0)), NOW)
            .await
            .unwrap();
        assert_eq!(d.load_clock().await.unwrap(), 41, "a delete counts");
        let missing = Bytes::from_static(b"missing");
        d.apply(
            &missing,
            Mutation::Incr(1),
            Version::new(42, NodeId(0)),
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(
            d.load_clock().await.unwrap(),
            42,
            "an incr of nothing counts"
        );
        d.flush_all(NOW, NOW, Version::new(43, NodeId(0)))
            .await
            .unwrap();
        assert_eq!(d.load_clock().await.unwrap(), 43, "a flush counts");
    }
    let d = DiskDatalet::open(dir.path(), limits, DiskOptions::default()).unwrap();
    assert_eq!(d.load_clock().await.unwrap(), 43);
}

#[tokio::test]
async fn concurrent_writes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let d =
        Arc::new(DiskDatalet::open(dir.path(), Limits::default(), DiskOptions::default()).unwrap());
    let writes = 400;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let key = Bytes::from(format!("k{i}"));
                let m = set(b"v", 0, Expiry::Never);
                d.apply(&key, m, Version::new(i + 1, NodeId(0)), NOW).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(Outcome::Stored));
    }
    let commits = d.commits();
    assert!(
        commits * 4 <= writes,
        "{writes} concurrent writes took {commits} commits"
    );
    assert_eq!(d.stats().curr_items, writes);
}

#[tokio::test]
async fn max_batch_one_is_one_fsync_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        max_batch: 1,
        ..DiskOptions::default()
    };
    let d = Arc::new(DiskDatalet::open(dir.path(), Limits::default(), options).unwrap());
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let key = Bytes::from(format!("k{i}"));
                d.apply(
                    &key,
                    set(b"v", 0, Expiry::Never),
                    Version::new(i + 1, NodeId(0)),
                    NOW,
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(d.commits(), 50);
}

#[tokio::test]
async fn disk_use_stays_bounded_under_overwrites_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let d =
        Arc::new(DiskDatalet::open(dir.path(), Limits::default(), DiskOptions::default()).unwrap());
    let mut sizes = Vec::new();
    for round in 0..30u64 {
        // Each round's writes go concurrently, so they share commits as clients' would.
        let tasks: Vec<_> = (0..300u64)
            .map(|k| {
                let d = Arc::clone(&d);
                tokio::spawn(async move {
                    let key = Bytes::from(format!("key{k}"));
                    let m = if round % 3 == 2 {
                        Mutation::Delete
                    } else {
                        set(&[b'x'; 1000], 0, Expiry::Never)
                    };
                    d.apply(&key, m, Version::new(round * 1000 + k + 1, NodeId(0)), NOW)
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        sizes.push(std::fs::metadata(d.path()).unwrap().len());
    }
    let live = 300 * 1000;
    let largest = *sizes.iter().max().unwrap();
    // 9,000 writes of 1 kB each went through; the file must track the ~300 kB live, not them.
    assert!(
        largest < 20 * live,
        "file grew to {largest} bytes: {sizes:?}"
    );
    let (early, late) = (sizes[5], sizes[29]);
    assert!(late <= early * 2, "file keeps growing: {sizes:?}");
}

#[tokio::test]
async fn a_new_flush_point_does_not_bring_back_what_a_due_one_hid() {
    let d = open_temp(Limits::default());
    let v = Version::new(1, NodeId(0));
    d.apply(
        &Bytes::from_static(b"a"),
        set(b"1", 0, Expiry::Never),
        v,
        NOW,
    )
    .await
    .unwrap();
    d.flush_all(NOW + 5, NOW, v).await.unwrap();
    assert_eq!(d.get(b"a", NOW + 6).await.unwrap(), None);
    d.flush_all(NOW + 100, NOW + 6, v).await.unwrap();
    assert_eq!(d.get(b"a", NOW + 7).await.unwrap(), None, "it came back");
}

#[tokio::test]
async fn reclaim_removes_what_is_dead() {
    let d = open_temp(Limits::default());
    let v = Version::new(1, NodeId(0));
    for i in 0..10u8 {
        let m = set(b"x", 0, Expiry::At(NOW + 10));
        d.apply(&Bytes::from(vec![b'k', i]), m, v, NOW)
            .await
            .unwrap();
    }
    assert_eq!(d.reclaim(NOW + 9).await, 0);
    assert_eq!(d.reclaim(NOW + 10).await, 10);
    assert_eq!(d.stats().bytes, 0);
}

/// Reads share one read transaction between commits, and never one from before a write they
/// follow: while other tasks keep reading (keeping a transaction cached), each write is read
/// back at once, 2,000 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_a_write_sees_it_while_others_share_a_read_transaction() {
    read_after_write(DiskOptions::default()).await;
}

/// The same with a checkpoint every 50 keys (the next 50 wait for it), so that one is nearly
/// always under way on its own thread: a read finds each write in the overlay, its frozen
/// part, or the B-tree, never in none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_a_write_sees_it_while_checkpoints_run() {
    let options = DiskOptions {
        checkpoint_keys: 50,
        ..DiskOptions::default()
    };
    read_after_write(options).await;
}

async fn read_after_write(options: DiskOptions) {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = DiskDatalet::open(dir.path(), Limits::default(), options).expect("open");
    let d = Arc::new(Guarded::new(d, dir));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..3 {
        let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = d.get(format!("other{r}").as_bytes(), 1).await.unwrap();
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    // Each round overwrites `k` and adds a key `f<i>` (filling the overlay, so checkpoints
    // come), then reads back `k` and the key added 40 rounds before.
    let key = Bytes::from_static(b"k");
    for i in 1..=2000u64 {
        let value = i.to_string();
        let filler = Bytes::from(format!("f{i}"));
        for (n, key) in [(2 * i, &key), (2 * i + 1, &filler)] {
            let version = Version::new(n, NodeId(1));
            d.apply(key, set(value.as_bytes(), 0, Expiry::Never), version, 1)
                .await
                .unwrap();
        }
        let got = d.get(&key, 1).await.unwrap().map(|item| item.value);
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "write {i} not read back"
        );
        if let Some(earlier) = i.checked_sub(40).filter(|&e| e > 0) {
            let got = d.get(format!("f{earlier}").as_bytes(), 1).await.unwrap();
            assert_eq!(
                got.map(|item| item.value).as_deref(),
                Some(earlier.to_string().as_bytes()),
                "key f{earlier} not read back in round {i}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads > 0, "the other readers never read");
}

/// Options that never checkpoint on their own: what is written stays in the log.
fn log_only() -> DiskOptions {
    DiskOptions {
        checkpoint_keys: usize::MAX,
        checkpoint_every: std::time::Duration::from_secs(3600),
        ..DiskOptions::default()
    }
}

/// What a store holds, as a test compares it across a restart.
async fn contents(d: &DiskDatalet) -> (Vec<(Bytes, Item)>, Ts, DataletStats) {
    let mut items = d.scan(NOW).await.unwrap();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    (items, d.load_clock().await.unwrap(), d.stats())
}

/// Writes that reached only the log (no checkpoint since) are all there after a crash, with
/// their versions, flags and expiry, the removals too, and the clock and the byte count; a
/// record torn by the crash is cut off and the store opens.
#[tokio::test]
async fn acknowledged_writes_only_in_the_log_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let d = DiskDatalet::open(dir.path(), limits, log_only()).unwrap();
    for i in 0..200u64 {
        let key = Bytes::from(format!("k{}", i % 50));
        let m = match i % 7 {
            6 => Mutation::Delete,
            _ => set(format!("v{i}").as_bytes(), i as u32, Expiry::At(NOW + i)),
        };
        d.apply(&key, m, Version::new(i + 1, NodeId(3)), NOW)
            .await
            .unwrap();
    }
    d.save_clock(5_000).await.unwrap();
    let before = contents(&d).await;
    assert!(before.0.len() > 30, "{} items", before.0.len());
    assert!(d.log_bytes() > 0, "nothing logged");
    assert_eq!(
        d.commits(),
        201,
        "a batch per awaited write, and the clock save"
    );
    d.crash();
    // A crash in the middle of the next append leaves a torn record behind.
    let log = dir.path().join(wal::FILE_NAMES[0]);
    let mut torn = std::fs::read(&log).unwrap();
    let whole = wal::decode_all(&torn).1;
    torn[whole..whole + 7].copy_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&log, &torn).unwrap();

    let d = DiskDatalet::open(dir.path(), limits, log_only()).unwrap();
    let after = contents(&d).await;
    assert_eq!(after.0, before.0, "items");
    assert_eq!(after.1, 5_000, "clock");
    assert_eq!(after.2.curr_items, before.2.curr_items);
    assert_eq!(after.2.bytes, before.2.bytes);
    assert_eq!(d.log_bytes(), 0, "opening checkpoints what it replayed");
    assert!(whole > 0);
    // And again: nothing is replayed twice or lost in the checkpoint.
    d.crash();
    let d = DiskDatalet::open(dir.path(), limits, log_only()).unwrap();
    assert_eq!(contents(&d).await.0, before.0);
}

/// Bytes of whole records in each of the two logs in `dir`.
fn logged(dir: &Path) -> [usize; 2] {
    wal::FILE_NAMES.map(|name| wal::decode_all(&std::fs::read(dir.join(name)).unwrap()).1)
}

/// Crashes while checkpoints run on their own thread: after each of 45 restarts the store
/// holds exactly the acknowledged writes. A third of the rounds run free (a checkpoint every
/// 10 keys), so crashes come before a checkpoint's commit, after it, or after its log was
/// emptied; in the others (a checkpoint every 3 keys) the last checkpoint is held back from
/// its commit until the crash, which leaves records in both logs, the older ones in the first
/// log or (after a checkpoint that completed) in the second.
#[tokio::test]
async fn acknowledged_writes_survive_crashes_while_checkpoints_run() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let mut expected = std::collections::BTreeMap::new();
    let mut version = 0u64;
    for round in 0..45u64 {
        let options = DiskOptions {
            checkpoint_keys: if round % 3 == 0 { 10 } else { 3 },
            ..DiskOptions::default()
        };
        let d = DiskDatalet::open(dir.path(), limits, options).unwrap();
        let found: std::collections::BTreeMap<Bytes, Bytes> = d
            .scan(NOW)
            .await
            .unwrap()
            .into_iter()
            .map(|(key, item)| (key, item.value))
            .collect();
        assert_eq!(found, expected, "reopened for round {round}");
        // `n` writes: overwrites and deletes of 31 keys, or (`fresh`) sets of new keys, each
        // one more key in the overlay.
        let mut write = async |n: u64, fresh: bool| {
            for _ in 0..n {
                version += 1;
                let key = match fresh {
                    true => Bytes::from(format!("f{version}")),
                    false => Bytes::from(format!("k{}", version * 7 % 31)),
                };
                let m = if !fresh && version.is_multiple_of(5) {
                    expected.remove(&key);
                    Mutation::Delete
                } else {
                    let value = Bytes::from(format!("v{version}"));
                    expected.insert(key.clone(), value.clone());
                    set(&value, 0, Expiry::Never)
                };
                d.apply(&key, m, Version::new(version, NodeId(1)), NOW)
                    .await
                    .unwrap();
            }
        };
        let hold = |on: bool| d.shared.hold_checkpoints.store(on, Ordering::Release);
        // In the held rounds, the third key in the overlay freezes it and the next goes to
        // the other log (three more would fill the overlay again, and the writes would wait
        // for the held checkpoint).
        match round % 3 {
            0 => write(20 + round % 7, false).await,
            1 => {
                hold(true);
                write(4, true).await;
            }
            _ => {
                // One checkpoint completes (its log emptied, appends moved to the second
                // log), then the next is held.
                write(4, true).await;
                while !matches!(logged(dir.path()), [0, b] if b > 0) {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                hold(true);
                write(3, true).await;
            }
        }
        d.crash();
        if round % 3 != 0 {
            let bytes = logged(dir.path());
            assert!(
                bytes.iter().all(|&b| b > 0),
                "round {round}: a held checkpoint left records in one log only: {bytes:?}"
            );
        }
    }
}

/// A log append that fails after its record reached the disk (a failed sync) is answered
/// with an error, and the record must never be replayed: the next write, numbered the same,
/// overwrites it in the same log. Here the store falls idle right after the failure, which
/// starts a checkpoint; moving to the other log then would leave two records of one number,
/// and a crash before the checkpoint's commit would bring the failed write back and lose the
/// next one.
#[tokio::test]
async fn a_failed_append_is_never_replayed_even_across_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        checkpoint_every: std::time::Duration::from_millis(100),
        ..DiskOptions::default()
    };
    let d = DiskDatalet::open(dir.path(), Limits::default(), options).unwrap();
    let write = async |key: &'static [u8], v: u64| {
        let m = set(key, 0, Expiry::Never);
        d.apply(&Bytes::from_static(key), m, Version::new(v, NodeId(1)), NOW)
            .await
    };
    write(b"k1", 1).await.unwrap();
    d.shared.hold_checkpoints.store(true, Ordering::Release);
    d.shared.fail_next_append.store(true, Ordering::Release);
    assert!(
        write(b"k2", 2).await.is_err(),
        "the failed append was answered as done"
    );
    // Idle: a checkpoint starts (and, if in the background, is held until the crash).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    write(b"k3", 3).await.unwrap();
    d.crash();
    let d = DiskDatalet::open(dir.path(), Limits::default(), DiskOptions::default()).unwrap();
    let mut keys: Vec<Bytes> = d
        .scan(NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(keys, [&b"k1"[..], &b"k3"[..]]);
}

/// Writes that come faster than checkpoints go wait for the one under way once the overlay is
/// full again (here at 3 keys), rather than growing it without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_checkpoint_once_the_overlay_is_full_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        checkpoint_keys: 3,
        ..DiskOptions::default()
    };
    let d = Arc::new(DiskDatalet::open(dir.path(), Limits::default(), options).unwrap());
    d.shared.hold_checkpoints.store(true, Ordering::Release);
    let write = |i: u64| {
        let d = Arc::clone(&d);
        async move {
            let key = Bytes::from(format!("k{i}"));
            d.apply(
                &key,
                set(b"v", 0, Expiry::Never),
                Version::new(i, NodeId(1)),
                NOW,
            )
            .await
        }
    };
    // Three keys freeze the overlay for a checkpoint, held back; three more fill it again.
    for i in 1..=6 {
        write(i).await.unwrap();
    }
    let waiting = tokio::spawn(write(7));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let went_on = waiting.is_finished();
    // Released before asserting: a held checkpoint would keep the store from closing.
    d.shared.hold_checkpoints.store(false, Ordering::Release);
    assert!(!went_on, "a write went on past a full overlay");
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the write goes on once the checkpoint is done")
        .unwrap()
        .unwrap();
    for i in 1..=7 {
        assert!(d
            .get(format!("k{i}").as_bytes(), NOW)
            .await
            .unwrap()
            .is_some());
    }
}

/// A snapshot is one moment of the store, also while checkpoints (here every 5 keys) move
/// what is logged into the B-tree under it (and the first try of each snapshot is slowed
/// down between its two halves, to give a checkpoint the time to slip in). Write `i` adds key
/// `k<i>`, then overwrites `last` with `i`, each awaited: in any moment, `last` names the
/// newest `k` key or the one before. With checkpoints on their own thread, and made by the
/// writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn snapshots_are_one_moment_across_checkpoints() {
    snapshots_across_checkpoints(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn snapshots_are_one_moment_across_checkpoints_made_by_the_writer() {
    snapshots_across_checkpoints(false).await;
}

async fn snapshots_across_checkpoints(checkpoint_in_background: bool) {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        checkpoint_keys: 5,
        checkpoint_in_background,
        ..DiskOptions::default()
    };
    let d = DiskDatalet::open(dir.path(), Limits::default(), options).unwrap();
    d.shared.slow_snapshots.store(true, Ordering::Relaxed);
    let d = Arc::new(Guarded::new(d, dir));
    let writes = 1_000u64;
    let writer = {
        let d = Arc::clone(&d);
        tokio::spawn(async move {
            for i in 0..writes {
                for (key, value) in [
                    (format!("k{i:05}"), "v".to_string()),
                    ("last".into(), i.to_string()),
                ] {
                    let m = set(value.as_bytes(), 0, Expiry::Never);
                    d.apply(
                        &Bytes::from(key),
                        m,
                        Version::new(2 * i + 1, NodeId(1)),
                        NOW,
                    )
                    .await
                    .unwrap();
                }
            }
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    while !writer.is_finished() {
        let items = d.scan(NOW).await.unwrap();
        let added = items.iter().filter(|(k, _)| k.starts_with(b"k")).count() as u64;
        let last = items
            .iter()
            .find(|(k, _)| k.as_ref() == b"last")
            .map(|(_, item)| String::from_utf8_lossy(&item.value).parse::<u64>().unwrap());
        let fits = match last {
            None => added <= 1,
            Some(last) => last + 1 == added || last + 2 == added,
        };
        assert!(fits, "a snapshot holds {added} keys but last = {last:?}");
        seen.insert(added);
    }
    writer.await.unwrap();
    assert_eq!(d.scan(NOW).await.unwrap().len() as u64, writes + 1);
    assert!(
        seen.len() > 10,
        "too few snapshots taken during the writes: {seen:?}"
    );
}

/// The whole conformance suite again with a checkpoint after every batch, made by the writer
/// before the next batch, so that every operation also runs against what the B-tree holds
/// rather than the overlay.
mod checkpointing_every_batch {
    use super::*;

    fn open_temp(limits: Limits) -> Guarded<DiskDatalet> {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = DiskOptions {
            checkpoint_keys: 1,
            checkpoint_in_background: false,
            ..DiskOptions::default()
        };
        let datalet = DiskDatalet::open(dir.path(), limits, options).expect("open");
        Guarded::new(datalet, dir)
    }

    crate::conformance_tests!(open_temp);
}

/// And with a checkpoint started after every batch on its own thread: operations run against
/// the overlay, its frozen part and the B-tree while they change under them.
mod checkpointing_every_batch_in_the_background {
    use super::*;

    fn open_temp(limits: Limits) -> Guarded<DiskDatalet> {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = DiskOptions {
            checkpoint_keys: 1,
            ..DiskOptions::default()
        };
        let datalet = DiskDatalet::open(dir.path(), limits, options).expect("open");
        Guarded::new(datalet, dir)
    }

    crate::conformance_tests!(open_temp);
}
