//! `cargo fuzz run binary_codec`: see `tailorkv_controlet::fuzzing::binary_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailorkv_controlet::fuzzing::binary_codec(data));
