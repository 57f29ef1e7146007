//! Sandbox metrics in the Prometheus text exposition format (version
//! 0.0.4): the VMM process from `/proc/PID` (resident and virtual memory,
//! CPU time, threads, descriptors, start time) and the VM over QMP
//! (`query-status`, vCPUs, `query-block`, hotplug slots), and how long the
//! sandbox took to start (cold boot or from the VM factory's template).
//!
//! Every family has `# HELP` and `# TYPE` lines and every sample carries
//! `sandbox` and `hypervisor` labels.

use std::fs;
use std::io;

use serde_json::Value;

use crate::cmdline::FactoryRole;
use crate::config::Flavour;
use crate::driver::{DriverError, Hypervisor};

/// Figures of one process from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcStats {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// User CPU time, seconds.
    pub user_seconds: f64,
    /// System CPU time, seconds.
    pub system_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Open descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// `VmRSS` of `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Fields of `/proc/PID/stat` text: (utime, stime, num_threads, starttime,
/// vsize), times in clock ticks.
pub fn parse_stat(stat: &str) -> Option<(u64, u64, u64, u64, u64)> {
    // Fields after the parenthesised name, which may contain spaces; the
    // first of them is field 3 (state).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let f = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some((f(14)?, f(15)?, f(20)?, f(22)?, f(23)?))
}

