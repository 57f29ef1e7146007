//! virtio-net under the real binary: the tiny guest sends a frame out of a
//! tap and receives a reply, inside a network namespace the test creates
//! (so no traffic leaves the test). Both ways Kata and users attach a tap
//! are covered: by name (`ifname=`) and as an inherited descriptor (`fd=`).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guests/net_peer.py");
const MAC: &str = "52:54:00:12:34:56";

/// A network namespace with a tap `tap0` that is up; deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Netns> {
        let name = format!("avt{}{tag}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ok(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns(name);
        let n = ns.0.as_str();
        for args in [
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "tuntap", "add", "tap0", "mode", "tap", "vnet_hdr"],
            vec!["-n", n, "link", "set", "tap0", "up"],
        ] {
            assert!(ok(&args), "ip {args:?} failed");
        }
        Some(ns)
    }

    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// Starts net_peer.py on tap0 and waits until it listens.
    fn start_peer(&self) -> std::process::Child {
        let mut peer = self
            .exec("python3")
            .args([PEER, "tap0", "altovirt-net-tx", "altovirt-net-rx", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start net_peer.py");
        let mut line = String::new();
        BufReader::new(peer.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "peer: {line}");
        peer
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns_usable(test: &str) -> Option<Netns> {
    if !kvm_usable(test) {
        return None;
    }
    let ns = Netns::create(test);
    if ns.is_none() {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(
            !must,
            "{test}: cannot create a network namespace (needs root and iproute2)"
        );
        eprintln!("SKIP {test}: cannot create a network namespace (needs root and iproute2)");
    }
    ns
}

fn check_guest(out: &Outcome) {
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.lines("net: "),
        vec![
            format!("mac={MAC} status=1"),
            "tx done".to_string(),
            "rx=altovirt-net-rx".to_string(),
            "done".to_string()
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn frames_cross_a_tap_opened_by_name() {
    let Some(ns) = netns_usable("net_ifname") else {
        return;
    };
    let peer = ns.start_peer();
    let mut cmd = ns.exec(env!("CARGO_BIN_EXE_altovirt"));
    cmd.args([
        "-kernel",
        GUEST_ELF64,
        "-serial",
        "stdio",
        "-append",
        "guest.virtio=net",
    ])
    .args(["-netdev", "tap,id=n0,ifname=tap0"])
    .arg("-device")
    .arg(format!("virtio-net-device,netdev=n0,id=net0,mac={MAC}"));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    check_guest(&out);
    let peer = wait_with_timeout(peer, Duration::from_secs(30));
    assert_eq!(peer.code(), 0, "peer: {peer:?}");
}

#[test]
fn frames_cross_an_inherited_tap_descriptor_like_kata() {
    let Some(ns) = netns_usable("net_fd") else {
        return;
    };
    let peer = ns.start_peer();
    // Open the tap the way Kata's runtime does and hand it over as fd N.
    let launcher = format!(
        r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"tap0", 0x0002 | 0x1000 | 0x4000))
os.set_inheritable(fd, True)
args = sys.argv[1:]
args = [a.replace("FD", str(fd)) for a in args]
os.execv(args[0], args)
"#
    );
    let mut cmd = ns.exec("python3");
    cmd.args(["-c", &launcher, env!("CARGO_BIN_EXE_altovirt")])
        .args([
            "-kernel",
            GUEST_PVH,
            "-serial",
            "stdio",
            "-append",
            "guest.virtio=net",
        ])
        .args(["-netdev", "tap,id=n0,fds=FD"])
        .arg("-device")
        .arg(format!("virtio-net-device,netdev=n0,id=net0,mac={MAC}"));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    check_guest(&out);
    let peer = wait_with_timeout(peer, Duration::from_secs(30));
    assert_eq!(peer.code(), 0, "peer: {peer:?}");
}
