//! Fuzzes the QMP input path: framer, JSON parsing, request checks and
//! command decoding. The first input byte selects the read size and the
//! negotiation state (see `qmp::fuzzing::run_input`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qmp::fuzzing::run_input(data);
});
