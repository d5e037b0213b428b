//! Fuzz target `worker_message`: see `msdispatcher::fuzzing::worker_message` for what the bytes mean.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msdispatcher::fuzzing::worker_message(data));
