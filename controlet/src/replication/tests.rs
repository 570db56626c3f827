use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, Limits, MemoryDatalet, Mutation, Outcome};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;

const NOW: u64 = 1_700_000_000;

async fn cluster(n: u16) -> (Vec<Replicator>, Vec<Arc<MemoryDatalet>>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut all = Vec::new();
    for id in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        all.push((tailorkv_common::NodeId(id), listener.local_addr().unwrap()));
        listeners.push(listener);
    }
    let mut replicators = Vec::new();
    let mut datalets = Vec::new();
    for (listener, &(me, _)) in listeners.into_iter().zip(&all) {
        let datalet = Arc::new(MemoryDatalet::new(Limits::default()));
        let members = Members {
            me,
            all: all.clone(),
        };
        replicators.push(spawn_driver(
            members,
            listener,
            datalet.clone(),
            Arc::new(tailorkv_common::SystemClock),
            crate::tob::Timing::default(),
            0,
            shutdown.clone(),
        ));
        datalets.push(datalet);
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
    let item = replicators[2].read(&key, NOW).await.unwrap().unwrap();
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
    let (replicators, _datalets, shutdown) = cluster(3).await;
    let key = Bytes::from_static(b"k");
    let set = Mutation::Store {
        mode: StoreMode::Set,
        flags: 3,
        expiry: Expiry::Never,
        value: Bytes::from_static(b"v"),
    };
    replicators[0].mutate(&key, set, NOW).await.unwrap();
    let read = replicators[1].read(&key, NOW).await.unwrap();
    assert_eq!(
        read.map(|i| i.flags),
        Some(3),
        "a later read sees an earlier write"
    );
    replicators[2].flush(NOW - 1, NOW).await.unwrap();
    assert_eq!(replicators[0].read(&key, NOW).await.unwrap(), None);
    shutdown.cancel();
}
