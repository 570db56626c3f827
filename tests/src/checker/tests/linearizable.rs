//! Hand-written histories with a known linearizability verdict, and budgets.

use std::time::Duration;

use super::Script;
use crate::checker::{
    check_linearizable, Budget, History, KeyState, OpKind, OpResult, UnknownReason, Verdict,
};

fn verdict(history: &History) -> Verdict {
    check_linearizable(history, Budget::default())
}

fn assert_linearizable(history: History) {
    let v = verdict(&history);
    assert!(v.is_linearizable(), "expected linearizable, got {v}");
}

/// Asserts the verdict is NotLinearizable for `key`, and returns the explanation.
fn assert_not_linearizable(history: History, key: &str) -> crate::checker::Explanation {
    match verdict(&history) {
        Verdict::NotLinearizable(why) => {
            assert_eq!(why.key, key, "{why}");
            *why
        }
        other => panic!("expected a violation on {key:?}, got {other}"),
    }
}

// ---- known good ----

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(History::new());
}

#[test]
fn one_client_doing_everything_in_turn() {
    let h = Script::new()
        .get(1, (0, 1), None)
        .set(1, "a", (2, 3))
        .get(1, (4, 5), Some("a"))
        .delete(1, (6, 7), true)
        .delete(1, (8, 9), false)
        .get(1, (10, 11), None)
        .add(1, "b", (12, 13), true)
        .add(1, "c", (14, 15), false)
        .incr_non_numeric(1, 1, (16, 17))
        .set(1, "5", (18, 19))
        .incr(1, 3, (20, 21), Some(8))
        .get(1, (22, 23), Some("8"))
        .delete(1, (24, 25), true)
        .incr(1, 1, (26, 27), None);
    assert_linearizable(h.build());
}

#[test]
fn overlapping_writes_may_take_effect_in_either_order() {
    // b lands first (read at 6..8 sees it), then a (read at 16..20 sees it).
    let h = Script::new()
        .set(1, "a", (0, 10))
        .set(2, "b", (5, 15))
        .get(3, (6, 8), Some("b"))
        .get(3, (16, 20), Some("a"));
    assert_linearizable(h.build());
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set(2, "b", (2, 10))
        .get(3, (3, 4), Some("a"))
        .get(4, (5, 6), Some("b"))
        .get(3, (7, 8), Some("b"))
        .get(5, (3, 9), Some("a"));
    assert_linearizable(h.build());
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The get starts at the very moment the set completes: it may come first.
    let h = Script::new().set(1, "a", (0, 10)).get(2, (10, 12), None);
    assert_linearizable(h.build());
}

#[test]
fn indeterminate_write_that_happened() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set_unknown(2, "b", 2)
        .get(1, (10, 11), Some("b"));
    assert_linearizable(h.build());
}

#[test]
fn indeterminate_write_that_did_not_happen() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set_unknown(2, "b", 2)
        .get(1, (10, 11), Some("a"))
        .get(1, (20, 21), Some("a"));
    assert_linearizable(h.build());
}

#[test]
fn indeterminate_write_may_land_long_after_its_invocation() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set_unknown(2, "b", 2)
        .get(1, (10, 11), Some("a"))
        .get(3, (20, 21), Some("b"))
        .get_unknown(3, 30);
    assert_linearizable(h.build());
}

#[test]
fn indeterminate_ops_of_every_kind() {
    let h = Script::new()
        .set(1, "10", (0, 1))
        .incr_unknown(2, 5, 2)
        .get(1, (10, 11), Some("15"))
        .delete_unknown(3, 12)
        .get(1, (20, 21), None)
        .add(1, "x", (22, 23), true);
    assert_linearizable(h.build());
}

