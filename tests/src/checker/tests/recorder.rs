//! Recording from concurrent clients, then checking what was recorded.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::checker::{check_linearizable, Budget, OpKind, OpResult, Recorder, Value};

/// An in-process atomic store: whatever threads do to it is linearizable, so whatever the
/// recorder records of it must check as linearizable.
#[derive(Default)]
struct AtomicStore {
    items: Mutex<HashMap<String, Value>>,
}

impl AtomicStore {
    fn call(&self, key: &str, kind: &OpKind) -> OpResult {
        let mut items = self.items.lock().unwrap();
        match kind {
            OpKind::Set(v) => {
                items.insert(key.to_string(), v.clone());
                OpResult::Stored
            }
            OpKind::Get => items
                .get(key)
                .map_or(OpResult::Miss, |v| OpResult::Hit(v.clone())),
            OpKind::Delete => match items.remove(key) {
                Some(_) => OpResult::Deleted,
                None => OpResult::NotFound,
            },
            other => unimplemented!("{other:?}"),
        }
    }
}

#[test]
fn concurrent_clients_record_a_linearizable_history() {
    let recorder = Recorder::new();
    let store = AtomicStore::default();
    std::thread::scope(|s| {
        for client in 0..4u32 {
            let (recorder, store) = (&recorder, &store);
            s.spawn(move || {
                for i in 0..200u64 {
                    let key = format!("k{}", i % 3);
                    let kind = match i % 4 {
                        0 => OpKind::Set(Value::from(format!("{client}-{i}"))),
                        3 => OpKind::Delete,
                        _ => OpKind::Get,
                    };
                    let id = recorder.invoke(client, key.as_str(), kind.clone());
                    let result = store.call(&key, &kind);
                    if i % 50 == 49 {
                        recorder.fail(id); // the reply was lost
                    } else {
                        recorder.complete(id, result);
                    }
                }
            });
        }
    });
    let history = recorder.history();
    assert_eq!(history.len(), 800);
    assert_eq!(
        history
            .ops()
            .iter()
            .filter(|op| op.is_indeterminate())
            .count(),
        16
    );
    let v = check_linearizable(&history, Budget::default());
    assert!(v.is_linearizable(), "{v}");
}

#[test]
fn times_increase_and_pending_ops_are_indeterminate() {
    let recorder = Recorder::new();
    let a = recorder.invoke(1, "k", OpKind::Get);
    let b = recorder.invoke(2, "k", OpKind::Set("x".into()));
    recorder.complete(a, OpResult::Miss);
    let history = recorder.history();
    let (a, b) = (&history.ops()[a], &history.ops()[b]);
    assert!(a.invoked < b.invoked && b.invoked < a.completed().unwrap());
    assert!(b.is_indeterminate());
}

#[test]
#[should_panic(expected = "settled twice")]
fn completing_twice_is_a_test_bug() {
    let recorder = Recorder::new();
    let id = recorder.invoke(1, "k", OpKind::Get);
    recorder.complete(id, OpResult::Miss);
    recorder.fail(id);
}

#[test]
#[should_panic(expected = "cannot answer")]
fn a_result_of_the_wrong_kind_is_a_test_bug() {
    let recorder = Recorder::new();
    let id = recorder.invoke(1, "k", OpKind::Get);
    recorder.complete(id, OpResult::Stored);
}
