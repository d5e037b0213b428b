//! Fuzz target `imta_cnf`: see `msdispatcher::fuzzing::imta_cnf` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::imta_cnf(data));
