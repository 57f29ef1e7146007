//! altovirt-ozone through the real binaries: the tiny test guest boots in
//! the jail as uid/gid 65534 with no capabilities, in its own mount, PID,
//! IPC and UTS namespaces (and a given network namespace), rooted in the
//! jail directory; QMP works through the socket in the jail directory;
//! the cgroup limits apply; `-clean-resource` leaves nothing; bad flags
//! are one-line errors with status 2.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} failed (iproute2 is needed)");
        Netns(name.into())
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns link")
}

fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("{controller} not in /proc/{pid}/cgroup: {text}"))
}

fn limit(pid: i32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line[name.len()..]
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The launch flags for jail `name` with the guest in `dir`.
fn launch_args(name: &str, guest: &Path, extra: &[&str], vmm: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "-name",
        name,
        "-exec-file",
        &altovirt().display().to_string(),
        "-uid",
        "65534",
        "-gid",
        "65534",
        "-source",
        &guest.display().to_string(),
    ]);
    a.extend(strings(extra));
    a.push("--".into());
    a.extend(strings(&[
        "-kernel",
        "guest.elf",
        "-serial",
        "stdio",
        "-m",
        "64",
    ]));
    a.extend(strings(vmm));
    a
}

#[test]
fn vm_boots_jailed_and_clean_resource_leaves_nothing() {
    if !can_run("vm_boots_jailed_and_clean_resource_leaves_nothing") {
        return;
    }
    let dir = scratch("main");
    let guest = guest_in(&dir);
    let name = unique("main");
    let netns = Netns::create(&format!("ozone-{name}"));
    let netns_path = netns.path().display().to_string();
    let vm = Running::start(&launch_args(
        &name,
        &guest,
        &[
            "-netns",
            &netns_path,
            "-cgroup",
            "cpuset.cpus=0",
            "pids.max=64",
            "-clean-resource",
        ],
        &[
            "-S",
            "-append",
            "guest.exit=halt",
            "-qmp",
            "unix:qmp.sock,server,nowait",
        ],
    ));
    let jail = jail_dir(&name);
    let sock = jail.join("qmp.sock");
    assert!(wait_for(&sock), "no QMP socket at {}", sock.display());
    let pid = vm.vmm_pid();

    // Credentials.
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // PID 1 of its own PID namespace.
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().last(),
        Some("1")
    );
    // Namespaces: new mount, PID, IPC, UTS; the given network namespace.
    let p = pid.to_string();
    for kind in ["mnt", "pid", "ipc", "uts"] {
        assert_ne!(ns(&p, kind), ns("self", kind), "{kind} namespace shared");
    }
    let netns_ino = std::fs::metadata(netns.path()).expect("netns").ino();
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .expect("net ns")
            .ino(),
        netns_ino
    );
    // Its root is the jail directory; the host's files are not there.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let (r, j) = (
        std::fs::metadata(&root).expect("root"),
        std::fs::metadata(&jail).expect("jail"),
    );
    assert_eq!((r.dev(), r.ino()), (j.dev(), j.ino()));
    assert!(!root.join("etc/passwd").exists());
    assert!(!root.join("work").exists() && !root.join("srv").exists());
    assert!(root.join("altovirt").is_file() && root.join("guest.elf").is_file());
    // /dev holds only the VM's nodes, the KVM one owned by the jail's uid.
    let mut devs: Vec<String> = std::fs::read_dir(root.join("dev"))
        .expect("dev")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    let mut want = vec!["kvm", "net", "null", "urandom"];
    for v in ["vhost-net", "vhost-vsock"] {
        if Path::new("/dev").join(v).exists() {
            want.push(v);
        }
    }
    want.sort();
    assert_eq!(devs, want);
    assert_eq!(
        std::fs::metadata(root.join("dev/kvm")).expect("kvm").uid(),
        65534
    );
    // A /proc of its own PID namespace: only itself.
    let pids: Vec<String> = std::fs::read_dir(root.join("proc"))
        .expect("proc")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(pids, ["1"]);
    // Cgroups (v1 on this kind of host; v2 where the controller is there).
    assert_eq!(cgroup_of(pid, "pids"), format!("/altovirt/{name}"));
    assert_eq!(cgroup_of(pid, "cpuset"), format!("/altovirt/{name}"));
    let cg_pids = Path::new("/sys/fs/cgroup/pids/altovirt").join(&name);
    let cg_cpuset = Path::new("/sys/fs/cgroup/cpuset/altovirt").join(&name);
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_default();
    if cg_pids.exists() {
        assert_eq!(read(cg_pids.join("pids.max")).trim(), "64");
        assert_eq!(read(cg_cpuset.join("cpuset.cpus")).trim(), "0");
    } else {
        let v2 = Path::new("/sys/fs/cgroup/altovirt").join(&name);
        assert_eq!(read(v2.join("pids.max")).trim(), "64");
        assert_eq!(read(v2.join("cpuset.cpus")).trim(), "0");
    }
    assert_eq!(status_field(pid, "Cpus_allowed_list"), "0");
    // Rlimits.
    assert_eq!(limit(pid, "Max core file size"), "0 0");
    assert_eq!(limit(pid, "Max open files"), "4096 4096");

    // QMP through the socket in the jail directory.
    let mut q = Qmp::connect(&sock);
    let st = q.execute("query-status");
    assert_eq!(st["return"]["status"], "prelaunch", "{st}");
    assert_eq!(q.execute("cont"), json!({"return": {}}));
    assert!(vm.wait_stdout("halting"), "stdout: {}", vm.stdout());
    assert_eq!(q.execute("quit"), json!({"return": {}}));
    let out = vm.wait();
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains("altovirt-guest: boot=pvh"),
        "{}",
        out.stdout
    );
    // Nothing left: directory, cgroups.
    assert!(!jail.exists(), "{} left behind", jail.display());
    assert!(!cg_pids.exists() && !cg_cpuset.exists());
    assert!(!Path::new("/sys/fs/cgroup/altovirt").join(&name).exists());
    // The host's guest file was linked, never changed.
    let g = std::fs::metadata(&guest).expect("guest");
    assert_eq!((g.uid(), g.nlink()), (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn meminfo_is_read_inside_the_jail() {
    if !can_run("meminfo_is_read_inside_the_jail") {
        return;
    }
    // altovirt refuses more RAM than the host's MemTotal, which it reads
    // from the jail's own /proc (without it, it would only warn).
    let dir = scratch("mem");
    let guest = guest_in(&dir);
    let name = unique("mem");
    let mut args = launch_args(&name, &guest, &["-clean-resource"], &[]);
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    let m = args.iter().position(|a| a == "64").expect("-m value");
    args[m] = format!("{}", total_kib / 1024 * 2);
    let out = run(&args);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("(MemTotal)"), "{}", out.stderr);
    assert!(!jail_dir(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kept_capability_is_the_only_one() {
    if !can_run("kept_capability_is_the_only_one") {
        return;
    }
    let dir = scratch("caps");
    let guest = guest_in(&dir);
    let name = unique("caps");
    let vm = Running::start(&launch_args(
        &name,
        &guest,
        &["-capability", "CAP_CHOWN", "-clean-resource"],
        &["-S", "-qmp", "unix:qmp.sock,server,nowait"],
    ));
    let sock = jail_dir(&name).join("qmp.sock");
    assert!(wait_for(&sock));
    let pid = vm.vmm_pid();
    for caps in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000001", "{caps}");
    }
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    Qmp::connect(&sock).execute("quit");
    assert_eq!(vm.wait().code(), 0);
    assert!(!jail_dir(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn signals_are_forwarded_and_a_killed_jailer_takes_the_vm_along() {
    if !can_run("signals_are_forwarded_and_a_killed_jailer_takes_the_vm_along") {
        return;
    }
    let dir = scratch("sig");
    let guest = guest_in(&dir);
    // SIGTERM to altovirt-ozone: the VMM shuts down cleanly (status 0) and
    // the jail is removed.
    let name = unique("term");
    let vm = Running::start(&launch_args(
        &name,
        &guest,
        &["-clean-resource"],
        &["-S", "-qmp", "unix:qmp.sock,server,nowait"],
    ));
    assert!(wait_for(&jail_dir(&name).join("qmp.sock")));
    // SAFETY: signals our own child.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let out = vm.wait();
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!jail_dir(&name).exists());

    // SIGKILL to altovirt-ozone: the kernel kills the jail; the clean-up
    // invocation then removes what is left.
    let name = unique("kill");
    let mut vm = Running::start(&launch_args(
        &name,
        &guest,
        &["-cgroup", "pids.max=32", "-clean-resource"],
        &["-S", "-qmp", "unix:qmp.sock,server,nowait"],
    ));
    assert!(wait_for(&jail_dir(&name).join("qmp.sock")));
    let pid = vm.vmm_pid();
    vm.child.kill().expect("kill");
    let _ = vm.child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "VMM {pid} survived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(jail_dir(&name).exists());
    let clean = strings(&[
        "-name",
        &name,
        "-exec_file",
        &altovirt().display().to_string(),
        "-uid",
        "65534",
        "-gid",
        "65534",
        "-source",
        &guest.display().to_string(),
        "-clean-resource",
    ]);
    let out = run(&clean);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!jail_dir(&name).exists());
    assert!(!Path::new("/sys/fs/cgroup/pids/altovirt")
        .join(&name)
        .exists());
    // Cleaning again is a no-op.
    assert_eq!(run(&clean).code(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_clean_resource_the_jail_stays_until_cleaned() {
    if !can_run("without_clean_resource_the_jail_stays_until_cleaned") {
        return;
    }
    let dir = scratch("keep");
    let guest = guest_in(&dir);
    let name = unique("keep");
    // The guest resets at the end: altovirt exits 0 by itself.
    let args = launch_args(&name, &guest, &["-cgroup", "pids.max=32"], &[]);
    let out = run(&args);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("boot-complete"), "{}", out.stdout);
    assert!(jail_dir(&name).join("altovirt").is_file());
    // The name is taken until cleaned.
    let again = run(&args);
    assert_eq!(again.code(), 1, "{again:?}");
    assert_eq!(again.stderr.lines().count(), 1, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let clean = strings(&[
        "-name",
        &name,
        "-exec-file",
        &altovirt().display().to_string(),
        "-clean-resource",
    ]);
    assert_eq!(run(&clean).code(), 0);
    assert!(!jail_dir(&name).exists());
    assert!(!Path::new("/sys/fs/cgroup/pids/altovirt")
        .join(&name)
        .exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn assert_usage(args: &[String], needle: &str, code: i32) {
    let out = run(args);
    assert_eq!(out.code(), code, "{args:?}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {:?}", out.stderr);
    assert!(lines[0].starts_with("altovirt-ozone: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn bad_flags_are_one_line_errors_with_status_2() {
    if !can_run("bad_flags_are_one_line_errors_with_status_2") {
        return;
    }
    let dir = scratch("usage");
    let guest = guest_in(&dir);
    let name = unique("usage");
    let alto = altovirt().display().to_string();
    let g = guest.display().to_string();
    let base = |extra: &[&str]| {
        let mut a = strings(&["-name", &name, "-exec-file", &alto, "-uid", "65534"]);
        a.extend(strings(extra));
        a
    };
    assert_usage(&base(&["-gid", "1", "-bogus"]), "unknown flag '-bogus'", 2);
    assert_usage(&base(&[]), "-gid is required", 2);
    assert_usage(
        &strings(&["-uid", "1", "-gid", "1"]),
        "-name is required",
        2,
    );
    assert_usage(&base(&["-gid", "x"]), "-gid: 'x'", 2);
    assert_usage(
        &strings(&[
            "-name",
            "a/b",
            "-exec-file",
            &alto,
            "-uid",
            "1",
            "-gid",
            "1",
        ]),
        "-name: 'a/b'",
        2,
    );
    assert_usage(
        &base(&["-gid", "1", "-source", "/nonexistent/k"]),
        "-source /nonexistent/k",
        2,
    );
    assert_usage(
        &strings(&[
            "-name",
            &name,
            "-exec-file",
            "/nonexistent/altovirt",
            "-uid",
            "1",
            "-gid",
            "1",
        ]),
        "-exec-file /nonexistent/altovirt",
        2,
    );
    assert_usage(
        &base(&["-gid", "1", "-netns", "/nonexistent/ns"]),
        "-netns /nonexistent/ns",
        2,
    );
    assert_usage(
        &base(&["-gid", "1", "-cgroup", "cpu.shares=10"]),
        "-cgroup cpu.shares",
        2,
    );
    assert_usage(
        &base(&["-gid", "1", "-capability", "CAP_FLY"]),
        "-capability",
        2,
    );
    assert_usage(&base(&["-gid", "1", "--", "-daemonize"]), "-daemonize", 2);
    // A value the kernel refuses: no such CPU.
    assert_usage(
        &base(&[
            "-gid",
            "1",
            "-source",
            &g,
            "-cgroup",
            "cpuset.cpus=4095",
            "--",
            "-kernel",
            "guest.elf",
        ]),
        "-cgroup cpuset.cpus=4095",
        2,
    );
    // Nothing is left by a failed launch.
    assert!(!jail_dir(&name).exists());
    assert!(!Path::new("/sys/fs/cgroup/cpuset/altovirt")
        .join(&name)
        .exists());
    // Not root: one line, status 1 (a host condition, not a usage error).
    {
        use std::os::unix::process::CommandExt;
        let out = Command::new(OZONE)
            .args(base(&["-gid", "1"]))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as 65534");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("must run as root"), "{err}");
    }
    // altovirt's own usage errors pass through with its status.
    let out = run(&launch_args(
        &name,
        &guest,
        &["-clean-resource"],
        &["-smp", "x"],
    ));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("-smp"), "{}", out.stderr);
    assert!(!jail_dir(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