#[test]
fn two_indeterminate_increments_of_the_same_delta_both_land() {
    let h = Script::new()
        .set(1, "10", (0, 1))
        .incr_unknown(1, 3, 2)
        .incr_unknown(1, 3, 4)
        .get(2, (10, 11), Some("16"));
    assert_linearizable(h.build());
    let h = Script::new()
        .set(1, "10", (0, 1))
        .incr_unknown(1, 3, 2)
        .incr_unknown(1, 3, 4)
        .get(2, (10, 11), Some("19"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn overlapping_adds_one_wins() {
    let h = Script::new()
        .add(1, "a", (0, 10), false)
        .add(2, "b", (0, 10), true)
        .get(3, (11, 12), Some("b"));
    assert_linearizable(h.build());
}

#[test]
fn overlapping_increments_in_either_order() {
    let h = Script::new()
        .set(1, "0", (0, 1))
        .incr(1, 1, (2, 10), Some(2))
        .incr(2, 1, (2, 10), Some(1))
        .get(3, (11, 12), Some("2"));
    assert_linearizable(h.build());
}

// ---- known bad ----

#[test]
fn stale_read_after_a_completed_write() {
    // The classic bug: a read served from a replica's local state that missed a write.
    let h = Script::new()
        .set(1, "a", (0, 10))
        .set(1, "b", (20, 30))
        .get(2, (40, 50), Some("a"));
    let why = assert_not_linearizable(h.build(), "k");
    let culprit = why.culprit.as_ref().expect("a culprit");
    assert_eq!(culprit.kind, OpKind::Get);
    assert_eq!(why.state_after_prefix, KeyState::Value("b".into()), "{why}");
    let (stuck, would) = &why.stuck[0];
    assert_eq!(
        (stuck.id, would),
        (2, &Some(OpResult::Hit("b".into()))),
        "{why}"
    );
    assert!(why.to_string().contains("would answer Hit(\"b\")"), "{why}");
}

#[test]
fn stale_read_is_explained_by_a_small_core() {
    // Many innocent reads around; the core is the stale read and what contradicts it.
    let mut s = Script::new().set(1, "a", (0, 10)).set(1, "b", (20, 30));
    for i in 0..50 {
        s = s.get(3, (40 + 10 * i, 45 + 10 * i), Some("b"));
    }
    let s = s
        .get(2, (300, 310), Some("a"))
        .set(1, "c", (400, 410))
        .get(3, (420, 430), Some("c"));
    let why = assert_not_linearizable(s.build(), "k");
    assert!(why.core.len() <= 3, "{why}");
    assert_eq!(
        why.culprit.as_ref().map(|op| op.invoked),
        Some(300),
        "{why}"
    );
    assert!(why.core.iter().any(|op| op.invoked == 300), "{why}");
    assert_eq!(why.cut, Some(310));
    assert!(why.from.is_some(), "{why}");
}

#[test]
fn a_core_without_a_left_cut_starts_from_an_absent_key() {
    // A miss that contradicts the write before it: cutting on the left would drop the
    // write and let the key start absent, so the core keeps the start.
    let h = Script::new()
        .set(1, "a", (0, 10))
        .get(2, (5, 8), Some("a"))
        .get(2, (20, 30), None);
    let why = assert_not_linearizable(h.build(), "k");
    assert_eq!(why.from, None, "{why}");
    assert_eq!(why.core.len(), 2, "{why}");
}

#[test]
fn read_of_a_value_never_written() {
    let h = Script::new()
        .set(1, "a", (0, 10))
        .get(2, (5, 15), Some("zzz"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn clients_see_two_writes_in_opposite_orders() {
    let h = Script::new()
        .set(1, "a", (0, 100))
        .set(2, "b", (0, 100))
        .get(3, (10, 20), Some("a"))
        .get(3, (30, 40), Some("b"))
        .get(4, (10, 20), Some("b"))
        .get(4, (30, 40), Some("a"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn lost_acknowledged_write() {
    let h = Script::new().set(1, "a", (0, 10)).get(2, (20, 30), None);
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn lost_write_under_a_newer_one() {
    let h = Script::new()
        .set(1, "a", (0, 10))
        .set(2, "b", (20, 30))
        .get(3, (40, 50), Some("b"))
        .get(3, (60, 70), Some("a"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn add_succeeds_twice() {
    let h = Script::new()
        .add(1, "a", (0, 10), true)
        .add(2, "b", (20, 30), true);
    assert_not_linearizable(h.build(), "k");
    let concurrent = Script::new()
        .add(1, "a", (0, 10), true)
        .add(2, "b", (5, 15), true);
    assert_not_linearizable(concurrent.build(), "k");
}

#[test]
fn increment_lost_update() {
    let h = Script::new()
        .set(1, "10", (0, 1))
        .incr(1, 1, (2, 3), Some(11))
        .incr(2, 1, (4, 5), Some(11));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn increment_results_out_of_real_time_order() {
    let h = Script::new()
        .set(1, "10", (0, 1))
        .incr(1, 1, (2, 3), Some(12))
        .incr(2, 1, (4, 5), Some(11));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn read_after_delete_sees_the_deleted_value() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .delete(2, (2, 3), true)
        .get(1, (4, 5), Some("a"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn indeterminate_write_cannot_take_effect_twice() {
    let h = Script::new()
        .set(1, "a", (0, 1))
        .set_unknown(2, "b", 5)
        .get(1, (10, 11), Some("b"))
        .get(1, (20, 21), Some("a"));
    assert_not_linearizable(h.build(), "k");
}

#[test]
fn only_the_bad_key_is_blamed() {
    let h = Script::new()
        .key("a")
        .set(1, "1", (0, 10))
        .get(2, (5, 15), Some("1"))
        .key("bad")
        .set(1, "x", (0, 10))
        .set(2, "y", (20, 30))
        .get(3, (40, 50), Some("x"))
        .key("c")
        .set_unknown(3, "2", 0)
        .get(1, (20, 30), Some("2"))
        .key("d")
        .add(2, "z", (60, 70), true);
    let why = assert_not_linearizable(h.build(), "bad");
    assert!(why.core.iter().all(|op| op.key == "bad"), "{why}");
}

// ---- budgets ----

/// Twenty concurrent writes, then a read of a value none wrote: proving that takes a search
/// of every subset of the writes.
fn hard_key(s: Script) -> Script {
    let mut s = s;
    for c in 0..20 {
        s = s.set(c, &format!("v{c}"), (0, 1000));
    }
    s.get(99, (2000, 2001), Some("nobody"))
}

#[test]
fn budget_exhaustion_is_unknown_never_a_pass() {
    let h = hard_key(Script::new().key("hard")).build();
    match check_linearizable(&h, Budget::steps(10_000)) {
        Verdict::Unknown { key, reason } => {
            assert_eq!(key, "hard");
            assert_eq!(reason, UnknownReason::StepBudget { steps: 10_000 });
        }
        other => panic!("expected unknown, got {other}"),
    }
    // Even a linearizable history is unknown when the budget cannot cover it.
    let good = Script::new().set(1, "a", (0, 1)).get(1, (2, 3), Some("a"));
    let v = check_linearizable(&good.build(), Budget::steps(1));
    assert!(matches!(v, Verdict::Unknown { .. }), "{v}");
}

#[test]
fn time_budget_exhaustion_is_unknown() {
    let h = hard_key(Script::new()).build();
    let budget = Budget {
        max_steps_per_key: u64::MAX,
        max_time: Some(Duration::from_millis(50)),
    };
    let v = check_linearizable(&h, budget);
    assert!(
        matches!(
            v,
            Verdict::Unknown {
                reason: UnknownReason::TimeBudget { .. },
                ..
            }
        ),
        "{v}"
    );
}

#[test]
fn a_violation_on_one_key_beats_unknown_on_another() {
    // Keys are checked in order: "hard" runs out first, then "x-bad" fails.
    let bad = Script::new()
        .key("x-bad")
        .set(1, "a", (0, 10))
        .get(2, (20, 30), None);
    let h = hard_key(bad.key("hard")).build();
    let v = check_linearizable(&h, Budget::steps(10_000));
    assert!(
        matches!(&v, Verdict::NotLinearizable(why) if why.key == "x-bad"),
        "{v}"
    );

    let good = Script::new().key("good").set(1, "a", (0, 10));
    let h = hard_key(good.key("hard")).build();
    let v = check_linearizable(&h, Budget::steps(10_000));
    assert!(
        matches!(&v, Verdict::Unknown { key, .. } if key == "hard"),
        "{v}"
    );
}

// ---- a store that evicts ----

/// Histories that only evictions explain: each is refused without them, and accepted with.
#[test]
fn evictions_explain_misses_adds_and_not_founds_after_a_write() {
    let scripts = [
        // A miss after an acknowledged write.
        Script::new().set(1, "a", (0, 10)).get(2, (20, 30), None),
        // Read, evicted, written again, read.
        Script::new()
            .set(1, "a", (0, 10))
            .get(2, (20, 30), Some("a"))
            .get(2, (40, 50), None)
            .set(1, "b", (60, 70))
            .get(2, (80, 90), Some("b")),
        // An add that stores, a delete and an incr that find nothing.
        Script::new()
            .set(1, "a", (0, 10))
            .add(2, "b", (20, 30), true),
        Script::new()
            .set(1, "a", (0, 10))
            .delete(2, (20, 30), false),
        Script::new()
            .set(1, "5", (0, 10))
            .incr(2, 1, (20, 30), None),
        // An add whose reply never came stored only because the key had been evicted.
        Script::new()
            .set(1, "a", (0, 10))
            .add_unknown(2, "b", 20)
            .get(1, (40, 50), Some("b")),
    ];
    for script in scripts {
        let history = script.build_evicting();
        let mut without = History::from_ops(history.ops().to_vec());
        assert!(!without.evictions());
        let v = verdict(&without);
        assert!(
            !v.is_linearizable(),
            "only evictions explain it, yet {v}:\n{}",
            super::show(&without)
        );
        without.allow_evictions();
        let v = verdict(&without);
        assert!(
            v.is_linearizable(),
            "expected linearizable with evictions, got {v}:\n{}",
            super::show(&without)
        );
    }
}

/// What evictions do not explain: a value back after a miss, a stale value after a newer
/// write, a value never written, reads out of real-time order.
#[test]
fn evictions_do_not_explain_values_coming_back_or_going_back() {
    let comes_back = Script::new()
        .set(1, "a", (0, 10))
        .get(2, (20, 30), None)
        .get(2, (40, 50), Some("a"));
    assert_not_linearizable(comes_back.build_evicting(), "k");
    let stale = Script::new()
        .set(1, "a", (0, 10))
        .set(1, "b", (20, 30))
        .get(2, (40, 50), Some("a"));
    assert_not_linearizable(stale.build_evicting(), "k");
    let invented = Script::new()
        .set(1, "a", (0, 10))
        .get(2, (20, 30), Some("z"));
    assert_not_linearizable(invented.build_evicting(), "k");
    // Another client saw the miss first: no read may see the value after it.
    let order = Script::new()
        .set(1, "a", (0, 10))
        .get(2, (20, 30), None)
        .get(3, (35, 45), Some("a"));
    assert_not_linearizable(order.build_evicting(), "k");
    // An incr after an eviction finds nothing, and cannot continue the old count.
    let counts_on = Script::new()
        .set(1, "5", (0, 10))
        .incr(2, 1, (20, 30), None)
        .incr(2, 1, (40, 50), Some(7));
    assert_not_linearizable(counts_on.build_evicting(), "k");
}
