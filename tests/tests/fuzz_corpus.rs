//! The fuzzers' findings as ordinary tests: every input kept under `fuzz/corpus/<target>/`
//! (the corpora `cargo fuzz` built) and `fuzz/regressions/<target>/` (inputs that once made
//! a target fail, kept after the fix) goes through its target's function
//! (`tailorkv_controlet::fuzzing`), which panics if anything it checks does not hold; then 30
//! seconds of random mutations of them (a fuzz smoke on the stable toolchain).

use std::path::Path;

use tailorkv_controlet::fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("client_codec", fuzzing::client_codec),
    ("binary_codec", fuzzing::binary_codec),
    ("client_replies", fuzzing::client_replies),
    ("peer_frame", fuzzing::peer_frame),
    ("tob_step", fuzzing::tob_step),
];

/// Runs every file in `dir` through `target`; how many there were.
fn replay(dir: &Path, target: Target) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let caught = std::panic::catch_unwind(|| target(&data));
        assert!(caught.is_ok(), "{} fails its target", path.display());
        n += 1;
    }
    n
}

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in TARGETS {
        let corpus = replay(&fuzz.join("corpus").join(name), target);
        let regressions = replay(&fuzz.join("regressions").join(name), target);
        assert!(
            corpus > 0,
            "no corpus for {name} in fuzz/corpus/{name}: the fuzzers' inputs are committed"
        );
        eprintln!("{name}: {corpus} corpus inputs, {regressions} regression cases");
    }
}

/// Seconds of mutation per target in [`random_mutations_of_the_corpus_pass_their_targets`]
/// (`TAILORKV_FUZZ_SMOKE_SECS`, default 6: 30 s for the five).
fn smoke_secs() -> u64 {
    std::env::var("TAILORKV_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

/// `input` changed by a few random edits of the kinds libFuzzer makes: a bit flipped, a byte
/// set, bytes inserted, a range removed or repeated, or a splice with `other`.
fn mutate(rng: &mut rand::rngs::StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    use rand::RngExt;
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = at.min(len - 1);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = at.min(len - 1);
                out[i] = *[0u8, 0xff, b' ', b'\r', b'\n', b'0', b'9', rng.random()]
                    .get(rng.random_range(0..8))
                    .unwrap();
            }
            2 => {
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let end = (at + rng.random_range(1..=32)).min(len);
                out.drain(at.min(end)..end);
            }
            4 if len > 0 => {
                let end = (at + rng.random_range(1..=32)).min(len);
                let piece = out[at.min(end)..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => {
                let from = rng.random_range(0..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
    out
}

/// Runs random mutations of `inputs` through `target` for `secs` seconds; how many ran, or
/// where the failing input was written.
fn smoke(
    name: &str,
    target: Target,
    inputs: &[Vec<u8>],
    seed: u64,
    secs: u64,
) -> Result<u64, String> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ name.len() as u64);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut runs = 0u64;
    while std::time::Instant::now() < until {
        let input = &inputs[rng.random_range(0..inputs.len())];
        let other = &inputs[rng.random_range(0..inputs.len())];
        let data = mutate(&mut rng, input, other);
        runs += 1;
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            let path = std::env::temp_dir().join(format!("tailorkv-fuzz-{name}-{seed}"));
            std::fs::write(&path, &data).unwrap();
            return Err(format!(
                "{name}: run {runs} fails; input in {}",
                path.display()
            ));
        }
    }
    Ok(runs)
}

/// A fuzz smoke that needs no nightly build: for [`smoke_secs`] per target, random
/// mutations of the committed corpus go through the target's checks. It is not guided by
/// coverage, as `cargo fuzz` (scripts/fuzz) is, but it runs on every test run. The seed is
/// printed, and a failing input is written out, so a failure can be replayed
/// (`TAILORKV_FUZZ_SEED=N`) and kept under `fuzz/regressions/`.
#[test]
fn random_mutations_of_the_corpus_pass_their_targets() {
    let seed = std::env::var("TAILORKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("fuzz smoke: seed {seed} (replay with TAILORKV_FUZZ_SEED={seed})");
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let mut inputs = Vec::new();
        for dir in ["corpus", "regressions"] {
            if let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(name)) {
                for entry in entries {
                    inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
                }
            }
        }
        assert!(!inputs.is_empty(), "no corpus for {name}");
        match smoke(name, target, &inputs, seed, smoke_secs()) {
            Ok(runs) => {
                eprintln!("fuzz smoke: {name}: {runs} mutated inputs");
                assert!(
                    runs > 100,
                    "{name}: only {runs} inputs in {}s",
                    smoke_secs()
                );
            }
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "seed {seed}: {failures:?}");
}

/// The smoke finds a fault planted where only mutations reach: a target that fails on two
/// bytes no seed input holds.
#[test]
fn the_smoke_finds_a_planted_fault() {
    fn planted(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == b"\xde\xad"), "planted fault");
    }
    let inputs = vec![b"get a b c\r\n".to_vec(), b"set k 0 0 1\r\nx\r\n".to_vec()];
    let found = smoke("planted", planted, &inputs, 7, 30);
    assert!(
        found.is_err(),
        "30 s of mutations did not reach the planted fault"
    );
}
