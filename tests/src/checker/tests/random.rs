//! Randomized histories: those of simulated correct systems must pass, their mutants must
//! fail. Each case prints its seed when it goes wrong; `CHECKER_SEED=<seed>` replays that one
//! seed (`cargo test -p tailorkv-tests --lib checker -- --nocapture`).

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::gen::{self, Shape};
use super::heavy;
use super::show;
use crate::checker::{
    check_linearizable, check_sequential, check_write_order, Budget, History, OrderVerdict,
    SequentialVerdict, Verdict,
};

/// The seeds to run: `CHECKER_SEED` alone if set, else `0..count`.
fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("CHECKER_SEED") {
        Ok(seed) => vec![seed.parse().expect("CHECKER_SEED is a number")],
        Err(_) => (0..count).collect(),
    }
}

fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// A random linearizable history of a random shape.
fn linearizable(seed: u64) -> History {
    let mut rng = rng(seed);
    let shape = Shape::random(&mut rng);
    gen::linearizable(&mut rng, &shape)
}

#[test]
fn simulated_linearizable_histories_pass() {
    let _heavy = heavy();
    for seed in seeds(400) {
        let history = linearizable(seed);
        let v = check_linearizable(&history, Budget::default());
        assert!(v.is_linearizable(), "seed {seed}: {v}\n{}", show(&history));
    }
}

#[test]
fn mutated_linearizable_histories_fail() {
    let _heavy = heavy();
    type Mutation = fn(&mut SmallRng, &History) -> Option<History>;
    let mutations: [(&str, Mutation); 4] = [
        ("stale read", gen::stale_read),
        ("never written", gen::never_written),
        ("lost write", gen::lost_write),
        ("back in time", gen::back_in_time),
    ];
    for (name, mutate) in mutations {
        let mut mutated = 0;
        for seed in seeds(300) {
            let history = linearizable(seed);
            let Some(bad) = mutate(&mut rng(seed ^ 0xbad), &history) else {
                continue;
            };
            mutated += 1;
            let v = check_linearizable(&bad, Budget::default());
            assert!(
                matches!(v, Verdict::NotLinearizable(_)),
                "seed {seed}, {name}: expected a violation, got {v}"
            );
        }
        let enough = if std::env::var("CHECKER_SEED").is_ok() {
            0
        } else {
            50
        };
        assert!(
            mutated >= enough,
            "{name}: only {mutated} histories mutated"
        );
    }
}

#[test]
fn simulated_linearizable_histories_are_sequentially_consistent() {
    let _heavy = heavy();
    for seed in seeds(300) {
        let mut rng = rng(seed);
        let shape = Shape {
            incr: false,
            ..Shape::random(&mut rng)
        };
        let history = gen::linearizable(&mut rng, &shape);
        let v = check_write_order(&history);
        assert!(v.is_consistent(), "seed {seed}: {v}\n{}", show(&history));
    }
}

/// A small shape, for the exhaustive sequential search.
fn small(rng: &mut SmallRng) -> Shape {
    Shape {
        clients: 3,
        ops_per_client: 6,
        keys: 1,
        ..Shape::random(rng)
    }
}

#[test]
fn simulated_sequential_histories_pass_both_sequential_checks() {
    let _heavy = heavy();
    for seed in seeds(300) {
        let mut rng = rng(seed);
        let shape = Shape::random(&mut rng);
        let history = gen::sequential(&mut rng, &shape);
        let v = check_write_order(&history);
        assert!(v.is_consistent(), "seed {seed}: {v}\n{}", show(&history));
        let shape = small(&mut rng);
        let history = gen::sequential(&mut rng, &shape);
        let v = check_sequential(&history, Budget::default());
        assert!(v.is_consistent(), "seed {seed}: {v}\n{}", show(&history));
    }
}

