//! Picking seeds, and replaying them from the environment.

use std::fmt;

/// Replays what the environment names: `<prefix>_SEED=<n>` (0 if unset) runs one seed and
/// prints what `describe` says of it, `<prefix>_SEED=<a>..<b>` runs every seed in the range
/// and lists the failures; `<prefix>_TRACE=1|2` traces them.
pub fn replay<S: fmt::Debug, F: fmt::Display>(
    prefix: &str,
    describe: impl Fn(u64) -> String,
    run: impl Fn(u64, u8) -> Result<S, F>,
) {
    let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
    let spec = var("SEED").unwrap_or_else(|| "0".to_string());
    let trace = var("TRACE")
        .and_then(|s| s.trim().parse::<u8>().ok())
        .unwrap_or(0);
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{prefix}_SEED is a number or a range"))
    };
    if let Some((a, b)) = spec.split_once("..") {
        let mut failed = Vec::new();
        for seed in number(a)..number(b) {
            if let Err(f) = run(seed, trace) {
                println!("{f}");
                failed.push(seed);
            }
        }
        assert!(
            failed.is_empty(),
            "{} seeds failed: {failed:?}",
            failed.len()
        );
        return;
    }
    let seed = number(&spec);
    println!("seed {seed}: {}", describe(seed));
    match run(seed, trace) {
        Ok(stats) => println!("seed {seed} passed: {stats:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// The first `count` seeds whose configuration, among `configs` that repeat with the seed,
/// is `config`.
pub fn seeds<C: PartialEq>(
    config: C,
    configs: u64,
    of_seed: impl Fn(u64) -> C,
    count: u64,
) -> impl Iterator<Item = u64> {
    let k = (0..configs)
        .find(|&s| of_seed(s) == config)
        .expect("a known configuration");
    (0..count).map(move |j| j * configs + k)
}
