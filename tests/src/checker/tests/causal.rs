//! Hand-written histories for the causal check, and where it parts from the other modes.
//!
//! Clients are named by their role: 1 and 2 write, 3 and 4 read (unless a test says else).

use super::{show, Script};
use crate::checker::{
    check_causal, check_linearizable, check_sequential, check_write_order, Budget, CausalLink,
    CausalVerdict, CausalViolation, History, Unsupported,
};

fn causal(history: &History) -> CausalVerdict {
    check_causal(history)
}

fn assert_causal(history: &History) {
    let v = causal(history);
    assert!(v.is_consistent(), "{v}\n{}", show(history));
}

fn violation(history: &History) -> CausalViolation {
    match causal(history) {
        CausalVerdict::Inconsistent(v) => *v,
        other => panic!("expected a violation, got {other}\n{}", show(history)),
    }
}

// ---- allowed ----

/// Two concurrent writes of one key, read in opposite orders by two clients: causal (the
/// writes are concurrent, and nothing asks the replicas to agree mid-run), but neither
/// linearizable nor sequential, per key or otherwise.
fn opposite_orders() -> History {
    Script::new()
        .set(1, "1", (0, 10))
        .set(2, "2", (0, 10))
        .get(3, (20, 21), Some("1"))
        .get(3, (22, 23), Some("2"))
        .get(4, (20, 21), Some("2"))
        .get(4, (22, 23), Some("1"))
        .build()
}

#[test]
fn concurrent_writes_seen_in_opposite_orders_are_causal_only() {
    let h = opposite_orders();
    assert_causal(&h);
    assert!(!check_linearizable(&h, Budget::default()).is_linearizable());
    assert!(!check_sequential(&h, Budget::default()).is_consistent());
    assert!(!check_write_order(&h).is_consistent());
}

/// Independent reads of independent writes: each reader sees one write and not the other,
/// in opposite orders. Causal; not linearizable (the misses come after the writes completed);
/// not sequentially consistent either, though the per-key sequential checks cannot tell:
/// each key alone has an order.
#[test]
fn independent_reads_of_independent_writes_are_causal() {
    let h = Script::new()
        .key("x")
        .set(1, "1", (0, 1))
        .get(3, (2, 3), Some("1"))
        .get(4, (4, 5), None)
        .key("y")
        .set(2, "1", (0, 1))
        .get(4, (2, 3), Some("1"))
        .get(3, (4, 5), None)
        .build();
    assert_causal(&h);
    assert!(!check_linearizable(&h, Budget::default()).is_linearizable());
    assert!(check_sequential(&h, Budget::default()).is_consistent());
}

#[test]
fn reading_your_own_writes() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(1, (2, 3), Some("a"))
        .set(1, "b", (4, 5))
        .get(1, (6, 7), Some("b"))
        .get(3, (0, 1), None)
        .get(3, (8, 9), Some("a"))
        .get(3, (10, 11), Some("b"))
        .build();
    assert_causal(&h);
}

#[test]
fn a_chain_across_clients_read_in_order() {
    let h = Script::new()
        .key("x")
        .set(1, "1", (0, 1))
        .key("x")
        .get(2, (2, 3), Some("1"))
        .key("y")
        .set(2, "2", (4, 5))
        .get(3, (6, 7), Some("2"))
        .key("x")
        .get(3, (8, 9), Some("1"))
        .set(1, "3", (10, 11)) // concurrent with client 3's reads
        .get(3, (12, 13), Some("3"))
        .build();
    assert_causal(&h);
}

#[test]
fn a_miss_before_any_write_in_the_causal_past() {
    // Client 3 misses long after the write completed: it has not seen it, which is fine.
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(3, (10, 11), None)
        .get(3, (12, 13), Some("a"))
        .build();
    assert_causal(&h);
    assert!(!check_linearizable(&h, Budget::default()).is_linearizable());
}

#[test]
fn a_miss_after_a_delete() {
    let h = Script::new()
        .key("x")
        .set(1, "1", (0, 1))
        .delete(1, (2, 3), true)
        .key("y")
        .set(1, "2", (4, 5))
        .get(3, (6, 7), Some("2"))
        .key("x")
        .get(3, (8, 9), None)
        .build();
    assert_causal(&h);
}

