//! libFuzzer target: the command-line and JSON configuration parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    machine_manager::config::fuzzing::config_input(data);
});
