//! Fuzz target `channel_option`: see `msdispatcher::fuzzing::channel_option` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::channel_option(data));
