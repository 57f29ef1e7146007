//! The rig's harness: runs `scripts/rig/run.sh` once for all scenarios and
//! splits its console output into per-scenario results (see tests/rig.rs).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The scenarios the shared rig run executes (see scripts/rig/l1-init.sh).
pub(crate) const SCENARIOS: &[&str] = &[
    "boot",
    "reboot",
    "stopcont",
    "poweroff",
    "a_devices",
    "a_hotplug",
    "a_powerdown",
    "a_powerdown_ignored",
];
/// Kernel (b) scenarios, added when scripts/rig/build-kernel-b.sh has
/// already built that kernel (building it takes minutes, so the suite never
/// does).
pub(crate) const KERNEL_B_SCENARIOS: &[&str] = &[
    "b_devices",
    "b_rootdisk",
    "b_hotplug",
    "b_kata",
    "b_balloon",
    "b_balloon_report",
    "b_snapshot",
];
/// Upper bound for one whole rig run (L1 boot plus every scenario).
pub(crate) const RIG_TIMEOUT: Duration = Duration::from_secs(540);

/// What one scenario reported.
#[derive(Debug, Default)]
pub(crate) struct Scenario {
    /// `RIG <scenario> <key> <value>` lines, in order; a key may repeat.
    pub(crate) results: Vec<(String, String)>,
    /// The L2 serial console, line by line.
    pub(crate) console: Vec<String>,
    /// altovirt's log (-D).
    pub(crate) log: Vec<String>,
}

impl Scenario {
    /// The first value reported for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.results
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value reported for `key`.
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the guest's `L2-<key> value` console line.
    pub(crate) fn guest(&self, key: &str) -> Option<&str> {
        let prefix = format!("L2-{key} ");
        self.console
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// The values of every `L2-<key> value` console line, in order (a
    /// guest that boots twice prints its lines twice).
    pub(crate) fn guest_all(&self, key: &str) -> Vec<&str> {
        let prefix = format!("L2-{key} ");
        self.console
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// Context for assertion messages: results and the console's tail.
    pub(crate) fn context(&self) -> String {
        let tail: Vec<&String> = self.console.iter().rev().take(40).rev().collect();
        let log_tail: Vec<&String> = self.log.iter().rev().take(20).rev().collect();
        format!(
            "results: {:?}\n--- L2 console (last 40 lines) ---\n{}\n--- altovirt log (last 20 lines) ---\n{}",
            self.results,
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            log_tail
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// A parsed rig run.
#[derive(Debug)]
pub(crate) struct RigRun {
    /// Results by scenario name; `l1` holds L1's own reports.
    pub(crate) scenarios: BTreeMap<String, Scenario>,
    /// Whether L1 printed `RIG-DONE`.
    pub(crate) done: bool,
    /// Wall time of the whole run.
    pub(crate) elapsed: Duration,
    /// The complete output, for failure messages.
    pub(crate) raw: String,
}

/// Splits the rig's console output into per-scenario results.
pub(crate) fn parse(raw: &str, elapsed: Duration) -> RigRun {
    let mut scenarios: BTreeMap<String, Scenario> = BTreeMap::new();
    let mut done = false;
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if line == "RIG-DONE" {
            done = true;
            continue;
        }
        let (kind, rest) = match line.split_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let sc = || name.to_string();
        match kind {
            "RIG" => {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                scenarios
                    .entry(sc())
                    .or_default()
                    .results
                    .push((k.to_string(), v.to_string()));
            }
            "L2" => scenarios
                .entry(sc())
                .or_default()
                .console
                .push(rest.to_string()),
            "LOG" => scenarios
                .entry(sc())
                .or_default()
                .log
                .push(rest.to_string()),
            _ => {}
        }
    }
    RigRun {
        scenarios,
        done,
        elapsed,
        raw: raw.to_string(),
    }
}

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// CI=true or ALTOVIRT_REQUIRE_RIG=1: the rig may not be skipped.
pub(crate) fn rig_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ALTOVIRT_REQUIRE_RIG").is_ok_and(|v| v == "1")
}

/// Why the rig cannot run here, if it cannot: no QEMU, or no assets (the
/// fetch step needs Debian's registry unless the cache is filled).
pub(crate) fn missing_prerequisite(root: &Path) -> Option<String> {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !qemu.is_ok_and(|s| s.success()) {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    let fetch = Command::new(root.join("scripts/rig/fetch.sh"))
        .stdin(Stdio::null())
        .output();
    match fetch {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "scripts/rig/fetch.sh failed (no access to Debian's package registry?): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run scripts/rig/fetch.sh: {e}")),
    }
}

/// Why a rig run produced no results.
#[derive(Debug)]
pub(crate) enum RigError {
    /// A prerequisite is missing: skip (unless the rig is required).
    Unavailable(String),
    /// The rig ran and did not finish: a failure.
    Failed(String),
}

/// Runs `scripts/rig/run.sh` with this build's altovirt and `scenarios`.
pub(crate) fn run_rig(scenarios: &[&str]) -> Result<RigRun, RigError> {
    let root = repo_root();
    if let Some(why) = missing_prerequisite(&root) {
        return Err(RigError::Unavailable(why));
    }
    let start = Instant::now();
    let mut cmd = Command::new(root.join("scripts/rig/run.sh"));
    cmd.arg(env!("CARGO_BIN_EXE_altovirt"))
        .args(scenarios)
        .env("RIG_TIMEOUT", RIG_TIMEOUT.as_secs().to_string());
    let (code, stdout, stderr) = run_lossy(cmd, RIG_TIMEOUT + Duration::from_secs(60))
        .map_err(|e| RigError::Failed(format!("cannot run scripts/rig/run.sh: {e}")))?;
    let run = parse(&stdout, start.elapsed());
    if !run.done {
        return Err(RigError::Failed(format!(
            "the rig did not finish (exit {code:?}, {:?}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            run.elapsed,
        )));
    }
    eprintln!(
        "rig: {} scenario(s) in {:.1} s",
        scenarios.len(),
        run.elapsed.as_secs_f64()
    );
    Ok(run)
}

/// Runs `cmd` to its end (killed after `timeout`) and returns its exit code
/// and output. The consoles the rig relays may carry bytes that are not
/// UTF-8 (a guest's early serial output), so the output is read as bytes
/// and converted lossily: a reader that stopped at the first bad byte would
/// close the pipe and stall QEMU's serial output, hence L1.
fn run_lossy(
    mut cmd: Command,
    timeout: Duration,
) -> std::io::Result<(Option<i32>, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status.code(), stdout, stderr))
}

