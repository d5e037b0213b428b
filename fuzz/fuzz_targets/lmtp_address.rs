//! Fuzz target `lmtp_address`: see `msdispatcher::fuzzing::lmtp_address` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::lmtp_address(data));
