//! libFuzzer target: register access sequences on a virtio-mmio transport
//! holding a real device (see `virtio::fuzzing::Fuzzer::mmio`).
#![no_main]

use std::sync::OnceLock;

use virtio::fuzzing::Fuzzer;

static FUZZER: OnceLock<Fuzzer> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    FUZZER
        .get_or_init(|| Fuzzer::new().expect("fuzzer set-up"))
        .mmio(data);
});
