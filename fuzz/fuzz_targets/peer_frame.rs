//! `cargo fuzz run peer_frame`: see `tailorkv_controlet::fuzzing::peer_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailorkv_controlet::fuzzing::peer_frame(data));
