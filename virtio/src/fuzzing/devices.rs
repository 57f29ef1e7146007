//! Real devices for the fuzz targets, on host back-ends the harness
//! controls: a disk image and an entropy file in a scratch directory, a
//! frame back-end and a console back-end in memory, and unix sockets for
//! the hybrid vsock.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use util::event_loop::EventLoop;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block::{Block, BlockConfig};
use crate::console::{Console, ConsoleBackend, ConsoleError, InputSink};
use crate::net::{FrameIo, Net, NetLimits, ETH_HLEN, MAX_FRAME_LEN};
use crate::rate_limiter::{BucketConfig, RateLimitConfig};
use crate::rng::Rng;
use crate::vsock::{Vsock, VsockConfig};
use crate::{lock, VirtioDevice};

/// Size of the fuzzing disk image (128 sectors).
const DISK_SIZE: usize = 64 << 10;
/// Name prefix of the scratch directories.
const DIR_PREFIX: &str = "altovirt-virtio-fuzz-";
/// Host ports of the vsock listeners a guest can connect to.
pub(super) const VSOCK_HOST_PORTS: [u32; 2] = [1024, 5000];

/// Which device a virtqueue input drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// virtio-blk on a 64 KiB image (read-write, read-only or an empty
    /// slot, chosen by the input).
    Block,
    /// virtio-net, transmit queue: frames go to an in-memory back-end.
    NetTx,
    /// virtio-net, receive queue: frames from the input are delivered.
    NetRx,
    /// Hybrid virtio-vsock with host listeners on ports 1024 and 5000.
    Vsock,
    /// virtio-rng reading a small entropy file.
    Rng,
    /// virtio-console on an in-memory back-end.
    Console,
}

impl Device {
    /// The queues the input's operations address (others are set up but
    /// left empty).
    pub(super) fn driven_queues(self) -> &'static [usize] {
        match self {
            Device::Block | Device::Rng => &[0],
            Device::NetTx => &[1],
            Device::NetRx => &[0],
            Device::Vsock | Device::Console => &[0, 1],
        }
    }
}

/// Frames received and sent by a [`FuzzFrames`] back-end.
#[derive(Default)]
pub(super) struct FrameState {
    /// Frames waiting to be received by the device.
    pub incoming: VecDeque<Vec<u8>>,
    /// Frames the device sent.
    pub sent: usize,
}

/// A virtio-net back-end in memory: its eventfd is readable while frames
/// wait in `incoming`.
pub(super) struct FuzzFrames {
    evt: EventFd,
    state: Arc<Mutex<FrameState>>,
}

impl FuzzFrames {
    /// A back-end and a handle on its state.
    pub fn new() -> io::Result<(Self, FramesHandle)> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let state = Arc::new(Mutex::new(FrameState::default()));
        let handle = FramesHandle {
            evt: evt.try_clone()?,
            state: state.clone(),
        };
        Ok((FuzzFrames { evt, state }, handle))
    }
}

/// The harness's end of a [`FuzzFrames`] back-end.
pub(super) struct FramesHandle {
    evt: EventFd,
    state: Arc<Mutex<FrameState>>,
}

impl FramesHandle {
    /// Makes `frame` wait for the device.
    pub fn push(&self, frame: &[u8]) {
        lock(&self.state).incoming.push_back(frame.to_vec());
        let _ = self.evt.write(1);
    }
}

impl AsRawFd for FuzzFrames {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl FrameIo for FuzzFrames {
    fn name(&self) -> &str {
        "fuzz"
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        assert!(
            (ETH_HLEN..=MAX_FRAME_LEN).contains(&frame.len()),
            "virtio-net sent a {}-byte frame",
            frame.len()
        );
        lock(&self.state).sent += 1;
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = lock(&self.state);
        let Some(frame) = s.incoming.pop_front() else {
            let _ = self.evt.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if s.incoming.is_empty() {
            let _ = self.evt.read();
        }
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(frame.len())
    }
}

/// A console back-end in memory: counts output, hands out its input sink.
pub(super) struct FuzzConsole {
    sink: Arc<Mutex<Option<InputSink>>>,
}

impl ConsoleBackend for FuzzConsole {
    fn write(&mut self, data: &[u8]) {
        assert!(!data.is_empty(), "virtio-console wrote an empty chunk");
    }

    fn start(&mut self, _event_loop: &EventLoop, sink: InputSink) -> Result<(), ConsoleError> {
        *lock(&self.sink) = Some(sink);
        Ok(())
    }

    fn stop(&mut self) {
        lock(&self.sink).take();
    }
}

/// Long-lived host resources shared by every run: a scratch directory
/// with a disk image, an entropy file and vsock listeners.
pub(super) struct HostSide {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub entropy: PathBuf,
    pub vsock_uds: PathBuf,
    pub vsock_listeners: Vec<UnixListener>,
}

impl HostSide {
    /// Creates the directory and its files under `base`, first removing
    /// what fuzzing processes that are gone left there (libFuzzer ends
    /// with `exit`, which drops no static).
    pub fn new(base: &Path) -> io::Result<Self> {
        remove_stale(base);
        // Unique per process and instance (tests create several at once).
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = base.join(format!("{DIR_PREFIX}{}-{stamp}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("disk.img");
        let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i * 7 + i / 512) as u8).collect();
        std::fs::write(&disk, &pattern)?;
        let entropy = dir.join("entropy");
        std::fs::write(&entropy, &pattern[..4096])?;
        let vsock_uds = dir.join("v.sock");
        let mut vsock_listeners = Vec::new();
        for port in VSOCK_HOST_PORTS {
            let mut p = vsock_uds.clone().into_os_string();
            p.push(format!("_{port}"));
            let l = UnixListener::bind(PathBuf::from(p))?;
            l.set_nonblocking(true)?;
            vsock_listeners.push(l);
        }
        Ok(HostSide {
            dir,
            disk,
            entropy,
            vsock_uds,
            vsock_listeners,
        })
    }

