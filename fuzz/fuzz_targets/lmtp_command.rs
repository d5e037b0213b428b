//! Fuzz target `lmtp_command`: see `msdispatcher::fuzzing::lmtp_command` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::lmtp_command(data));
