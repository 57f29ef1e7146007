//! A bus routes guest accesses (port I/O or MMIO) in an address range to a
//! device model. Ranges never overlap; lookups are O(log n).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device model that can be reached through a [`Bus`].
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset` from the start of
    /// the device's range. Unwritten bytes of `data` read as the bus default.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset` from the start of the range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors raised while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps one that is already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&prev, entry)) = self.devices.range(..end).next_back() {
            if prev + entry.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the device registered at exactly `base`, returning whether one was.
    pub fn remove(&mut self, base: u64) -> bool {
        self.devices.remove(&base).is_some()
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        if offset.checked_add(size as u64)? <= entry.len {
            Some((offset, entry))
        } else {
            None
        }
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no
    /// device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering the guard if another thread panicked while
/// holding it (device state stays usable; a poisoned lock must not take down
/// every vCPU).
fn lock(device: &Mutex<dyn BusDevice>) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder {
        last_write: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder { last_write: vec![] }))
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x3fa, &mut buf));
        assert_eq!(buf, [2, 3]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(a.lock().unwrap().last_write, vec![(7, vec![9])]);
    }

    #[test]
    fn misses_outside_and_straddling_accesses() {
        let mut bus = Bus::new();
        bus.insert(0x100, 4, recorder()).unwrap();
        let mut buf = [0xaau8; 2];
        assert!(!bus.read(0xff, &mut buf));
        assert!(!bus.read(0x103, &mut buf), "access straddles the end");
        assert_eq!(buf, [0xaa, 0xaa]);
        assert!(!bus.write(0x104, &[1]));
    }

    #[test]
    fn rejects_overlap_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, recorder()).unwrap();
        assert_eq!(
            bus.insert(0x10f, 1, recorder()),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(0xf8, 0x10, recorder()),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert!(bus.insert(0x110, 1, recorder()).is_ok());
        assert!(bus.insert(0xf0, 0x10, recorder()).is_ok());
        assert!(matches!(
            bus.insert(0x200, 0, recorder()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, recorder()),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn remove_frees_the_range() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, recorder()).unwrap();
        assert!(bus.remove(0x100));
        assert!(!bus.remove(0x100));
        assert!(bus.insert(0x100, 0x10, recorder()).is_ok());
    }
}
