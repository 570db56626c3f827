//! Hand-written histories for the sequential mode's checks.

use super::Script;
use crate::checker::{
    check_linearizable, check_sequential, check_write_order, Budget, History, OrderVerdict,
    OrderViolation, SequentialVerdict, UnknownReason,
};

fn order(history: &History) -> OrderVerdict {
    check_write_order(history)
}

fn violation(history: &History) -> OrderViolation {
    match order(history) {
        OrderVerdict::Inconsistent(v) => *v,
        other => panic!("expected a violation, got {other}"),
    }
}

fn full(history: &History) -> SequentialVerdict {
    check_sequential(history, Budget::default())
}

/// Reads served locally may lag behind real time, as long as each client moves forward.
fn lagging_but_monotonic() -> History {
    Script::new()
        .set(1, "a", (0, 1))
        .set(2, "b", (2, 3))
        .get(3, (10, 11), None) // the replica has not applied `a` yet
        .get(3, (12, 13), Some("a"))
        .get(3, (14, 15), Some("b"))
        .get(4, (10, 11), Some("a"))
        .get(4, (12, 13), Some("a"))
        .get(2, (20, 21), Some("b")) // its own write, or newer
        .build()
}

#[test]
fn lagging_monotonic_reads_are_sequential_but_not_linearizable() {
    let h = lagging_but_monotonic();
    assert!(order(&h).is_consistent(), "{}", order(&h));
    assert!(full(&h).is_consistent(), "{}", full(&h));
    assert!(!check_linearizable(&h, Budget::default()).is_linearizable());
}

#[test]
fn a_client_going_back_in_time_is_named() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(1, "b", (2, 3))
        .get(2, (10, 11), Some("b"))
        .get(2, (12, 13), Some("a"))
        .build();
    let OrderViolation::Cycle { edges, .. } = violation(&h) else {
        panic!("expected a cycle");
    };
    assert!(edges
        .iter()
        .any(|e| e.witness.as_ref().is_some_and(|w| w.client == 2)));
    assert!(!full(&h).is_consistent());
}

#[test]
fn reading_older_than_your_own_write() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(2, "b", (2, 3))
        .get(2, (4, 5), Some("a"))
        .build();
    // Client 1 wrote `a`; client 2 wrote `b` then read `a`: `a` after `b` for client 2 is
    // fine on its own (client 1's write may be ordered later) ...
    assert!(order(&h).is_consistent(), "{}", order(&h));
    // ... but not if client 1 then saw `b` after its `a`: each puts the other's first.
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(2, "b", (2, 3))
        .get(2, (4, 5), Some("a"))
        .get(1, (6, 7), Some("b"))
        .build();
    assert!(matches!(violation(&h), OrderViolation::Cycle { .. }));
    assert!(!full(&h).is_consistent());
}

#[test]
fn clients_disagreeing_on_the_order_of_two_writes() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(2, "b", (0, 1))
        .get(3, (2, 3), Some("a"))
        .get(3, (4, 5), Some("b"))
        .get(4, (2, 3), Some("b"))
        .get(4, (4, 5), Some("a"))
        .build();
    let OrderViolation::Cycle { edges, .. } = violation(&h) else {
        panic!("expected a cycle");
    };
    let clients: Vec<u32> = edges
        .iter()
        .filter_map(|e| e.witness.as_ref().map(|w| w.client))
        .collect();
    assert!(clients.contains(&3) && clients.contains(&4), "{edges:?}");
    assert!(!full(&h).is_consistent());
}

#[test]
fn miss_after_a_hit_goes_back_to_the_initial_state() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(2, (2, 3), Some("a"))
        .get(2, (4, 5), None)
        .build();
    assert!(matches!(violation(&h), OrderViolation::Cycle { .. }));
    // With a delete on the key, the miss is ambiguous for the order check, and fine.
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete(3, (0, 1), true)
        .get(2, (2, 3), Some("a"))
        .get(2, (4, 5), None)
        .build();
    assert!(order(&h).is_consistent());
    assert!(full(&h).is_consistent());
}

#[test]
fn read_of_a_value_never_written() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(2, (2, 3), Some("x"))
        .build();
    assert!(matches!(violation(&h), OrderViolation::NeverWritten { .. }));
    assert!(!full(&h).is_consistent());
}

#[test]
fn reading_your_own_write_before_making_it() {
    let h = Script::new()
        .get(1, (0, 1), Some("a"))
        .set(1, "a", (2, 3))
        .build();
    assert!(matches!(violation(&h), OrderViolation::FutureWrite { .. }));
    assert!(!full(&h).is_consistent());
}

#[test]
fn indeterminate_writes_may_be_seen_or_not() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set_unknown(2, "b", 2)
        .get(3, (10, 11), Some("a"))
        .get(3, (12, 13), Some("b"))
        .get(4, (10, 11), Some("a"))
        .set(2, "c", (20, 21))
        .get(2, (22, 23), Some("c"))
        .build();
    assert!(order(&h).is_consistent(), "{}", order(&h));
    assert!(full(&h).is_consistent(), "{}", full(&h));
}

#[test]
fn only_checkable_keys_are_judged() {
    let incr = Script::new()
        .set(1, "1", (0, 1))
        .incr(1, 1, (2, 3), Some(2));
    let v = order(&incr.build());
    assert!(
        matches!(
            v,
            OrderVerdict::Unknown {
                reason: UnknownReason::Unsupported(_),
                ..
            }
        ),
        "{v}"
    );
    let duplicate = Script::new().set(1, "a", (0, 1)).set(2, "a", (2, 3));
    assert!(matches!(
        order(&duplicate.build()),
        OrderVerdict::Unknown { .. }
    ));
}

#[test]
fn full_search_handles_every_op_kind() {
    let good = Script::new()
        .set(1, "5", (0, 1))
        .incr(2, 1, (0, 1), Some(6))
        .add(3, "x", (0, 1), false)
        .get(3, (2, 3), Some("6"))
        .delete(1, (2, 3), true)
        .get(2, (4, 5), None)
        .build();
    assert!(full(&good).is_consistent(), "{}", full(&good));
    let bad = Script::new()
        .set(1, "5", (0, 1))
        .incr(2, 1, (0, 1), Some(6))
        .incr(3, 1, (0, 1), Some(6))
        .build();
    assert!(!full(&bad).is_consistent());
}

#[test]
fn full_search_out_of_budget_is_unknown() {
    let h = lagging_but_monotonic();
    let v = check_sequential(&h, Budget::steps(2));
    assert!(matches!(v, SequentialVerdict::Unknown { .. }), "{v}");
}

// ---- a store that evicts ----

/// A miss after a client saw the value: an eviction, which both checks accept only from a
/// store that evicts. A value back after the miss stays a violation for the full search.
#[test]
fn evictions_explain_a_miss_but_not_a_value_coming_back() {
    let evicted = || {
        Script::new()
            .set(1, "a", (0, 10))
            .get(2, (20, 30), Some("a"))
            .get(2, (40, 50), None)
    };
    assert!(!order(&evicted().build()).is_consistent());
    assert!(!full(&evicted().build()).is_consistent());
    assert!(order(&evicted().build_evicting()).is_consistent());
    assert!(full(&evicted().build_evicting()).is_consistent());
    let back = evicted().get(2, (60, 70), Some("a")).build_evicting();
    assert!(!full(&back).is_consistent());
}
