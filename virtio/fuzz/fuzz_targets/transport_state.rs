//! libFuzzer target: a virtio-mmio window's saved state (the JSON a
//! snapshot's state file holds) restored into a fresh transport with a
//! real device, then register accesses (see
//! `virtio::fuzzing::Fuzzer::transport_state`).
#![no_main]

use std::sync::OnceLock;

use virtio::fuzzing::Fuzzer;

static FUZZER: OnceLock<Fuzzer> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    FUZZER
        .get_or_init(|| Fuzzer::new().expect("fuzzer set-up"))
        .transport_state(data);
});
