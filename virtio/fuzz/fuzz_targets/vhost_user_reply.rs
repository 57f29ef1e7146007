//! libFuzzer target: what a vhost-user back-end sends back to the
//! frontend (see `virtio::fuzzing::vhost_user_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    virtio::fuzzing::vhost_user_reply(data);
});
