//! Fuzz target `dispatcher_cnf`: see `msdispatcher::fuzzing::dispatcher_cnf` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::dispatcher_cnf(data));
