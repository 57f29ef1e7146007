//! The i8042 keyboard controller, reduced to what a microVM needs: the
//! CPU-reset command (0xFE to port 0x64), which ends the VM.

use address_space::BusDevice;
use vm_superio::{I8042Device, Trigger};

/// Something to call when the guest resets the CPU through the i8042.
pub trait ResetNotifier: Send {
    /// The guest asked for a reset.
    fn reset(&self);
}

struct NotifierTrigger(Box<dyn ResetNotifier>);

impl Trigger for NotifierTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.reset();
        Ok(())
    }
}

/// The i8042 as a bus device.
pub struct I8042 {
    inner: I8042Device<NotifierTrigger>,
}

impl I8042 {
    /// Creates the controller; `notifier` runs on a guest reset request.
    pub fn new(notifier: Box<dyn ResetNotifier>) -> Self {
        Self {
            inner: I8042Device::new(NotifierTrigger(notifier)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |off| self.inner.read(off));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            let _ = self.inner.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicUsize>);
    impl ResetNotifier for Count {
        fn reset(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn reset_command_notifies_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut dev = I8042::new(Box::new(Count(n.clone())));
        dev.write(4, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