#[test]
fn sequential_histories_going_back_in_time_fail_both_sequential_checks() {
    let _heavy = heavy();
    let mut mutated = 0;
    for seed in seeds(300) {
        let mut rng = rng(seed);
        let shape = Shape::random(&mut rng);
        let history = gen::sequential(&mut rng, &shape);
        if let Some(bad) = gen::back_in_time(&mut rng, &history) {
            mutated += 1;
            let v = check_write_order(&bad);
            assert!(
                matches!(v, OrderVerdict::Inconsistent(_)),
                "seed {seed}: {v}"
            );
        }
        let shape = small(&mut rng);
        let history = gen::sequential(&mut rng, &shape);
        if let Some(bad) = gen::back_in_time(&mut rng, &history) {
            let v = check_sequential(&bad, Budget::default());
            assert!(
                matches!(v, SequentialVerdict::NotSequentiallyConsistent(_)),
                "seed {seed}: {v}"
            );
        }
    }
    let enough = if std::env::var("CHECKER_SEED").is_ok() {
        0
    } else {
        100
    };
    assert!(mutated >= enough, "only {mutated} histories mutated");
}

#[test]
fn cuts_of_linearizable_histories_stay_linearizable() {
    // What shrinking relies on: cutting a linearizable history on the right, and on the
    // left with the key starting unknown, leaves it linearizable.
    use crate::checker::budget::Meter;
    use crate::checker::key_history::KeyHistory;
    use crate::checker::register::UNKNOWN;
    use crate::checker::search::SearchOutcome;
    use crate::checker::{shrink, wgl};

    let _heavy = heavy();
    for seed in seeds(300) {
        let history = linearizable(seed);
        let mut rng = rng(seed ^ 0xc07);
        for (key, ops) in history.by_key() {
            let ends: Vec<u64> = ops.iter().filter_map(|op| op.completed()).collect();
            let Some(&at) = ends.get(rng.random_range(0..ends.len().max(1))) else {
                continue;
            };
            let from = rng.random_bool(0.8).then(|| rng.random_range(0..=at));
            let trial = shrink::cut(&ops, at, from);
            let trial_ops: Vec<_> = trial.ops.iter().collect();
            let mut cut = KeyHistory::new(&trial_ops);
            if from.is_some() {
                cut.initial = UNKNOWN;
            }
            let outcome = wgl::search(&mut cut, &mut Meter::new(10_000_000, None));
            assert!(
                matches!(outcome, SearchOutcome::Found),
                "seed {seed}, key {key}: cut at {at} from {from:?} fails\n{}",
                show(&history)
            );
        }
    }
}

#[test]
fn larger_histories_are_never_misjudged() {
    // Many clients, many timeouts: the search may run out of budget (unknown), but must
    // never fail a correct history nor pass a broken one.
    let _heavy = heavy();
    let budget = Budget::steps(200_000);
    let (mut decided, mut cases) = (0, 0);
    for seed in seeds(30) {
        let mut rng = rng(seed);
        let shape = Shape {
            clients: rng.random_range(4..=8),
            ops_per_client: rng.random_range(20..=50),
            keys: rng.random_range(1..=2),
            indeterminate: [0.15, 0.3][rng.random_range(0..2)],
            incr: true,
            counter: rng.random_bool(0.5),
            ..Shape::random(&mut rng)
        };
        let history = gen::linearizable(&mut rng, &shape);
        let v = check_linearizable(&history, budget);
        assert!(
            !matches!(v, Verdict::NotLinearizable(_)),
            "seed {seed}: {v}"
        );
        let Some(bad) = gen::stale_read(&mut rng, &history) else {
            continue;
        };
        let w = check_linearizable(&bad, budget);
        assert!(!w.is_linearizable(), "seed {seed}: a stale read passed");
        cases += 2;
        decided +=
            usize::from(v.is_linearizable()) + usize::from(!matches!(w, Verdict::Unknown { .. }));
    }
    assert!(
        decided * 10 >= cases * 8,
        "only {decided} of {cases} decided"
    );
}