#[test]
fn a_miss_explained_by_a_concurrent_delete() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(3, (2, 3), Some("a"))
        .delete(2, (0, 10), true)
        .get(3, (4, 5), None)
        .delete(3, (6, 7), false)
        .build();
    assert_causal(&h);
}

#[test]
fn an_indeterminate_write_someone_read() {
    let h = Script::new()
        .set_unknown(1, "a", 0)
        .get(3, (2, 3), Some("a"))
        .get(3, (4, 5), Some("a"))
        // Client 1 moved on without a reply; its `a` may have landed after its `b`.
        .set(1, "b", (6, 7))
        .get(4, (8, 9), Some("b"))
        .get(4, (10, 11), Some("a"))
        .build();
    assert_causal(&h);
}

#[test]
fn an_indeterminate_write_nobody_read() {
    let h = Script::new()
        .set_unknown(1, "a", 0)
        .get(1, (2, 3), None)
        .get(3, (2, 3), None)
        .add_unknown(2, "b", 0)
        .get_unknown(4, 1)
        .build();
    assert_causal(&h);
}

#[test]
fn an_indeterminate_delete_may_explain_a_miss_after_it() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete_unknown(1, 2)
        .get(1, (4, 5), None)
        .build();
    assert_causal(&h);
    // ... but not one before it.
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(1, (2, 3), None)
        .delete_unknown(1, 4)
        .build();
    assert!(matches!(violation(&h), CausalViolation::LostWrite { .. }));
}

#[test]
fn adds_write_when_they_store() {
    let h = Script::new()
        .add(1, "a", (0, 1), true)
        .add(2, "b", (2, 3), false)
        .get(2, (4, 5), Some("a"))
        .build();
    assert_causal(&h);
    let h = Script::new()
        .add(1, "a", (0, 1), false)
        .get(2, (2, 3), Some("a"))
        .build();
    assert!(matches!(
        violation(&h),
        CausalViolation::NeverWritten { .. }
    ));
}

// ---- ruled out ----

/// Client 1 writes x; client 2 reads it, then writes y; client 3 reads y, then x: `seen`.
fn effect_before_cause(seen: Option<&str>) -> History {
    Script::new()
        .key("x")
        .set(1, "0", (0, 1))
        .set(1, "1", (2, 3))
        .get(2, (4, 5), Some("1"))
        .key("y")
        .set(2, "2", (6, 7))
        .get(3, (8, 9), Some("2"))
        .key("x")
        .get(3, (10, 11), seen)
        .build()
}

#[test]
fn the_effect_without_its_cause_a_miss() {
    let h = effect_before_cause(None);
    let CausalViolation::LostWrite { read, write, path } = violation(&h) else {
        panic!("expected a lost write");
    };
    assert_eq!((read.id, write.id), (5, 1));
    let ids: Vec<usize> = path.iter().map(|s| s.op.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let links: Vec<CausalLink> = path.iter().map(|s| s.link).collect();
    use CausalLink::{First, ReadsFrom, Session};
    assert_eq!(links, [First, ReadsFrom, Session, ReadsFrom, Session]);
}

#[test]
fn the_effect_without_its_cause_an_older_value() {
    let h = effect_before_cause(Some("0"));
    let CausalViolation::StaleRead {
        read, write, newer, ..
    } = violation(&h)
    else {
        panic!("expected a stale read");
    };
    assert_eq!((read.id, write.id, newer.id), (5, 0, 1));
}

#[test]
fn a_violation_names_its_ops_clients_keys_and_values() {
    let text = causal(&effect_before_cause(Some("0"))).to_string();
    for needle in [
        "#5", "#0", "#1", "client 3", "client 1", "\"x\"", "\"0\"", "\"2\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(text.lines().count() <= 8, "{text}");
}

#[test]
fn reading_your_own_overwritten_write() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(1, "b", (2, 3))
        .get(1, (4, 5), Some("a"))
        .build();
    assert!(matches!(violation(&h), CausalViolation::StaleRead { .. }));
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete(1, (2, 3), true)
        .get(1, (4, 5), Some("a"))
        .build();
    let v = causal(&h);
    assert!(matches!(
        v.violation(),
        Some(CausalViolation::StaleRead { .. })
    ));
    assert!(v.to_string().contains("deleted"), "{v}");
}

#[test]
fn reading_a_value_never_written() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(3, (2, 3), Some("z"))
        .build();
    let CausalViolation::NeverWritten { read } = violation(&h) else {
        panic!("expected a value never written");
    };
    assert_eq!(read.id, 1);
}

