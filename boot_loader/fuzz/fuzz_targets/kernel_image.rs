//! libFuzzer target: kernel image detection and loading (bzImage, ELF,
//! PVH note) into a small guest RAM (see
//! `boot_loader::fuzzing::load_image`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = boot_loader::fuzzing::load_image(data);
});