/// `btime` of `/proc/stat` text.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the figures of process `pid`.
pub fn proc_stats(pid: u32) -> io::Result<ProcStats> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/{what}"));
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (ut, st, threads, start, vsize) = parse_stat(&stat).ok_or_else(|| bad("stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let btime = parse_btime(&fs::read_to_string("/proc/stat")?).unwrap_or(0);
    let open_fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(ProcStats {
        rss_bytes: parse_vm_rss(&status).ok_or_else(|| bad("status"))?,
        virtual_bytes: vsize,
        user_seconds: ut as f64 / hz,
        system_seconds: st as f64 / hz,
        threads,
        open_fds,
        start_time_seconds: btime as f64 + start as f64 / hz,
    })
}

/// One metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Samples: extra labels and value.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

fn family(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
) -> Family {
    Family {
        name,
        help,
        kind,
        samples,
    }
}

fn one(name: &'static str, kind: &'static str, help: &'static str, v: f64) -> Family {
    family(name, kind, help, vec![(Vec::new(), v)])
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Renders families with `common` labels on every sample.
pub fn render(families: &[Family], common: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for f in families {
        out.push_str(&format!("# HELP {} {}\n", f.name, f.help));
        out.push_str(&format!("# TYPE {} {}\n", f.name, f.kind));
        for (labels, v) in &f.samples {
            let all: Vec<String> = common
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .chain(labels.iter().map(|(k, v)| (*k, v.clone())))
                .map(|(k, v)| format!("{k}=\"{}\"", escape(&v)))
                .collect();
            out.push_str(&format!("{}{{{}}} {}\n", f.name, all.join(","), value(*v)));
        }
    }
    out
}

/// Gathers the metrics of a running VM.
pub fn collect(h: &mut Hypervisor) -> Result<Vec<Family>, DriverError> {
    let pid = *h.pids().first().ok_or(DriverError::NotRunning)?;
    let p = proc_stats(pid).map_err(DriverError::Wait)?;
    let status = h.status()?;
    let vcpus = h.thread_ids()?.len();
    let blocks = h.qmp_execute("query-block", None)?;
    let inserted = blocks.as_array().map_or(0, |a| {
        a.iter().filter(|b| b.get("inserted").is_some()).count()
    });
    let mut f = vec![
        one(
            "altovirt_vmm_resident_memory_bytes",
            "gauge",
            "Resident set size of the VMM process (VmRSS).",
            p.rss_bytes as f64,
        ),
        one(
            "altovirt_vmm_virtual_memory_bytes",
            "gauge",
            "Virtual memory size of the VMM process.",
            p.virtual_bytes as f64,
        ),
        family(
            "altovirt_vmm_cpu_seconds_total",
            "counter",
            "CPU time of the VMM process (vCPUs included), by mode.",
            vec![
                (vec![("mode", "user".into())], p.user_seconds),
                (vec![("mode", "system".into())], p.system_seconds),
            ],
        ),
        one(
            "altovirt_vmm_threads",
            "gauge",
            "Threads of the VMM process.",
            p.threads as f64,
        ),
        one(
            "altovirt_vmm_open_fds",
            "gauge",
            "Open file descriptors of the VMM process.",
            p.open_fds as f64,
        ),
        one(
            "altovirt_vmm_start_time_seconds",
            "gauge",
            "Start time of the VMM process since the Unix epoch.",
            p.start_time_seconds,
        ),
        one(
            "altovirt_vm_running",
            "gauge",
            "1 when QMP query-status reports running.",
            f64::from(u8::from(status == "running")),
        ),
        family(
            "altovirt_vm_status",
            "gauge",
            "The QMP query-status status (value 1).",
            vec![(vec![("status", status.clone())], 1.0)],
        ),
        one(
            "altovirt_vm_vcpus",
            "gauge",
            "vCPUs reported by QMP query-cpus-fast.",
            vcpus as f64,
        ),
        one(
            "altovirt_vm_block_devices",
            "gauge",
            "Block devices with a medium in QMP query-block.",
            inserted as f64,
        ),
    ];
    if let Some(d) = h.start_duration() {
        let from = match h.spec().factory {
            FactoryRole::FromTemplate(_) => "template",
            _ => "boot",
        };
        f.push(family(
            "altovirt_sandbox_start_seconds",
            "gauge",
            "Launch of the VMM to QMP ready; from=template when restored from the VM factory's template.",
            vec![(vec![("from", from.to_string())], d.as_secs_f64())],
        ));
    }
    if h.flavour() == Flavour::StratoVirt {
        // altovirt's extension; StratoVirt itself has no such command.
        if let Ok(stats) = h.qmp_execute("__io.altovirt_query-log-stats", None) {
            f.push(log_lines(&stats));
        }
        if let Some(list) = blocks.as_array() {
            let mut t = h.block_slots().clone();
            if t.sync_from_query_block(&Value::Array(list.clone())) {
                let n = h.net_slots();
                let slot = |kind: &str, state: &str, v: usize| {
                    (
                        vec![("kind", kind.to_string()), ("state", state.to_string())],
                        v as f64,
                    )
                };
                f.push(family(
                    "altovirt_hotplug_slots",
                    "gauge",
                    "Hotplug slots by kind (blk, net) and state (used, free).",
                    vec![
                        slot("blk", "used", t.used()),
                        slot("blk", "free", t.len() - t.used()),
                        slot("net", "used", n.used()),
                        slot("net", "free", n.len() - n.used()),
                    ],
                ));
            }
        }
    }
    Ok(f)
}

/// `altovirt_vmm_log_lines_total{level, outcome}` from the reply of
/// `__io.altovirt_query-log-stats`: lines written and lines dropped by the
/// VMM's per-site rate limiter (a guest flooding the log shows here).
fn log_lines(stats: &Value) -> Family {
    let mut samples = Vec::new();
    if let Some(levels) = stats.as_object() {
        for (level, counts) in levels {
            for outcome in ["logged", "dropped"] {
                if let Some(n) = counts.get(outcome).and_then(Value::as_u64) {
                    samples.push((
                        vec![("level", level.clone()), ("outcome", outcome.to_string())],
                        n as f64,
                    ));
                }
            }
        }
    }
    family(
        "altovirt_vmm_log_lines_total",
        "counter",
        "Log lines of the VMM by level, written or dropped by its rate limiter.",
        samples,
    )
}

/// [`collect`] rendered with the sandbox and hypervisor labels.
pub fn prometheus_text(h: &mut Hypervisor) -> Result<String, DriverError> {
    let fams = collect(h)?;
    let id = h.spec().id.clone();
    let flavour = h.flavour().section();
    Ok(render(&fams, &[("sandbox", &id), ("hypervisor", flavour)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_vm_rss("Name:\taltovirt\nVmRSS:\t   12345 kB\n"),
            Some(12345 * 1024)
        );
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let stat = "42 (alto virt) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1234 99999 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((7, 3, 5, 1234, 99999)));
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process() {
        let p = proc_stats(std::process::id()).unwrap();
        assert!(p.rss_bytes > 0 && p.threads >= 1 && p.open_fds >= 3);
        assert!(p.start_time_seconds > 1.0e9);
    }

    #[test]
    fn rendering() {
        let f = vec![
            one("a_bytes", "gauge", "A thing.", 12.0),
            family(
                "b_total",
                "counter",
                "B.",
                vec![(vec![("mode", "us\"er".into())], 0.5)],
            ),
        ];
        let t = render(&f, &[("sandbox", "s1")]);
        assert_eq!(
            t,
            "# HELP a_bytes A thing.\n# TYPE a_bytes gauge\na_bytes{sandbox=\"s1\"} 12\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total{sandbox=\"s1\",mode=\"us\\\"er\"} 0.5\n"
        );
        assert_eq!(value(f64::INFINITY), "+Inf");
    }
}
