//! COM1: vm-superio's 16550A with its interrupt delivered through an
//! eventfd (registered by the machine as an irqfd) and output to stdout or
//! a file. Input comes from a host reader on its own thread.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use address_space::BusDevice;
use serde::{Deserialize, Serialize};
use vm_superio::{serial::NoEvents, serial::SerialState, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::DeviceError;

/// The 16550A's registers and receive FIFO, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// Raises the serial interrupt by signalling an eventfd.
pub struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// Creates the UART writing guest output to `out`. Returns the device and
    /// the eventfd that fires on each interrupt.
    pub fn new(out: Box<dyn Write + Send>) -> Result<(Self, EventFd), DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
            what: "serial",
            source,
        })?;
        let irq = evt.try_clone().map_err(|source| DeviceError::EventFd {
            what: "serial",
            source,
        })?;
        Ok((
            Self {
                serial: Serial::new(EventFdTrigger(evt), out),
            },
            irq,
        ))
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        let n = room.min(bytes.len());
        if n == 0 {
            return 0;
        }
        match self.serial.enqueue_raw_bytes(&bytes[..n]) {
            Ok(written) => written,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                n
            }
        }
    }

    /// The UART's registers and receive FIFO (snapshots).
    pub fn state(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts saved registers and FIFO contents back; output and interrupt
    /// stay wired as they are.
    pub fn restore(&mut self, s: &SerialSnapshot) -> Result<(), DeviceError> {
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let evt_err = |source| DeviceError::EventFd {
            what: "serial",
            source,
        };
        let trigger = EventFdTrigger(self.serial.interrupt_evt().0.try_clone().map_err(evt_err)?);
        let spare = EventFdTrigger(self.serial.interrupt_evt().0.try_clone().map_err(evt_err)?);
        let sink: Box<dyn Write + Send> = Box::new(std::io::sink());
        let old = std::mem::replace(&mut self.serial, Serial::new(spare, sink));
        let out = old.into_writer();
        // Only a too-long FIFO fails, and the saved one came from a UART.
        match Serial::from_state(&state, trigger, NoEvents, out) {
            Ok(serial) => {
                self.serial = serial;
                Ok(())
            }
            Err(e) => Err(DeviceError::BadState(format!("serial: {e:?}"))),
        }
    }

    /// Flushes buffered guest output.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.serial.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.serial.write(off, *byte) {
                // Losing console output must not stop the guest.
                log::debug!("serial write failed: {e:?}");
            }
        }
    }
}

/// Feeds bytes from `input` into the UART until `input` reaches EOF or
/// fails. Runs on its own thread; waits while the guest's FIFO is full.
/// The thread first installs `filter` (a seccomp program) and ends the
/// process if it cannot.
pub fn spawn_input_thread(
    device: Arc<Mutex<SerialDevice>>,
    mut input: Box<dyn Read + Send>,
    filter: Option<Arc<seccompiler::BpfProgram>>,
) -> Result<(), DeviceError> {
    std::thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            util::confine::confine_or_exit("serial-in", filter.as_deref());
            let mut buf = [0u8; 64];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let mut sent = 0;
                while sent < n {
                    let took = device
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .enqueue_input(&buf[sent..n]);
                    sent += took;
                    if took == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(DeviceError::InputThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let sink = Sink::default();
        let (mut dev, _irq) = SerialDevice::new(Box::new(sink.clone())).unwrap();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        // LSR reports an empty transmitter.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn input_is_readable_and_raises_interrupt() {
        let (mut dev, irq) = SerialDevice::new(Box::new(Sink::default())).unwrap();
        dev.write(1, &[0x01]); // IER: data-available interrupt
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'o');
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (mut dev, _irq) = SerialDevice::new(Box::new(Sink::default())).unwrap();
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
    }

    #[test]
    fn state_round_trip_keeps_registers_fifo_and_output() {
        let sink = Sink::default();
        let (mut a, _irq) = SerialDevice::new(Box::new(sink.clone())).unwrap();
        a.write(3, &[0x80]); // LCR: DLAB
        a.write(0, &[0x0c]); // divisor 9600 baud
        a.write(3, &[0x03]); // 8N1
        a.write(1, &[0x01]);
        a.write(7, &[0x5a]); // scratch
        a.enqueue_input(b"xyz");
        let saved = a.state();
        assert_eq!(saved.in_buffer, b"xyz");

        let sink_b = Sink::default();
        let (mut b, irq_b) = SerialDevice::new(Box::new(sink_b.clone())).unwrap();
        b.restore(&saved).unwrap();
        assert_eq!(b.state(), saved);
        let mut r = [0u8];
        b.read(7, &mut r);
        assert_eq!(r[0], 0x5a);
        b.read(0, &mut r);
        assert_eq!(r[0], b'x', "FIFO survives");
        // Output and interrupt are still wired to the new device's own.
        b.write(0, b"!");
        assert_eq!(&*sink_b.0.lock().unwrap(), b"!");
        b.enqueue_input(b"q");
        assert!(irq_b.read().is_ok());
    }
}