#[test]
fn reading_from_the_future() {
    let own = Script::new()
        .get(1, (0, 1), Some("a"))
        .set(1, "a", (2, 3))
        .build();
    assert!(matches!(violation(&own), CausalViolation::Cycle { .. }));
    // Each client reads what the other wrote only after its read.
    let crossed = Script::new()
        .key("x")
        .get(1, (0, 1), Some("1"))
        .key("y")
        .set(1, "1", (2, 3))
        .get(2, (0, 1), Some("1"))
        .key("x")
        .set(2, "1", (2, 3))
        .build();
    let CausalViolation::Cycle { steps } = violation(&crossed) else {
        panic!("expected a cycle");
    };
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(
        steps.first().map(|s| s.op.id),
        steps.last().map(|s| s.op.id)
    );
    // An indeterminate write was still sent after its client's earlier replies.
    let unknown = Script::new()
        .get(1, (0, 1), Some("a"))
        .set_unknown(1, "a", 2)
        .build();
    assert!(matches!(violation(&unknown), CausalViolation::Cycle { .. }));
}

#[test]
fn a_miss_after_your_own_set() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .get(1, (2, 3), None)
        .build();
    assert!(matches!(violation(&h), CausalViolation::LostWrite { .. }));
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete(1, (2, 3), false)
        .build();
    assert!(matches!(violation(&h), CausalViolation::LostWrite { .. }));
    // A set after the delete in the reader's past hides the delete.
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete(1, (2, 3), true)
        .set(1, "b", (4, 5))
        .get(3, (6, 7), Some("b"))
        .get(3, (8, 9), None)
        .build();
    assert!(matches!(violation(&h), CausalViolation::LostWrite { .. }));
}

#[test]
fn the_cause_of_an_indeterminate_write_must_be_seen() {
    let h = Script::new()
        .key("x")
        .set_unknown(1, "1", 0)
        .get(2, (4, 5), Some("1"))
        .key("y")
        .set(2, "2", (6, 7))
        .get(3, (8, 9), Some("2"))
        .key("x")
        .get(3, (10, 11), None)
        .build();
    assert!(matches!(violation(&h), CausalViolation::LostWrite { .. }));
}

// ---- what the check leaves alone ----

#[test]
fn evictions_explain_any_miss() {
    let evicted = || Script::new().set(1, "a", (0, 1)).get(1, (2, 3), None);
    assert!(!causal(&evicted().build()).is_consistent());
    assert_causal(&evicted().build_evicting());
    let stale = evicted().set(1, "b", (4, 5)).get(1, (6, 7), Some("a"));
    assert!(matches!(
        causal(&stale.build_evicting()).violation(),
        Some(CausalViolation::StaleRead { .. })
    ));
}

#[test]
fn keys_with_incr_or_repeated_values_are_unchecked() {
    let incr = Script::new()
        .set(1, "1", (0, 1))
        .incr(1, 1, (2, 3), Some(2))
        .get(1, (4, 5), Some("7"));
    let v = causal(&incr.build());
    assert!(
        matches!(&v, CausalVerdict::Unsupported(why) if matches!(**why, Unsupported::Incr { .. })),
        "{v}"
    );
    let repeated = Script::new().set(1, "a", (0, 1)).set(2, "a", (2, 3));
    let v = causal(&repeated.build());
    assert!(
        matches!(&v, CausalVerdict::Unsupported(why)
            if matches!(**why, Unsupported::DuplicateValue { .. })),
        "{v}"
    );
    // A violation on another key still counts.
    let both = Script::new()
        .set(1, "a", (0, 1))
        .set(2, "a", (2, 3))
        .key("other")
        .get(3, (0, 1), Some("z"));
    assert!(matches!(
        violation(&both.build()),
        CausalViolation::NeverWritten { .. }
    ));
}
