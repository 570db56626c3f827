//! Randomized histories for the causal check: those of a simulated causal store (and of a
//! linearizable one) must pass; those of a store that applies writes before their causes
//! must mostly fail. Each case prints its seed when it goes wrong; `CHECKER_SEED=<seed>`
//! replays that one seed. Also: the time a large history takes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::causal_reference::{self, Finding};
use super::causal_sim::{self, SimShape};
use super::gen::{self, Shape};
use super::{heavy, show};
use crate::checker::{check_causal, CausalVerdict, CausalViolation, History};

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

#[test]
fn simulated_causal_histories_pass() {
    let _heavy = heavy();
    for seed in seeds(400) {
        let mut rng = rng(seed);
        let shape = SimShape::random(&mut rng);
        let run = causal_sim::run(&mut rng, &shape);
        let v = check_causal(&run.history);
        assert!(
            v.is_consistent(),
            "seed {seed}: {v}\n{}",
            show(&run.history)
        );
    }
}

#[test]
fn simulated_linearizable_histories_are_causal() {
    let _heavy = heavy();
    for seed in seeds(300) {
        let mut rng = rng(seed);
        let shape = Shape {
            incr: false,
            ..Shape::random(&mut rng)
        };
        let history = gen::linearizable(&mut rng, &shape);
        let v = check_causal(&history);
        assert!(v.is_consistent(), "seed {seed}: {v}\n{}", show(&history));
    }
}

/// A store that now and then applies a write before its causes, on few keys, so that
/// clients likely see it.
fn mutant_shape(rng: &mut SmallRng) -> SimShape {
    SimShape {
        replicas: rng.random_range(3..=4),
        clients: rng.random_range(3..=6),
        ops_per_client: rng.random_range(20..=50),
        keys: rng.random_range(1..=2),
        indeterminate: [0.0, 0.05][rng.random_range(0..2)],
        deliver: 0.4,
        skip_deps: 0.5,
    }
}

#[test]
fn writes_applied_before_their_causes_are_caught() {
    let _heavy = heavy();
    let (mut mutated, mut caught) = (0, 0);
    for seed in seeds(300) {
        let mut rng = rng(seed);
        let shape = mutant_shape(&mut rng);
        let run = causal_sim::run(&mut rng, &shape);
        if run.early == 0 {
            continue;
        }
        mutated += 1;
        let v = check_causal(&run.history);
        if !v.is_consistent() {
            assert!(v.violation().is_some(), "seed {seed}: {v}");
            caught += 1;
        }
    }
    eprintln!("writes applied early: caught in {caught} of {mutated} runs");
    if std::env::var("CHECKER_SEED").is_err() {
        assert!(mutated >= 200, "only {mutated} runs applied a write early");
        assert!(caught * 3 >= mutated * 2, "caught in {caught} of {mutated}");
    }
}

#[test]
fn reads_of_values_never_written_are_caught() {
    let _heavy = heavy();
    let mut mutated = 0;
    for seed in seeds(200) {
        let mut rng = rng(seed);
        let shape = SimShape::random(&mut rng);
        let run = causal_sim::run(&mut rng, &shape);
        let Some(bad) = gen::never_written(&mut rng, &run.history) else {
            continue;
        };
        mutated += 1;
        let v = check_causal(&bad);
        assert!(
            matches!(v.violation(), Some(CausalViolation::NeverWritten { .. })),
            "seed {seed}: {v}"
        );
    }
    assert!(mutated >= 50 || std::env::var("CHECKER_SEED").is_ok());
}

/// What the fast check found, in the reference's terms.
fn finding(verdict: &CausalVerdict) -> Option<Finding> {
    Some(match verdict.violation()? {
        CausalViolation::NeverWritten { read } => Finding::NeverWritten(read.id),
        CausalViolation::Cycle { .. } => Finding::Cycle,
        CausalViolation::StaleRead { read, .. } => Finding::StaleRead(read.id),
        CausalViolation::LostWrite { read, .. } => Finding::LostWrite(read.id),
    })
}

/// Histories of tens to hundreds of ops, of every kind the generators make: of the causal
/// store and its mutant, of a linearizable store and its mutants.
fn varied_histories(seed: u64) -> Vec<(&'static str, History)> {
    let mut rng = rng(seed);
    let shape = SimShape::random(&mut rng);
    let mut out = vec![("causal", causal_sim::run(&mut rng, &shape).history)];
    let shape = mutant_shape(&mut rng);
    out.push(("early", causal_sim::run(&mut rng, &shape).history));
    let shape = Shape {
        incr: false,
        ops_per_client: rng.random_range(1..=20),
        ..Shape::random(&mut rng)
    };
    let linearizable = gen::linearizable(&mut rng, &shape);
    type Mutation = fn(&mut SmallRng, &History) -> Option<History>;
    let mutations: [(&str, Mutation); 4] = [
        ("stale read", gen::stale_read),
        ("never written", gen::never_written),
        ("lost write", gen::lost_write),
        ("back in time", gen::back_in_time),
    ];
    for (name, mutate) in mutations {
        out.extend(mutate(&mut rng, &linearizable).map(|h| (name, h)));
    }
    out.push(("linearizable", linearizable));
    out
}

/// The vector clocks and the latest-write shortcuts find exactly what the definition,
/// checked directly, finds first.
#[test]
fn the_check_agrees_with_the_definition() {
    let _heavy = heavy();
    let mut found: HashMap<&str, (usize, usize)> = HashMap::new();
    for seed in seeds(300) {
        for (name, history) in varied_histories(seed) {
            let fast = finding(&check_causal(&history));
            let slow = causal_reference::check(&history);
            assert_eq!(fast, slow, "seed {seed}, {name}\n{}", show(&history));
            let counts = found.entry(name).or_default();
            counts.0 += usize::from(slow.is_some());
            counts.1 += 1;
        }
    }
    eprintln!("violations found, of histories checked: {found:?}");
}

/// 20,000 ops from 10 clients on 100 keys, through 5 replicas, 1% without a reply.
fn large(skip_deps: f64) -> causal_sim::Run {
    let shape = SimShape {
        replicas: 5,
        clients: 10,
        ops_per_client: 2000,
        keys: 100,
        indeterminate: 0.01,
        deliver: 0.5,
        skip_deps,
    };
    causal_sim::run(&mut rng(11), &shape)
}

const LIMIT: Duration = Duration::from_secs(2);

#[test]
fn twenty_thousand_ops_check_quickly() {
    let _heavy = heavy();
    let run = large(0.0);
    assert_eq!(run.history.len(), 20_000);
    let start = Instant::now();
    let v = check_causal(&run.history);
    let took = start.elapsed();
    eprintln!("causal, 20000 ops, 10 clients, 100 keys: {took:?}");
    assert!(v.is_consistent(), "{v}");
    assert!(took < LIMIT, "took {took:?}");
    let run = large(0.05);
    let start = Instant::now();
    let v = check_causal(&run.history);
    let took = start.elapsed();
    eprintln!(
        "causal, 20000 ops, {} writes applied early: {took:?}",
        run.early
    );
    assert!(!v.is_consistent(), "{v}");
    assert!(took < LIMIT, "took {took:?}");
}
