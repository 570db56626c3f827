//! `cargo fuzz run client_replies`: see `tailorkv_controlet::fuzzing::client_replies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailorkv_controlet::fuzzing::client_replies(data));
