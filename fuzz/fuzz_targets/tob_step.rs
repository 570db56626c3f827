//! `cargo fuzz run tob_step`: see `tailorkv_controlet::fuzzing::tob_step`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailorkv_controlet::fuzzing::tob_step(data));
