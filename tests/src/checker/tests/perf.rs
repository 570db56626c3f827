//! Timings: a realistic per-key history must check well under a second, even in a debug
//! build. Run with `--nocapture` to see the numbers.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::gen::{self, Shape};
use super::heavy;
use crate::checker::{check_linearizable, check_write_order, Budget, History, Verdict};

/// 2,000 ops on one key from 5 clients, each op overlapping a few others, 1% of them
/// without a reply.
fn busy_key(seed: u64) -> History {
    let shape = Shape {
        clients: 5,
        ops_per_client: 400,
        keys: 1,
        indeterminate: 0.01,
        incr: true,
        counter: false,
        max_gap: 10,
        max_latency: 40,
    };
    gen::linearizable(&mut SmallRng::seed_from_u64(seed), &shape)
}

const LIMIT: Duration = Duration::from_secs(1);

#[test]
fn two_thousand_ops_from_five_clients_check_in_well_under_a_second() {
    let _heavy = heavy();
    let history = busy_key(7);
    assert_eq!(history.len(), 2000);
    let start = Instant::now();
    let v = check_linearizable(&history, Budget::default());
    let took = start.elapsed();
    eprintln!("linearizable, 2000 ops, 5 clients: {took:?}");
    assert!(v.is_linearizable(), "{v}");
    assert!(took < LIMIT, "took {took:?}");
}

#[test]
fn a_violation_in_two_thousand_ops_is_found_and_shrunk_quickly() {
    let _heavy = heavy();
    let history = busy_key(8);
    let mut rng = SmallRng::seed_from_u64(8);
    let bad = gen::stale_read(&mut rng, &history).expect("a stale read to plant");
    let start = Instant::now();
    let v = check_linearizable(&bad, Budget::default());
    let took = start.elapsed();
    let Verdict::NotLinearizable(why) = v else {
        panic!("expected a violation, got {v}");
    };
    eprintln!(
        "not linearizable, 2000 ops: found and shrunk to {} ops in {took:?}",
        why.core.len()
    );
    assert!(took < 4 * LIMIT, "took {took:?}");
}

#[test]
fn write_order_of_two_thousand_ops_checks_quickly() {
    let _heavy = heavy();
    let shape = Shape {
        clients: 5,
        ops_per_client: 400,
        keys: 1,
        indeterminate: 0.01,
        incr: false,
        counter: false,
        max_gap: 10,
        max_latency: 40,
    };
    let history = gen::sequential(&mut SmallRng::seed_from_u64(9), &shape);
    let start = Instant::now();
    let v = check_write_order(&history);
    let took = start.elapsed();
    eprintln!("write order, 2000 ops, 5 clients: {took:?}");
    assert!(v.is_consistent(), "{v}");
    assert!(took < LIMIT, "took {took:?}");
}
