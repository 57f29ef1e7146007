//! libFuzzer target: guest-built descriptor chains through virtio-blk requests (IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES)
//! (see `virtio::fuzzing::Fuzzer::virtqueue`).
#![no_main]

use std::sync::OnceLock;

use virtio::fuzzing::{Device, Fuzzer};

static FUZZER: OnceLock<Fuzzer> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    FUZZER
        .get_or_init(|| Fuzzer::new().expect("fuzzer set-up"))
        .virtqueue(Device::Block, data);
});
