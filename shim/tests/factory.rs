//! The VM factory through the real binaries: `altovirt-shim factory init`
//! boots the ticker guest (guest.exit=ticker: "tick N" lines, N counted in
//! guest memory) under altovirt, waits for "tick 2", and snapshots it into
//! template_path; `run` then starts sandboxes from the template: their
//! guests continue the count where the template stopped (no boot line, no
//! "tick 1", the same first tick in every clone) instead of booting. `status`, `destroy`, the cold-boot fallbacks and the
//! refusals.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{guest, kvm_usable, parse_prometheus, target_debug, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_altovirt-shim");

/// What a guest prints first when it boots.
const BOOT_LINE: &str = "altovirt-guest: boot=";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("shim-factory-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("initrd.img"), vec![0x5au8; 4096]).unwrap();
        Scratch(d)
    }

    fn template(&self) -> PathBuf {
        self.0.join("template")
    }

    fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }

    /// A configuration file `name` with templating on; `section` is
    /// `stratovirt` or `qemu`, `extra` goes into the section.
    fn config_with(&self, name: &str, section: &str, extra: &str, enable: bool) -> PathBuf {
        let f = self.0.join(name);
        let path = if section == "qemu" {
            "/usr/bin/qemu-system-x86_64".into()
        } else {
            target_debug().join("altovirt").display().to_string()
        };
        std::fs::write(
            &f,
            format!(
                r#"[hypervisor.{section}]
path = "{path}"
kernel = "{k}"
kernel_params = "guest.exit=ticker"
default_memory = 64
blk_slots = 2
{extra}

[factory]
enable_template = {enable}
template_path = "{t}"
"#,
                k = guest().display(),
                t = self.template().display()
            ),
        )
        .unwrap();
        f
    }

    fn config(&self) -> PathBuf {
        let initrd = format!("initrd = \"{}\"", self.0.join("initrd.img").display());
        self.config_with("configuration.toml", "stratovirt", &initrd, true)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shim(s: &Scratch, cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .arg("--run-dir")
        .arg(s.run_dir())
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Asserts exit status 1 and one stderr line containing `needle`.
fn fails(o: &Output, needle: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

/// A running `altovirt-shim run`.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    fn start(s: &Scratch, cfg: &Path, id: &str) -> Running {
        Self::start_in(&[], s, cfg, &["--id", id])
    }

    /// `run ARGS` through a prefix (`ip netns exec NS`).
    fn start_in(prefix: &[&str], s: &Scratch, cfg: &Path, args: &[&str]) -> Running {
        let stderr = s.0.join(format!("run-{}.stderr", args.join("_")));
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("--config")
            .arg(cfg)
            .arg("--run-dir")
            .arg(s.run_dir())
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let r = Running { child, stderr };
        assert!(
            !line.trim().is_empty(),
            "run printed no socket path: {}",
            r.stderr_text()
        );
        r
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `stop --id` ends it; `run` exits 0.
    fn stop(mut self, s: &Scratch, cfg: &Path, id: &str) {
        ok(&shim(s, cfg, &["stop", "--id", id]));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}: {}", self.stderr_text());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn console(s: &Scratch, id: &str) -> String {
    std::fs::read_to_string(s.run_dir().join(id).join("console.log")).unwrap_or_default()
}

/// Waits (20 s at most) for a console line of sandbox `id` containing
/// `needle`.
fn wait_console(s: &Scratch, id: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !console(s, id).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never on the console of {id}: {}",
            console(s, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of the first "tick N" line on a console.
fn first_tick(con: &str) -> u64 {
    con.lines()
        .find_map(|l| l.strip_prefix("tick "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tick line: {con}"))
}

fn status_json(s: &Scratch, cfg: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(&shim(s, cfg, &["status", "--id", id, "--json"]))).unwrap()
}

/// CPU time (ticks) of thread `tid` of process `pid`.
fn thread_ticks(pid: u64, tid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

/// The sandbox started from the template and its guest goes on from it:
/// no boot on its console, yet its vCPU keeps running the guest's loop.
fn assert_cloned(s: &Scratch, cfg: &Path, id: &str, r: &Running) {
    let err = r.stderr_text();
    let want = format!("restored from the template in {}", s.template().display());
    assert!(err.contains(&want), "{err}");
    let st = status_json(s, cfg, id);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["template"], s.template().display().to_string(), "{st}");
    let pid = st["vmm_pid"].as_u64().unwrap();
    let tid = st["vcpu_threads"]["0"].as_u64().unwrap();
    let before = thread_ticks(pid, tid);
    std::thread::sleep(Duration::from_millis(1500));
    let after = thread_ticks(pid, tid);
    // The ticker guest polls the TSC without pause: a busy vCPU.
    assert!(after > before + 10, "vCPU idle: {before} -> {after} ticks");
    let con = console(s, id);
    assert!(!con.contains(BOOT_LINE), "the clone booted: {con}");
    // The count goes on from the template (taken after "tick 2").
    let first = first_tick(&con);
    assert!(first > 2, "the clone counts from {first}: {con}");
    let log = std::fs::read_to_string(s.run_dir().join(id).join("vmm.log")).unwrap_or_default();
    assert!(!log.contains("guest boot complete"), "{log}");
}

#[test]
fn template_init_status_run_destroy() {
    if !kvm_usable("template_init_status_run_destroy") {
        return;
    }
    let s = Scratch::new("cycle");
    let cfg = s.config();
    let t = s.template();

    let o = shim(&s, &cfg, &["factory", "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).starts_with("vm factory is off: no template in"));

    let out = ok(&shim(
        &s,
        &cfg,
        &["factory", "init", "--ready", "console=tick 2"],
    ));
    assert!(out.starts_with("vm factory initialized in"), "{out}");
    use std::os::unix::fs::MetadataExt;
    let mem = std::fs::metadata(t.join("memory")).unwrap();
    assert_eq!(mem.len(), 64 << 20);
    assert!(mem.blocks() * 512 < 16 << 20, "not sparse");
    assert!(std::fs::metadata(t.join("state")).unwrap().len() > 0);
    // The template VM's own directory is gone.
    assert_eq!(std::fs::read_dir(s.run_dir()).unwrap().count(), 0);

    let st = ok(&shim(&s, &cfg, &["factory", "status"]));
    assert!(st.starts_with(&format!("vm factory is on: template in {}", t.display())));
    assert!(st.contains("1 vCPUs, 64 MiB"), "{st}");
    let j: Value =
        serde_json::from_str(&ok(&shim(&s, &cfg, &["factory", "status", "--json"]))).unwrap();
    assert_eq!(j["template"], true);
    assert_eq!(j["memory_mib"], 64);
    assert_eq!(j["readiness"], "console=tick 2");
    let args: Vec<&str> = j["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let machine = args[args.iter().position(|a| *a == "-machine").unwrap() + 1];
    assert!(!machine.contains("mem-share"), "{machine}");
    assert!(args.contains(&"-initrd") && !args.contains(&"-incoming"));

    fails(
        &shim(&s, &cfg, &["factory", "init"]),
        "there is already a template in",
    );

    // Two sandboxes from the one template at once.
    let a = Running::start(&s, &cfg, "a");
    let b = Running::start(&s, &cfg, "b");
    assert_cloned(&s, &cfg, "a", &a);
    assert_cloned(&s, &cfg, "b", &b);
    // Both continue from the same point of the same template.
    assert_eq!(first_tick(&console(&s, "a")), first_tick(&console(&s, "b")));
    let m = parse_prometheus(&ok(&shim(&s, &cfg, &["metrics", "--id", "a"])));
    let start = &m["altovirt_sandbox_start_seconds"];
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].0["from"], "template");
    assert!(start[0].1 > 0.0 && start[0].1 < 20.0, "{}", start[0].1);
    a.stop(&s, &cfg, "a");
    b.stop(&s, &cfg, "b");

    let out = ok(&shim(&s, &cfg, &["factory", "destroy"]));
    assert!(out.starts_with("vm factory destroyed"), "{out}");
    assert!(!t.exists());
    assert_eq!(
        shim(&s, &cfg, &["factory", "status"]).status.code(),
        Some(1)
    );
    let again = ok(&shim(&s, &cfg, &["factory", "destroy"]));
    assert!(again.starts_with("no template in"), "{again}");

    // Enabled without a template: a warning and a cold boot.
    let c = Running::start(&s, &cfg, "cold");
    let err = c.stderr_text();
    assert!(
        err.contains("warning: [factory] enable_template = true but there is no template in"),
        "{err}"
    );
    wait_console(&s, "cold", "tick 1\n");
    assert!(console(&s, "cold").contains(BOOT_LINE));
    let st = status_json(&s, &cfg, "cold");
    assert_eq!(st["template"], Value::Null);
    let m = parse_prometheus(&ok(&shim(&s, &cfg, &["metrics", "--id", "cold"])));
    assert_eq!(m["altovirt_sandbox_start_seconds"][0].0["from"], "boot");
    c.stop(&s, &cfg, "cold");
}

#[test]
fn damaged_mismatched_and_unready_templates() {
    if !kvm_usable("damaged_mismatched_and_unready_templates") {
        return;
    }
    let s = Scratch::new("bad");
    let cfg = s.config();
    let t = s.template();

    // The guest never prints this: nothing is left behind.
    fails(
        &shim(
            &s,
            &cfg,
            &["factory", "init", "--ready", "console=never", "--timeout", "1"],
        ),
        "the guest did not become ready within 1 s (waiting for a console line containing \"never\"",
    );
    assert!(!t.exists(), "the template directory was left behind");

    // The default readiness: the guest's boot-complete signal.
    let out = ok(&shim(&s, &cfg, &["factory", "init"]));
    assert!(out.contains("(boot-complete)"), "{out}");

    // Another configuration: a warning naming the keys, a cold boot.
    let initrd = format!("initrd = \"{}\"", s.0.join("initrd.img").display());
    let other = s.config_with(
        "other.toml",
        "stratovirt",
        &format!("{initrd}\ndefault_vcpus = 2"),
        true,
    );
    let c = Running::start(&s, &other, "other");
    let err = c.stderr_text();
    assert!(
        err.contains("boots cold, not from the VM factory's template: the template in")
            && err.contains("(default_vcpus differ)"),
        "{err}"
    );
    wait_console(&s, "other", BOOT_LINE);
    c.stop(&s, &other, "other");

    // Damaged snapshot state: altovirt refuses it and run says so.
    let state = std::fs::read(t.join("state")).unwrap();
    let mut flipped = state.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    std::fs::write(t.join("state"), &flipped).unwrap();
    let o = shim(&s, &cfg, &["run", "--id", "bad"]);
    fails(&o, "restoring from the template in");
    assert!(text(&o.stderr).contains("corrupted"), "{}", text(&o.stderr));
    std::fs::write(t.join("state"), &state).unwrap();

    // Damaged record: status and run fail naming it.
    std::fs::write(t.join("template.json"), b"{\"version\": 1").unwrap();
    fails(&shim(&s, &cfg, &["factory", "status"]), "template.json");
    fails(
        &shim(&s, &cfg, &["run", "--id", "bad"]),
        "VM factory template: ",
    );
    // A short memory file.
    ok(&shim(&s, &cfg, &["factory", "destroy"]));
    ok(&shim(&s, &cfg, &["factory", "init"]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("memory"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fails(
        &shim(&s, &cfg, &["factory", "status"]),
        "memory: 1048576 bytes, the template's guest has 67108864",
    );
    ok(&shim(&s, &cfg, &["factory", "destroy"]));
    assert!(!t.exists());
}

#[test]
fn factory_init_refuses_what_it_cannot_template() {
    // Refused before anything is launched: no KVM needed.
    let s = Scratch::new("refuse");
    let initrd = format!("initrd = \"{}\"", s.0.join("initrd.img").display());
    let qemu = s.config_with("qemu.toml", "qemu", &initrd, true);
    fails(
        &shim(&s, &qemu, &["factory", "init"]),
        "altovirt-shim factory init: only [hypervisor.stratovirt] templates are supported",
    );
    let no_initrd = s.config_with("no-initrd.toml", "stratovirt", "", true);
    fails(
        &shim(&s, &no_initrd, &["factory", "init"]),
        "a template needs an initrd",
    );
    let off = s.config_with("off.toml", "stratovirt", &initrd, false);
    fails(
        &shim(&s, &off, &["factory", "init"]),
        "[factory] enable_template is false in",
    );
    let vhost = s.config_with(
        "vhost.toml",
        "stratovirt",
        &format!("{initrd}\nvsock = \"vhost\""),
        true,
    );
    fails(
        &shim(&s, &vhost, &["factory", "init"]),
        "not supported with vsock = \"vhost\"",
    );
    let o = shim(&s, &off, &["factory", "init", "--ready", "soon"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("use boot-complete, console=TEXT or delay=SECONDS"));
    assert!(!s.template().exists());
}

#[test]
fn taps_are_hotplugged_into_a_sandbox_from_the_template() {
    if !kvm_usable("taps_are_hotplugged_into_a_sandbox_from_the_template") {
        return;
    }
    let Some(ns) = Netns::create("fac") else {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(
            !must,
            "cannot create a network namespace (needs root and iproute2)"
        );
        eprintln!("SKIP: cannot create a network namespace (needs root and iproute2)");
        return;
    };
    let s = Scratch::new("tap");
    let cfg = s.config();
    ok(&shim(&s, &cfg, &["factory", "init"]));
    let r = Running::start_in(&ns.prefix(), &s, &cfg, &["--id", "net", "--tap", "tap0"]);
    let st = status_json(&s, &cfg, "net");
    assert_eq!(st["template"], s.template().display().to_string(), "{st}");
    let vmm = st["vmm_pid"].as_u64().unwrap();
    let args = std::fs::read_to_string(format!("/proc/{vmm}/cmdline")).unwrap();
    let args: Vec<&str> = args.split('\0').collect();
    // The template has no NIC: the tap is not a boot device of the clone
    // but was hot-plugged into network slot 0 once it ran.
    assert!(!args.contains(&"-netdev"), "{args:?}");
    assert!(args.contains(&"-incoming"), "{args:?}");
    assert_eq!(st["net_slots"][0]["device"], "net0", "{st}");
    r.stop(&s, &cfg, "net");
}