    /// Accepts the connections the device made to the host listeners.
    pub fn accept_vsock(&self, into: &mut Vec<UnixStream>) {
        for l in &self.vsock_listeners {
            while let Ok((s, _)) = l.accept() {
                if s.set_nonblocking(true).is_ok() {
                    into.push(s);
                }
            }
        }
    }
}

/// Removes `base/altovirt-virtio-fuzz-PID-*` directories of processes
/// that no longer exist.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the harness keeps of a device's host side during one run.
pub(super) enum Backend {
    None,
    Frames(FramesHandle),
    Console(Arc<Mutex<Option<InputSink>>>),
    Vsock {
        /// Host ends of connections (accepted from the listeners or made
        /// to the device's socket).
        streams: Vec<UnixStream>,
    },
}

impl Backend {
    /// Host input from the fuzz input: a frame, console input, or bytes
    /// on the vsock host sockets (with the first byte odd: a new host
    /// client of the device's socket sending them, e.g. `CONNECT 52\n`).
    pub fn host_event(&mut self, host: &HostSide, data: &[u8]) {
        match self {
            Backend::None => {}
            Backend::Frames(f) => f.push(data),
            Backend::Console(sink) => {
                let sink = lock(sink).clone();
                if let Some(sink) = sink {
                    sink(data);
                }
            }
            Backend::Vsock { streams } => {
                if data.first().is_some_and(|b| b & 1 == 1) && streams.len() < 16 {
                    if let Ok(mut s) = UnixStream::connect(&host.vsock_uds) {
                        let _ = s.set_nonblocking(true);
                        let _ = s.write(&data[1..]);
                        streams.push(s);
                    }
                    return;
                }
                host.accept_vsock(streams);
                for s in streams.iter_mut() {
                    let _ = s.write(data);
                    // Drain what the guest sent so its credit moves on.
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        }
    }
}

/// Creates the device `kind` (`mode` picks variants) on `host` and
/// `event_loop`; returns it with what the harness keeps of its back-end
/// and the features to acknowledge.
pub(super) fn make_device(
    kind: Device,
    mode: u8,
    host: &HostSide,
    event_loop: &EventLoop,
) -> io::Result<(Box<dyn VirtioDevice>, Backend, u64)> {
    let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let (dev, backend): (Box<dyn VirtioDevice>, Backend) = match kind {
        Device::Block => {
            let dev = match mode % 3 {
                0 => Block::new_empty(event_loop.clone()),
                m => Block::new(
                    BlockConfig {
                        path: host.disk.clone(),
                        read_only: m == 2,
                        direct: false,
                        serial: Some("fuzz-serial".into()),
                        rate_limit: Default::default(),
                    },
                    event_loop.clone(),
                )
                .map_err(|e| other(&e))?,
            };
            (Box::new(dev), Backend::None)
        }
        Device::NetTx | Device::NetRx => {
            let (io, handle) = FuzzFrames::new()?;
            let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
            let mut dev = Net::with_backend(Box::new(io), Some(mac), event_loop.clone())
                .map_err(|e| other(&e))?;
            if mode & 1 == 1 {
                // Tight limits both ways: frames are held (a received one
                // in the device's buffer) and released by the timers.
                let tight = RateLimitConfig {
                    ops: BucketConfig {
                        size: 1,
                        one_time_burst: 0,
                        refill_time_ms: 1,
                    },
                    bandwidth: BucketConfig {
                        size: 4096,
                        one_time_burst: 0,
                        refill_time_ms: 1,
                    },
                };
                dev = dev.with_limits(NetLimits {
                    rx: tight,
                    tx: tight,
                });
            }
            (Box::new(dev), Backend::Frames(handle))
        }
        Device::Vsock => {
            let dev = Vsock::new(
                VsockConfig {
                    guest_cid: 3,
                    uds_path: host.vsock_uds.clone(),
                },
                event_loop.clone(),
            )
            .map_err(|e| other(&e))?;
            (
                Box::new(dev),
                Backend::Vsock {
                    streams: Vec::new(),
                },
            )
        }
        Device::Rng => (
            Box::new(Rng::new(&host.entropy, event_loop.clone()).map_err(|e| other(&e))?),
            Backend::None,
        ),
        Device::Console => {
            let sink = Arc::new(Mutex::new(None));
            let be = FuzzConsole { sink: sink.clone() };
            let dev = Console::new(Box::new(be), event_loop.clone()).map_err(|e| other(&e))?;
            (Box::new(dev), Backend::Console(sink))
        }
    };
    // Mode bits above the variant choice drop offered features (e.g.
    // DISCARD, WRITE_ZEROES, indirect descriptors) from the driver's set.
    let offered = dev.features();
    let dropped = u64::from(mode >> 2) << 9 | u64::from(mode >> 7) << 28;
    let features = offered & !(dropped & !(1 << crate::VIRTIO_F_VERSION_1));
    Ok((dev, backend, features))
}