/// Whether kernel (b) is built and cached.
pub(crate) fn kernel_b_cached() -> bool {
    Command::new(repo_root().join("scripts/rig/build-kernel-b.sh"))
        .arg("--if-cached")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The shared run of [`SCENARIOS`] (and [`KERNEL_B_SCENARIOS`] when that
/// kernel is cached), started by whichever test comes first. A write-once
/// cache: the rig takes a while, so the tests share one run, and a failed
/// run is kept too (every test then fails with its output, none re-runs it).
pub(crate) fn shared_rig() -> Option<&'static RigRun> {
    static RUN: OnceLock<Result<RigRun, RigError>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let mut list = SCENARIOS.to_vec();
        if kernel_b_cached() {
            list.extend_from_slice(KERNEL_B_SCENARIOS);
        }
        run_rig(&list)
    });
    match run {
        Ok(run) => Some(run),
        Err(RigError::Failed(why)) => panic!("{why}"),
        Err(RigError::Unavailable(why)) => {
            assert!(
                !rig_required(),
                "the rig is required here but cannot run: {why}"
            );
            eprintln!("SKIP: the rig cannot run: {why}");
            None
        }
    }
}

/// The results of scenario `name`, which must have run to its end.
pub(crate) fn scenario<'a>(run: &'a RigRun, name: &str) -> &'a Scenario {
    let sc = run
        .scenarios
        .get(name)
        .unwrap_or_else(|| panic!("scenario {name} printed nothing; rig output:\n{}", run.raw));
    assert!(
        sc.results.iter().any(|(k, _)| k == "end"),
        "scenario {name} did not end:\n{}",
        sc.context()
    );
    sc
}

/// altovirt's exit status in the scenario.
pub(crate) fn exit_status(sc: &Scenario) -> Option<i32> {
    sc.get("exit").and_then(|v| v.parse().ok())
}

/// The `SHUTDOWN` events a QMP listener in L1 received.
pub(crate) fn shutdown_events(sc: &Scenario) -> Vec<&str> {
    sc.all("event")
        .into_iter()
        .filter(|e| e.contains("\"SHUTDOWN\""))
        .collect()
}

/// The L2 uptime (seconds) when init started, and the wall time from
/// altovirt's exec to its exit, printed for the record.
pub(crate) fn report_timing(name: &str, sc: &Scenario) {
    eprintln!(
        "rig {name}: L2 uptime at init {} s, altovirt exec->exit {} ms, boot-complete {} us after exec",
        sc.guest("UPTIME").unwrap_or("?"),
        sc.get("wall-ms").unwrap_or("?"),
        sc.get("boot-complete-us").unwrap_or("?"),
    );
}
