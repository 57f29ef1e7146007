//! Entry point for fuzzing Kata's `configuration.toml` handling: TOML
//! parsing, drop-in merging, decoding into the configuration types and
//! validation, then the VMM command line built from an accepted
//! configuration. Used by the cargo-fuzz target in `shim/fuzz` and by a
//! unit test that replays its seed corpus.

use std::path::{Path, PathBuf};

use crate::cmdline::{build_args, uuid_for, BootDevices, VmSpec};
use crate::config::{Flavour, MAX_HOTPLUG_SLOTS, MAX_VCPUS};
use crate::config_load::load_texts;

/// Most drop-ins an input may carry.
const MAX_DROP_INS: usize = 4;

/// Loads `data` as a configuration file plus drop-ins.
///
/// Byte 0 picks the section to select (modulo 3: none, `stratovirt`,
/// `qemu`). The rest, read as UTF-8 (invalid sequences replaced), is split
/// at NUL bytes: the first part is `configuration.toml`, the next ones
/// (at most four) are `config.d/` drop-ins applied in order. Paths named
/// in the text are only checked with `stat`, never opened.
///
/// Errors are expected; a panic is a bug, and so is an error message
/// spanning several lines or an accepted configuration that breaks the
/// documented limits.
pub fn config_toml(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let select = match sel % 3 {
        0 => None,
        1 => Some(Flavour::StratoVirt),
        _ => Some(Flavour::Qemu),
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let main = parts.next().unwrap_or_default();
    let file = Path::new("/fuzz/configuration.toml");
    let extra: Vec<(PathBuf, String)> = parts
        .take(MAX_DROP_INS)
        .enumerate()
        .map(|(i, t)| (PathBuf::from(format!("/fuzz/config.d/{i}.toml")), t.into()))
        .collect();
    let loaded = match load_texts(file, main, &extra, select) {
        Ok(l) => l,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "empty error message");
            assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
            return;
        }
    };
    let h = &loaded.hypervisor;
    assert!((1..=MAX_VCPUS as i32).contains(&h.default_vcpus));
    assert!(h.default_maxvcpus >= h.default_vcpus as u32 && h.default_maxvcpus <= MAX_VCPUS);
    assert!(h.default_memory >= 16);
    assert!(h.blk_slots <= MAX_HOTPLUG_SLOTS && h.net_slots <= MAX_HOTPLUG_SLOTS);
    assert!(h.guest_cid >= 3 && h.path.starts_with('/'));
    assert_eq!(
        Flavour::from_section(&loaded.hypervisor_name),
        Some(loaded.flavour)
    );
    assert_eq!(loaded.config.hypervisor.len(), 1);
    assert!(loaded.config.agent.contains_key("kata"));
    if let Some(want) = select {
        assert_eq!(loaded.flavour, want);
    }
    let spec = VmSpec {
        id: "fuzz".into(),
        uuid: uuid_for("fuzz"),
        run_dir: PathBuf::from("/run/fuzz"),
        hv: h.clone(),
        devices: BootDevices::default(),
        jail: None,
        factory: Default::default(),
    };
    let args = build_args(loaded.flavour, &spec);
    assert!(!args.is_empty(), "empty VMM command line");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus of the fuzz target runs on stable Rust too.
    #[test]
    fn seed_corpus_runs_without_panics() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/config_toml");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read seed");
            config_toml(&data);
            n += 1;
        }
        assert!(n >= 4, "only {n} seeds");
    }

    /// A complete seed is accepted (the target gets past validation).
    #[test]
    fn a_valid_seed_loads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/config_toml");
        let data = std::fs::read(format!("{dir}/seed-stratovirt")).expect("seed");
        let text = String::from_utf8_lossy(&data[1..]).into_owned();
        let loaded = load_texts(Path::new("/fuzz/c.toml"), &text, &[], None).expect("valid");
        assert_eq!(loaded.flavour, Flavour::StratoVirt);
    }
}
