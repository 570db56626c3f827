use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, Limits, MemoryDatalet, Mutation, Outcome};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tailorkv_common::UnixSecs;
use tailorkv_datalet::DataletError;

use super::*;

const NOW: u64 = 1_700_000_000;

async fn cluster(n: u16) -> (Vec<Replicator>, Vec<Arc<MemoryDatalet>>, CancellationToken) {
    let datalets = (0..n)
        .map(|_| Arc::new(MemoryDatalet::replica(Limits::default())))
        .collect();
    cluster_of(datalets).await
}

/// A cluster of one member per datalet. Operations carry the time the test gives them (the
/// drivers read no clock): `NOW`, years behind the wall clock.
async fn cluster_of<D: Datalet>(
    datalets: Vec<Arc<D>>,
) -> (Vec<Replicator>, Vec<Arc<D>>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut all = Vec::new();
    for id in 1..=datalets.len() as u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        all.push((tailorkv_common::NodeId(id), listener.local_addr().unwrap()));
        listeners.push(listener);
    }
    let mut replicators = Vec::new();
    for ((listener, &(me, _)), datalet) in listeners.into_iter().zip(&all).zip(&datalets) {
        let members = Members {
            me,
            all: all.clone(),
            link: crate::peer::LinkConfig::default(),
        };
        replicators.push(spawn_driver(
            members,
            listener,
            datalet.clone(),
            crate::tob::Timing::default(),
            0,
            shutdown.clone(),
        ));
    }
    (replicators, datalets, shutdown)
}

