//! Fuzz target `mapping_engine`: see `msdispatcher::fuzzing::mapping_engine` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::mapping_engine(data));
