//! Entry point for fuzzing the configuration parsers: the QEMU-style command
//! line and the StratoVirt-style JSON file. Used by the cargo-fuzz target in
//! `machine_manager/fuzz` and by a unit test that replays its seed corpus.

use super::{json, parse_cmdline, single_line, ConfigError};

/// Parses `data` as a configuration. The first byte picks the parser: even
/// → command line (arguments separated by NUL bytes), odd → JSON text.
/// Errors are expected; a panic is a bug. Arguments naming a file to read
/// (`-config`) are dropped, so the fuzzer cannot make the parser read a
/// device such as `/dev/zero`; other paths are only checked with
/// `metadata`.
pub fn config_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        if let Ok(text) = std::str::from_utf8(rest) {
            check(json::parse_json("fuzz.json", text).map(|_| ()));
        }
        return;
    }
    let mut args: Vec<String> = rest
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let Some(i) = args.iter().position(|a| a == "-config" || a == "--config") {
        args.truncate(i);
    }
    check(parse_cmdline(&args).map(|_| ()));
}

/// Every error must print (as the binary prints it) as one non-empty line.
fn check(result: Result<(), ConfigError>) {
    if let Err(e) = result {
        let msg = single_line(&e.to_string());
        assert!(!msg.is_empty(), "empty error message");
        assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus of the fuzz target runs on stable Rust too.
    #[test]
    fn seed_corpus_runs_without_panics() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/config_input");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read seed");
            config_input(&data);
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds");
    }
}
