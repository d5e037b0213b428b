//! Fuzz target `mapping_template`: see `msdispatcher::fuzzing::mapping_template` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::mapping_template(data));
