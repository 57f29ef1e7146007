//! Helpers shared by the shim's integration tests: where the built
//! binaries and the test guest are, a strict Prometheus text parser, and
//! network namespaces.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `target/<triple>/debug` (the test binary lives in its `deps`).
pub fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `target/<triple>/debug/altovirt`, if built.
pub fn altovirt() -> Option<PathBuf> {
    let p = target_debug().join("altovirt");
    p.is_file().then_some(p)
}

/// The tiny PVH test guest (the `test_guests` crate builds it).
pub fn guest() -> PathBuf {
    PathBuf::from(test_guests::PVH)
}

/// True when `/dev/kvm` can be opened; otherwise prints why and skips
/// (returns false), except under CI=true or ALTOVIRT_REQUIRE_KVM=1, where
/// it fails. The same rule as the root tests' `kvm_usable`.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let must = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
            assert!(!must, "{test}: /dev/kvm is required here but unusable: {e}");
            eprintln!("SKIP {test}: /dev/kvm unusable ({e}); set up KVM to run this test");
            false
        }
    }
}

/// A parsed Prometheus text exposition, checked strictly: every sample's
/// family has `# HELP` and then `# TYPE` (once, before its samples), names
/// and label names are valid, label values are quoted with escapes,
/// values parse, series are unique, the text ends with a newline.
/// Samples by metric name: labels and value.
pub type Exposition = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

pub fn parse_prometheus(t: &str) -> Exposition {
    fn name_ok(n: &str, colon: bool) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
    }
    assert!(t.ends_with('\n'), "no final newline");
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut kind: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Exposition::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in t.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            let (n, h) = r.split_once(' ').unwrap_or((r, ""));
            assert!(name_ok(n, true) && !h.is_empty(), "{line}");
            assert!(
                help.insert(n.into(), h.into()).is_none(),
                "second HELP: {line}"
            );
            continue;
        }
        if let Some(r) = line.strip_prefix("# TYPE ") {
            let (n, k) = r.split_once(' ').unwrap();
            assert!(help.contains_key(n), "TYPE before HELP: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&k),
                "{line}"
            );
            assert!(!out.contains_key(n), "TYPE after samples: {line}");
            assert!(
                kind.insert(n.into(), k.into()).is_none(),
                "second TYPE: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            x => x.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        assert!(name_ok(name, true), "{line}");
        assert!(kind.contains_key(name), "sample without TYPE: {line}");
        if kind[name] == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").expect(line);
            assert!(name_ok(k, false), "{line}");
            let mut val = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect(line) {
                    (_, '\\') => match chars.next().expect(line).1 {
                        'n' => val.push('\n'),
                        c @ ('\\' | '"') => val.push(c),
                        c => panic!("bad escape \\{c}: {line}"),
                    },
                    (i, '"') => break i,
                    (_, c) => val.push(c),
                }
            };
            assert!(map.insert(k.to_string(), val).is_none(), "{line}");
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        assert!(seen.insert(series.to_string()), "duplicate series: {line}");
        out.entry(name.into()).or_default().push((map, v));
    }
    out
}

/// A network namespace made for one test, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn create(test: &str) -> Option<Netns> {
        let name = format!("shim{}{test}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
