//! A network namespace with a tap for tests that move frames through a
//! real tap without touching the host's network.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guests/net_peer.py");

/// A network namespace with a tap `tap0` that is up; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Creates the namespace `avt<pid><tag>` with `tap0` up.
    pub fn create(tag: &str) -> Option<Netns> {
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

    /// `program` run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// altovirt in the namespace, started the way Kata's runtime starts it:
    /// `tap0` opened (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) and inherited;
    /// the word `TAPFD` in the arguments the caller adds becomes its number.
    pub fn altovirt_with_tap_fd(&self) -> Command {
        const LAUNCHER: &str = r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"tap0", 0x0002 | 0x1000 | 0x4000))
os.set_inheritable(fd, True)
args = [a.replace("TAPFD", str(fd)) for a in sys.argv[1:]]
os.execv(args[0], args)
"#;
        let mut c = self.exec("python3");
        c.args(["-c", LAUNCHER, env!("CARGO_BIN_EXE_altovirt")]);
        c
    }

    /// Starts net_peer.py on tap0 and waits until it listens.
    pub fn start_peer(&self) -> std::process::Child {
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

/// The namespace for `test`, or `None` (after saying why) where KVM or
/// namespaces are unavailable and the test may skip.
pub fn netns_usable(test: &str) -> Option<Netns> {
    if !super::kvm_usable(test) {
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
