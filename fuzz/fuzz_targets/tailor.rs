//! Fuzz target `tailor`: see `msdispatcher::fuzzing::tailor` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::tailor(data));
