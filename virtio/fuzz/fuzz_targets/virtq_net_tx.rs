//! libFuzzer target: guest-built descriptor chains through the virtio-net transmit queue
//! (see `virtio::fuzzing::Fuzzer::virtqueue`).
#![no_main]

use std::sync::OnceLock;

use virtio::fuzzing::{Device, Fuzzer};

static FUZZER: OnceLock<Fuzzer> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    FUZZER
        .get_or_init(|| Fuzzer::new().expect("fuzzer set-up"))
        .virtqueue(Device::NetTx, data);
});
