//! The boot-complete port: when the guest writes
//! [`crate::BOOT_COMPLETE_MAGIC`] to [`crate::BOOT_COMPLETE_PORT`], the time
//! since the VMM process started is logged (`boot complete after N us`).

use std::time::{Duration, Instant};

use address_space::BusDevice;

use crate::BOOT_COMPLETE_MAGIC;

/// Records when the guest reports that it has booted.
pub struct BootCompletePort {
    start: Instant,
    reported: Option<Duration>,
}

impl BootCompletePort {
    /// `start` is when the VMM process started.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            reported: None,
        }
    }

    /// Time from start to the first boot-complete write, if it happened.
    pub fn boot_time(&self) -> Option<Duration> {
        self.reported
    }
}

impl BusDevice for BootCompletePort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_COMPLETE_MAGIC) && self.reported.is_none() {
            let t = self.start.elapsed();
            self.reported = Some(t);
            log::info!("guest boot complete after {} us", t.as_micros());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_value_counts_and_only_once() {
        let mut p = BootCompletePort::new(Instant::now());
        p.write(0, &[1]);
        assert!(p.boot_time().is_none());
        p.write(0, &[BOOT_COMPLETE_MAGIC]);
        let first = p.boot_time().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        p.write(0, &[BOOT_COMPLETE_MAGIC]);
        assert_eq!(p.boot_time(), Some(first));
    }
}