#[tokio::test]
async fn every_member_applies_the_same_operations_in_the_same_order() {
    let (replicators, datalets, shutdown) = cluster(3).await;
    let key = Bytes::from_static(b"counter");
    let set = Mutation::Store {
        mode: StoreMode::Set,
        flags: 0,
        expiry: Expiry::Never,
        value: Bytes::from_static(b"0"),
    };
    assert_eq!(
        replicators[0].mutate(&key, set, NOW).await,
        Ok(Outcome::Stored)
    );
    let tasks: Vec<_> = replicators
        .iter()
        .flat_map(|r| (0..100).map(move |_| r.clone()))
        .map(|r| {
            let key = key.clone();
            tokio::spawn(async move { r.mutate(&key, Mutation::Incr(1), NOW).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(Outcome::Number(n)) => results.push(n),
            other => panic!("incr answered {other:?}"),
        }
    }
    results.sort_unstable();
    assert_eq!(
        results,
        (1..=300).collect::<Vec<u64>>(),
        "each incr saw a distinct state"
    );
    // A read through the order sees every write before it; then all replicas agree.
    let item = replicators[2]
        .read(NOW, |now| datalets[2].get(&key, now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.value, Bytes::from_static(b"300"));
    for _ in 0..200 {
        let mut states = Vec::new();
        for d in &datalets {
            states.push(d.get(&key, NOW).await.unwrap());
        }
        if states.iter().all(|s| s == &states[0]) {
            assert_eq!(
                states[0].as_ref().unwrap().version,
                item.version,
                "same CAS everywhere"
            );
            shutdown.cancel();
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("replicas did not converge to the same item");
}

#[tokio::test]
async fn flush_and_reads_are_ordered_with_writes() {
    let (replicators, datalets, shutdown) = cluster(3).await;
    let key = Bytes::from_static(b"k");
    let set = Mutation::Store {
        mode: StoreMode::Set,
        flags: 3,
        expiry: Expiry::Never,
        value: Bytes::from_static(b"v"),
    };
    replicators[0].mutate(&key, set, NOW).await.unwrap();
    let read = replicators[1]
        .read(NOW, |now| datalets[1].get(&key, now))
        .await
        .unwrap();
    assert_eq!(
        read.map(|i| i.flags),
        Some(3),
        "a later read sees an earlier write"
    );
    replicators[2].flush(NOW - 1, NOW).await.unwrap();
    assert_eq!(
        replicators[0]
            .read(NOW, |now| datalets[0].get(&key, now))
            .await
            .unwrap(),
        None
    );
    shutdown.cancel();
}

/// A memory replica whose `apply` fails for one key while `poisoned` is set, as a full disk
/// or an unreachable remote store would.
struct Failing {
    inner: MemoryDatalet,
    poisoned: std::sync::atomic::AtomicBool,
}

impl Failing {
    fn new(poisoned: bool) -> Arc<Self> {
        Arc::new(Failing {
            inner: MemoryDatalet::replica(Limits::default()),
            poisoned: std::sync::atomic::AtomicBool::new(poisoned),
        })
    }
}

impl Datalet for Failing {
    async fn get(
        &self,
        key: &[u8],
        now: UnixSecs,
    ) -> Result<Option<tailorkv_datalet::Item>, DataletError> {
        self.inner.get(key, now).await
    }
    async fn scan(
        &self,
        now: UnixSecs,
    ) -> Result<Vec<(Bytes, tailorkv_datalet::Item)>, DataletError> {
        self.inner.scan(now).await
    }
    async fn apply(
        &self,
        key: &Bytes,
        m: Mutation,
        v: tailorkv_common::Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        if key.as_ref() == b"poison"
            && self
                .poisoned
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(DataletError::Unavailable("disk full".into()));
        }
        self.inner.apply(key, m, v, now).await
    }
    async fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        version: tailorkv_common::Version,
    ) -> Result<(), DataletError> {
        self.inner.flush_all(at, now, version).await
    }
    async fn reset(&self) -> Result<(), DataletError> {
        self.inner.reset().await
    }
    async fn load_clock(&self) -> Result<tailorkv_common::Ts, DataletError> {
        Ok(0)
    }
    async fn save_clock(&self, _ts: tailorkv_common::Ts) -> Result<(), DataletError> {
        Ok(())
    }
    fn set_memory_limit(&self, bytes: usize) {
        self.inner.set_memory_limit(bytes)
    }
    fn stats(&self) -> tailorkv_datalet::DataletStats {
        self.inner.stats()
    }
}

fn set_value(value: &'static [u8]) -> Mutation {
    Mutation::Store {
        mode: StoreMode::Set,
        flags: 0,
        expiry: Expiry::Never,
        value: Bytes::from_static(value),
    }
}

/// Waits until every replica holds the same items (values and versions), up to 20 s.
async fn assert_replicas_identical<D: Datalet>(datalets: &[Arc<D>], what: &str) {
    let mut last = Vec::new();
    for _ in 0..2_000 {
        let mut states = Vec::new();
        for d in datalets {
            let mut items = d.scan(NOW).await.unwrap();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            states.push(items);
        }
        if states.iter().all(|s| s == &states[0]) {
            return;
        }
        last = states;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let counts: Vec<usize> = last.iter().map(Vec::len).collect();
    panic!("{what}: replicas differ (items per replica {counts:?})");
}

#[tokio::test]
async fn a_member_that_fails_to_apply_catches_up_instead_of_serving_a_diverged_copy() {
    let datalets = vec![Failing::new(false), Failing::new(true), Failing::new(false)];
    let (replicators, datalets, shutdown) = cluster_of(datalets).await;
    let poison = Bytes::from_static(b"poison");
    assert_eq!(
        replicators[0].mutate(&poison, set_value(b"p"), NOW).await,
        Ok(Outcome::Stored),
        "the proposer applied it"
    );
    for i in 0..50 {
        let key = Bytes::from(format!("k{i}"));
        replicators[0]
            .mutate(&key, set_value(b"v"), NOW)
            .await
            .unwrap();
    }
    // Node 2 failed to apply `poison`: it must catch up, not serve a copy without it.
    assert_replicas_identical(&datalets, "after a failed apply on a follower").await;
    let read = replicators[1]
        .read(NOW, |now| datalets[1].get(&poison, now))
        .await
        .unwrap();
    assert_eq!(read.map(|i| i.value), Some(Bytes::from_static(b"p")));
    assert_eq!(
        replicators[1]
            .counters()
            .apply_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_proposer_that_fails_to_apply_says_the_outcome_is_unknown() {
    let datalets = vec![Failing::new(true), Failing::new(false), Failing::new(false)];
    let (replicators, datalets, shutdown) = cluster_of(datalets).await;
    let poison = Bytes::from_static(b"poison");
    let answer = replicators[0].mutate(&poison, set_value(b"p"), NOW).await;
    match answer {
        Err(crate::error::Error::Refused(why)) => assert!(
            why.contains("outcome is unknown"),
            "the client must not be told the write failed: {why}"
        ),
        other => panic!("a write the others applied was answered {other:?}"),
    }
    // The others applied it; the proposer catches up and holds it too.
    let read = replicators[2]
        .read(NOW, |now| datalets[2].get(&poison, now))
        .await
        .unwrap();
    assert_eq!(read.map(|i| i.value), Some(Bytes::from_static(b"p")));
    assert_replicas_identical(&datalets, "after a failed apply on the proposer").await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_snapshot_holds_what_is_live_at_the_orders_clock_not_the_sources() {
    // Node 3 proposes at NOW, years behind every node's wall clock. Node 1 fails to apply
    // `poison` and catches up from node 2 (the first synced member). The snapshot must still
    // carry an item expiring at NOW + 50, which every operation of the order (read at NOW)
    // still sees, though any wall clock is past it, or node 1 would answer differently.
    let datalets = vec![Failing::new(true), Failing::new(false), Failing::new(false)];
    let (replicators, datalets, shutdown) = cluster_of(datalets).await;
    let key = Bytes::from_static(b"short-lived");
    let set = Mutation::Store {
        mode: StoreMode::Set,
        flags: 0,
        expiry: Expiry::At(NOW + 50),
        value: Bytes::from_static(b"v"),
    };
    replicators[2].mutate(&key, set, NOW).await.unwrap();
    let poison = Bytes::from_static(b"poison");
    replicators[2]
        .mutate(&poison, set_value(b"p"), NOW)
        .await
        .unwrap();
    assert_replicas_identical(&datalets, "after a snapshot from a clock ahead").await;
    let read = replicators[0]
        .read(NOW, |now| datalets[0].get(&key, now))
        .await
        .unwrap();
    assert_eq!(read.map(|i| i.value), Some(Bytes::from_static(b"v")));
    shutdown.cancel();
}

#[test]
fn state_chunks_are_bounded_in_bytes() {
    let item = |size: usize| tailorkv_datalet::Item {
        value: Bytes::from(vec![b'x'; size]),
        flags: 0,
        expiry: Expiry::Never,
        version: tailorkv_common::Version::new(1, tailorkv_common::NodeId(0)),
        marks: tailorkv_datalet::Marks::default(),
    };
    let mut items: Vec<(Bytes, tailorkv_datalet::Item)> = (0..100)
        .map(|i| (Bytes::from(format!("k{i}")), item(5_000)))
        .collect();
    items.push((Bytes::from_static(b"big"), item(3 << 20)));
    items.extend((0..10).map(|i| (Bytes::from(format!("j{i}")), item(300_000))));
    let chunks_of = |items| {
        let mut snapshot = tailorkv_datalet::Scanned::new(items);
        let mut chunks = Vec::new();
        loop {
            let chunk = driver::next_chunk(&mut snapshot, 2, 7, NOW, STATE_CHUNK_BYTES).unwrap();
            let last = chunk.last;
            chunks.push(chunk);
            if last {
                return chunks;
            }
        }
    };
    let chunks = chunks_of(items);
    let sizes: Vec<usize> = chunks
        .iter()
        .map(|c| c.items.iter().map(|i| i.key.len() + i.value.len()).sum())
        .collect();
    for (chunk, &size) in chunks.iter().zip(&sizes) {
        assert!(
            size <= STATE_CHUNK_BYTES || chunk.items.len() == 1,
            "a chunk of {} items holds {size} bytes",
            chunk.items.len()
        );
        assert_eq!((chunk.epoch, chunk.seq, chunk.now), (2, 7, NOW));
    }
    assert_eq!(chunks.iter().map(|c| c.items.len()).sum::<usize>(), 111);
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    // The end is an empty chunk marked last, and only that.
    let (end, rest) = chunks.split_last().unwrap();
    assert!(end.last && end.items.is_empty());
    assert!(rest.iter().all(|c| !c.last && !c.items.is_empty()));
    // An empty snapshot is that chunk alone.
    let empty = chunks_of(Vec::new());
    assert_eq!(empty.len(), 1);
    assert!(empty[0].last && empty[0].items.is_empty());
}
