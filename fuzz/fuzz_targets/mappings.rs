//! Fuzz target `mappings`: see `msdispatcher::fuzzing::mappings` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::mappings(data));
