//! libFuzzer target: Kata `configuration.toml` parsing, drop-in merging
//! and validation (see `shim::fuzzing::config_toml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shim::fuzzing::config_toml(data);
});
