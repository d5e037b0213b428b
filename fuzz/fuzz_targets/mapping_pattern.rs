//! Fuzz target `mapping_pattern`: see `msdispatcher::fuzzing::mapping_pattern` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::mapping_pattern(data));
