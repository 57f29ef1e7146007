//! Hotplug of network back-ends into pre-created virtio-net slots.
//!
//! An empty slot ([`Net::new_empty`]) is a complete virtio-net device with
//! its link down and an [`Unplugged`] back-end: it offers the same features
//! as any NIC (VERSION_1, INDIRECT_DESC, MAC, STATUS), so a guest probes it
//! at boot like a NIC whose cable is out. [`Net::attach`] plugs a TAP in:
//! the MAC and the link status (up) change in configuration space and the
//! driver gets a configuration change interrupt; [`Net::detach`] takes the
//! link down again and closes the TAP. The back-end plugged in brings its
//! rate limits; an empty slot has none (the timers a limit created stay
//! with the device for the next back-end, see [`Net::set_limits`]).
//!
//! A driver reads the MAC when it probes the device; Linux re-reads only
//! the link status on a configuration change, so a Linux guest shows the
//! MAC given to `device_add` after it re-probes the device (unbind and bind
//! the virtio-mmio platform device), while the link state and the frames
//! follow the hotplug at once.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{derived_mac, mac_or_derived, FrameIo, Net, NetError, NetLimits, VIRTIO_NET_S_LINK_UP};
use crate::lock;

/// Name of the back-end of an empty slot, as shown in log lines.
pub const UNPLUGGED_NAME: &str = "(empty slot)";

/// The back-end of an empty slot: frames sent are dropped (the cable is
/// out) and none ever arrives. Its descriptor is an eventfd nobody writes,
/// so it never polls readable.
pub struct Unplugged {
    evt: EventFd,
}

impl Unplugged {
    /// A new unplugged back-end.
    pub fn new() -> io::Result<Self> {
        Ok(Unplugged {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }
}

impl AsRawFd for Unplugged {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl FrameIo for Unplugged {
    fn name(&self) -> &str {
        UNPLUGGED_NAME
    }

    fn send(&self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Net {
    /// Creates a virtio-net device with no back-end and its link down: a
    /// slot a TAP can be plugged into later with [`Net::attach`]. Its MAC
    /// until then is derived from `slot_name`.
    pub fn new_empty(
        slot_name: &str,
        event_loop: util::event_loop::EventLoop,
    ) -> Result<Net, NetError> {
        let io = Unplugged::new().map_err(NetError::Backend)?;
        let mut net = Net::with_backend(Box::new(io), Some(derived_mac(slot_name)), event_loop)?;
        net.plugged = false;
        net.set_link(false);
        Ok(net)
    }

    /// Whether no back-end is plugged in.
    pub fn is_empty(&self) -> bool {
        !self.plugged
    }

    /// Plugs `io` into an empty slot with `mac` (or one derived from the
    /// back-end's name) under `limits`: frames flow at once, the link goes
    /// up, and an active driver gets a configuration change interrupt.
    ///
    /// Errors: [`NetError::SlotBusy`] if a back-end is plugged in,
    /// [`NetError::InvalidMac`] for an address a NIC cannot own,
    /// [`NetError::Timer`] if a limit's timer cannot be set up (nothing
    /// changes then).
    pub fn attach(
        &mut self,
        io: Arc<dyn FrameIo>,
        mac: Option<[u8; 6]>,
        limits: NetLimits,
    ) -> Result<(), NetError> {
        if self.plugged {
            return Err(NetError::SlotBusy);
        }
        let mac = mac_or_derived(mac, io.name())?;
        // Before the first frame moves.
        self.set_limits(limits)?;
        self.mac = mac;
        self.config[0..6].copy_from_slice(&mac);
        self.swap_io(io);
        self.plugged = true;
        self.set_link(true);
        Ok(())
    }

    /// Unplugs the back-end: the link goes down (the driver is told), no
    /// frame moves any more, and the event loop no longer watches the
    /// back-end, which is handed back (the device keeps no reference to
    /// it: dropping it closes it).
    ///
    /// Errors: [`NetError::SlotEmpty`] if nothing is plugged in.
    pub fn detach(&mut self) -> Result<Arc<dyn FrameIo>, NetError> {
        if !self.plugged {
            return Err(NetError::SlotEmpty);
        }
        let io = Unplugged::new().map_err(NetError::Backend)?;
        self.set_link(false);
        let old = self.swap_io(Arc::new(io));
        self.plugged = false;
        // Lifting limits creates nothing, so cannot fail.
        if let Err(e) = self.set_limits(NetLimits::default()) {
            log::warn!("virtio-net: {}: {e}", self.io.name());
        }
        Ok(old)
    }

    /// Replaces the back-end, in the worker too when the device is active;
    /// returns the old one.
    fn swap_io(&mut self, io: Arc<dyn FrameIo>) -> Arc<dyn FrameIo> {
        if let Some(active) = &self.active {
            let token = lock(&active.worker).set_io(io.clone());
            // Not under the worker lock: remove() waits for a running
            // receive handler, which takes it.
            if let Some(token) = token {
                if let Err(e) = self.event_loop.remove(token) {
                    log::debug!("virtio-net: {}: {e}", self.io.name());
                }
            }
            lock(&active.worker).start_reading();
        }
        std::mem::replace(&mut self.io, io)
    }

    /// Sets the link status and tells an active driver.
    fn set_link(&mut self, up: bool) {
        let status = if up { VIRTIO_NET_S_LINK_UP } else { 0 };
        self.config[6..8].copy_from_slice(&status.to_le_bytes());
        if let Some(active) = &self.active {
            lock(&active.worker).signal_config_change();
        }
    }
}
