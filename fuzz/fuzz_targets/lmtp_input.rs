//! Fuzz target `lmtp_input`: see `msdispatcher::fuzzing::lmtp_input` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::lmtp_input(data));
