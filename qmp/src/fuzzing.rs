//! Entry point for fuzzing the input path: framer, JSON parsing, request
//! checks and command decoding, with a handler that does nothing.
//!
//! Used by the cargo-fuzz target in `qmp/fuzz` and by a unit test that
//! replays its seed corpus, so the corpus is exercised on stable Rust too.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::fds::{FdLookup, FdStore};
use crate::framer::{Framer, MAX_MESSAGE_SIZE};
use crate::protocol::{QmpHandler, Session};
use crate::{QmpCommand, QmpError};

struct NullHandler;

impl QmpHandler for NullHandler {
    fn execute(&self, cmd: QmpCommand, fds: &mut dyn FdLookup) -> Result<Value, QmpError> {
        if let QmpCommand::NetdevAdd(n) = &cmd {
            let crate::NetdevBackend::Tap(tap) = &n.backend;
            for name in tap.fd_names() {
                let _ = fds.take_fd(name);
            }
        }
        Ok(json!({"command": cmd.name()}))
    }
}

/// Runs `data` through a fresh connection's input path and checks that
/// every reply is one line of valid JSON and that the framer stays within
/// its memory limit. Panics on a violated invariant.
///
/// The first byte selects the read size (1 to 256 bytes per read) and, with
/// its top bit, whether the session starts already negotiated.
pub fn run_input(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x7f) * 2 + 1;
    let mut session = Session::new(
        Arc::new(NullHandler),
        Arc::new(Mutex::new(FdStore::default())),
    );
    if ctl & 0x80 != 0 {
        session.handle_value(json!({"execute": "qmp_capabilities"}));
    }
    let mut framer = Framer::new();
    for mut piece in rest.chunks(chunk) {
        while !piece.is_empty() {
            let (used, frame) = framer.feed(piece);
            assert!(used > 0, "framer made no progress");
            piece = &piece[used..];
            assert!(framer.buffered() <= MAX_MESSAGE_SIZE);
            if let Some(frame) = frame {
                let line = session.handle_frame(frame).to_line();
                let body = line
                    .strip_suffix("\r\n")
                    .unwrap_or_else(|| panic!("reply without CRLF: {line:?}"));
                assert!(!body.contains(['\r', '\n']), "multi-line reply: {line:?}");
                let v: Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"));
                assert!(v.get("return").is_some() || v.get("error").is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_files() -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/qmp_input");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn replays_the_seed_corpus() {
        let files = corpus_files();
        assert!(files.len() >= 10, "seed corpus missing");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            run_input(&data);
            // Every read size and both negotiation states.
            for ctl in [0u8, 0x80, 0x01, 0x83, 0xff] {
                let mut d = data.clone();
                if let Some(b) = d.first_mut() {
                    *b = ctl;
                }
                run_input(&d);
            }
        }
    }

    #[test]
    fn pseudo_random_inputs() {
        // A small deterministic generator: mixes corpus fragments and noise.
        let seeds: Vec<Vec<u8>> = corpus_files()
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut input = vec![(next() & 0xff) as u8];
            for _ in 0..(next() % 6) {
                let s = &seeds[(next() as usize) % seeds.len()];
                let start = (next() as usize) % (s.len().max(1));
                let end = start + (next() as usize) % (s.len() - start + 1);
                input.extend_from_slice(&s[start..end]);
                if next() % 3 == 0 {
                    input.push((next() & 0xff) as u8);
                }
            }
            run_input(&input);
        }
    }
}
