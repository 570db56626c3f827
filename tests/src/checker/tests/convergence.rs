//! The eventual mode's convergence check.

use tailorkv_common::{NodeId, Version};

use crate::checker::{
    check_converged, check_converged_evicting, Divergence, ReplicaState, Value, Write,
};

fn v(ts: u64, node: u16) -> Version {
    Version::new(ts, NodeId(node))
}

fn write(key: &str, value: Option<&str>, version: Option<Version>) -> Write {
    Write {
        key: key.to_string(),
        value: value.map(Value::from),
        version,
    }
}

fn replica(items: &[(&str, &str, Version)]) -> ReplicaState {
    items
        .iter()
        .map(|&(k, val, ver)| (k.to_string(), (Value::from(val), ver)))
        .collect()
}

fn writes() -> Vec<Write> {
    vec![
        write("a", Some("a1"), Some(v(1, 0))),
        write("a", Some("a2"), Some(v(3, 1))),
        write("a", Some("a3"), Some(v(3, 0))),
        write("b", Some("b1"), Some(v(2, 2))),
        write("b", None, Some(v(4, 1))),
        write("c", Some("c1"), Some(v(5, 2))),
    ]
}

#[test]
fn identical_replicas_holding_the_newest_writes_converged() {
    let state = replica(&[("a", "a2", v(3, 1)), ("c", "c1", v(5, 2))]);
    let replicas = vec![state.clone(), state.clone(), state];
    assert_eq!(check_converged(&replicas, &writes()), Ok(()));
    assert_eq!(check_converged(&[], &[]), Ok(()));
}

#[test]
fn replicas_that_differ_are_named() {
    let good = replica(&[("a", "a2", v(3, 1)), ("c", "c1", v(5, 2))]);
    let behind = replica(&[("a", "a1", v(1, 0)), ("c", "c1", v(5, 2))]);
    let err = check_converged(&[good.clone(), behind, good], &writes()).unwrap_err();
    match &err {
        Divergence::ReplicasDiffer { key, held } => {
            assert_eq!(key, "a");
            assert_eq!(held[1], Some((Value::from("a1"), v(1, 0))));
        }
        other => panic!("expected replicas to differ, got {other}"),
    }
    assert!(err.to_string().contains("replica 1 holds \"a1\""), "{err}");
}

#[test]
fn agreeing_on_an_older_write_is_wrong() {
    // Versions order by timestamp, then node: (3, 1) beats (3, 0).
    let state = replica(&[("a", "a3", v(3, 0)), ("c", "c1", v(5, 2))]);
    let err = check_converged(&[state.clone(), state], &writes()).unwrap_err();
    assert!(
        matches!(&err, Divergence::NotNewest { key, expected, .. }
            if key == "a" && *expected == Some((Value::from("a2"), v(3, 1)))),
        "{err}"
    );
}

#[test]
fn a_deleted_key_must_be_absent_and_a_live_one_present() {
    let resurrected = replica(&[
        ("a", "a2", v(3, 1)),
        ("b", "b1", v(2, 2)),
        ("c", "c1", v(5, 2)),
    ]);
    let err = check_converged(&[resurrected], &writes()).unwrap_err();
    assert!(
        matches!(&err, Divergence::NotNewest { key, expected: None, .. } if key == "b"),
        "{err}"
    );
    let lost = replica(&[("a", "a2", v(3, 1))]);
    let err = check_converged(&[lost.clone(), lost], &writes()).unwrap_err();
    assert!(
        matches!(&err, Divergence::NotNewest { key, held: None, .. } if key == "c"),
        "{err}"
    );
}

#[test]
fn values_nobody_wrote_are_reported() {
    let state = replica(&[
        ("a", "a2", v(3, 1)),
        ("c", "c1", v(5, 2)),
        ("z", "?", v(9, 0)),
    ]);
    let err = check_converged(&[state], &writes()).unwrap_err();
    assert!(
        matches!(&err, Divergence::NeverWritten { key, .. } if key == "z"),
        "{err}"
    );
}

#[test]
fn indeterminate_writes_may_win_only_above_every_known_version() {
    let mut all = writes();
    all.push(write("a", Some("a4"), None));
    all.push(write("c", None, None));
    let newer = replica(&[("a", "a4", v(7, 2))]);
    assert_eq!(check_converged(&[newer.clone(), newer], &all), Ok(()));
    let older = replica(&[("a", "a4", v(2, 2))]);
    let err = check_converged(&[older], &all).unwrap_err();
    assert!(
        matches!(&err, Divergence::NotNewest { key, .. } if key == "a"),
        "{err}"
    );
    // Or it never happened: the newest known writes stand.
    let without = replica(&[("a", "a2", v(3, 1)), ("c", "c1", v(5, 2))]);
    assert_eq!(check_converged(&[without], &all), Ok(()));
}

#[test]
#[should_panic(expected = "two writes at version")]
fn two_writes_with_one_version_are_a_bad_input() {
    let dup = vec![
        write("a", Some("x"), Some(v(1, 0))),
        write("a", Some("y"), Some(v(1, 0))),
    ];
    let _ = check_converged(&[], &dup);
}

/// From a store that evicts, a key absent from every replica converged; replicas that
/// disagree, or agree on an older value, did not.
#[test]
fn evicted_everywhere_converged_but_evicted_somewhere_did_not() {
    let evicted = replica(&[("a", "a2", v(3, 1))]);
    let replicas = vec![evicted.clone(), evicted.clone(), evicted.clone()];
    assert!(
        check_converged(&replicas, &writes()).is_err(),
        "c is missing"
    );
    assert_eq!(check_converged_evicting(&replicas, &writes()), Ok(()));
    let holding_c = replica(&[("a", "a2", v(3, 1)), ("c", "c1", v(5, 2))]);
    let err = check_converged_evicting(&[evicted.clone(), holding_c, evicted], &writes());
    assert!(
        matches!(err, Err(Divergence::ReplicasDiffer { ref key, .. }) if key == "c"),
        "{err:?}"
    );
    let older = replica(&[("a", "a1", v(1, 0))]);
    let err = check_converged_evicting(&[older.clone(), older], &writes());
    assert!(
        matches!(err, Err(Divergence::NotNewest { ref key, .. }) if key == "a"),
        "{err:?}"
    );
}
