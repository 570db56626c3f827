//! The fuzzers' findings as ordinary tests: every input kept under `fuzz/corpus/<target>/`
//! (the corpora `cargo fuzz` built) and `fuzz/regressions/<target>/` (inputs that once made
//! a target fail, kept after the fix) goes through its target's function
//! (`tailorkv_controlet::fuzzing`), which panics if anything it checks does not hold.

use std::path::Path;

use tailorkv_controlet::fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("client_codec", fuzzing::client_codec),
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
