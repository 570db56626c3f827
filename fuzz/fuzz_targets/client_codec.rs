//! `cargo fuzz run client_codec`: see `tailorkv_controlet::fuzzing::client_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailorkv_controlet::fuzzing::client_codec(data));
