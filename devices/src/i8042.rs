//! The i8042 keyboard controller of a microVM: enough of the controller for
//! a Linux guest to probe it quickly and to reset the machine through it
//! (0xFE to port 0x64 ends the VM, as `reboot=k` does), with a keyboard
//! that answers the commands the guest's driver sends and never has a key
//! pressed. There is no mouse (auxiliary) port.
//!
//! vm-superio's i8042 only implements the reset command; a guest probing it
//! then waits for replies that never come ("Can't read CTR", about a second
//! of boot time), so this model answers the controller and keyboard
//! commands too (PS/2 controller and keyboard protocols as on the IBM AT).
//!
//! Replies to controller commands are polled by the guest through the
//! status register; replies from the keyboard raise IRQ 1 when the
//! configuration byte enables the keyboard interrupt, one byte at a time.

use std::collections::VecDeque;

use address_space::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Something to call when the guest resets the CPU through the i8042.
pub trait ResetNotifier: Send {
    /// The guest asked for a reset.
    fn reset(&self);
}

/// Offset of the data port (0x60) in the device's window.
const DATA: u64 = 0;
/// Offset of the status (read) and command (write) port (0x64).
const COMMAND: u64 = 4;

/// Status: the output buffer holds a byte for the guest.
const ST_OBF: u8 = 1 << 0;
/// Status: the system flag (self-test passed).
const ST_SYS: u8 = 1 << 2;
/// Status: the last write was a command (port 0x64), not data.
const ST_CMD: u8 = 1 << 3;
/// Status: the keyboard is not inhibited (key lock open).
const ST_UNLOCKED: u8 = 1 << 4;
/// Status: the byte in the output buffer came from the auxiliary port.
const ST_AUX_DATA: u8 = 1 << 5;

/// Configuration byte: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 1 << 0;
/// Configuration byte: system flag.
const CTR_SYS: u8 = 1 << 2;
/// Configuration byte: keyboard clock disabled.
const CTR_KBD_DISABLED: u8 = 1 << 4;
/// Configuration byte: auxiliary clock disabled (there is no mouse).
const CTR_AUX_DISABLED: u8 = 1 << 5;
/// Configuration byte: scan code set 1 translation.
const CTR_XLATE: u8 = 1 << 6;
/// The configuration byte after power-on.
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLED | CTR_XLATE;

/// Controller commands (written to port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Port test: no error.
const PORT_TEST_OK: u8 = 0x00;
/// Port test: the clock line is stuck low (how a missing port answers).
const PORT_TEST_CLOCK_LOW: u8 = 0x01;
/// Output port: bit 0 low holds the CPU in reset; bit 1 is the A20 gate.
const OUTPUT_PORT_RESET_LINE: u8 = 1 << 0;
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
/// Keyboard commands followed by a parameter byte (set LEDs, set scan code
/// set, set typematic rate).
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_SCANSET: u8 = 0xf0;
const KBD_CMD_SET_RATE: u8 = 0xf3;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_GET_ID: u8 = 0xf2;
const KBD_CMD_RESET: u8 = 0xff;
/// An MF2 keyboard, translated (what GET ID answers after the ACK).
const KBD_ID: [u8; 2] = [0xab, 0x41];

/// Longest queue of keyboard replies kept (a guest that never reads them
/// cannot make the device grow).
const MAX_QUEUED: usize = 16;

/// What the next byte written to the data port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DataTarget {
    /// A command for the keyboard.
    Keyboard,
    /// The parameter of a keyboard command.
    KeyboardParam,
    /// The new configuration byte.
    Ctr,
    /// The new output port value.
    OutputPort,
    /// A byte to hand back as if the keyboard sent it.
    KbdOutbuf,
    /// A byte to hand back as if the auxiliary port sent it (the loopback
    /// test a guest runs before it looks for a mouse).
    AuxOutbuf,
    /// A byte for the missing mouse (dropped).
    Aux,
}

/// The i8042 as a bus device (ports 0x60-0x64).
pub struct I8042 {
    notifier: Box<dyn ResetNotifier>,
    irq: Option<EventFd>,
    ctr: u8,
    status: u8,
    /// Byte the guest reads next from the data port, if any.
    out: Option<u8>,
    /// Keyboard bytes waiting behind `out`.
    queue: VecDeque<u8>,
    target: DataTarget,
}

/// The i8042 as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Status register.
    pub status: u8,
    /// Byte waiting in the output buffer.
    pub out: Option<u8>,
    /// Keyboard bytes waiting behind it.
    pub queue: Vec<u8>,
    /// What the next data-port byte is for.
    pub target: DataTarget,
}

impl I8042 {
    /// The controller's registers (snapshots).
    pub fn state(&self) -> I8042Snapshot {
        I8042Snapshot {
            ctr: self.ctr,
            status: self.status,
            out: self.out,
            queue: self.queue.iter().copied().collect(),
            target: self.target,
        }
    }

    /// Puts saved registers back (the reset notifier and IRQ stay).
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.ctr = s.ctr;
        self.status = s.status;
        self.out = s.out;
        self.queue = s.queue.iter().copied().take(MAX_QUEUED).collect();
        self.target = s.target;
    }

    /// Creates the controller; `notifier` runs on a guest reset request;
    /// `irq` (IRQ 1), if given, is signalled when a keyboard byte is ready.
    pub fn new(notifier: Box<dyn ResetNotifier>, irq: Option<EventFd>) -> Self {
        I8042 {
            notifier,
            irq,
            ctr: CTR_DEFAULT,
            status: ST_SYS | ST_UNLOCKED,
            out: None,
            queue: VecDeque::new(),
            target: DataTarget::Keyboard,
        }
    }

    /// A controller reply: replaces whatever was waiting (the guest polls
    /// for it with interrupts off, as Linux's i8042 driver does).
    fn reply(&mut self, byte: u8) {
        self.queue.clear();
        self.out = Some(byte);
    }

    /// Keyboard bytes: queued, delivered one at a time with IRQ 1.
    fn kbd_send(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.queue.len() < MAX_QUEUED {
                self.queue.push_back(b);
            }
        }
        self.refill();
    }

    /// Moves the next keyboard byte into the output buffer and raises the
    /// interrupt for it.
    fn refill(&mut self) {
        if self.out.is_some() || self.ctr & CTR_KBD_DISABLED != 0 {
            return;
        }
        if let Some(b) = self.queue.pop_front() {
            self.out = Some(b);
            if self.ctr & CTR_KBD_INT != 0 {
                if let Some(irq) = &self.irq {
                    if let Err(e) = irq.write(1) {
                        log::warn!("i8042: cannot raise IRQ 1: {e}");
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.target = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR => self.target = DataTarget::Ctr,
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
            // No mouse: the port stays disabled and fails its test.
            CMD_AUX_ENABLE => {}
            CMD_AUX_TEST => self.reply(PORT_TEST_CLOCK_LOW),
            CMD_SELF_TEST => {
                self.ctr = CTR_DEFAULT;
                self.status |= ST_SYS;
                self.reply(SELF_TEST_OK);
            }
            CMD_KBD_TEST => self.reply(PORT_TEST_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => {
                self.ctr &= !CTR_KBD_DISABLED;
                self.refill();
            }
            CMD_READ_OUTPUT_PORT => self.reply(OUTPUT_PORT_DEFAULT),
            CMD_WRITE_OUTPUT_PORT => self.target = DataTarget::OutputPort,
            CMD_WRITE_KBD_OUTBUF => self.target = DataTarget::KbdOutbuf,
            CMD_WRITE_AUX_OUTBUF => self.target = DataTarget::AuxOutbuf,
            CMD_WRITE_TO_AUX => self.target = DataTarget::Aux,
            // Pulse output lines: bit 0 clear pulses the reset line.
            0xf0..=0xff if cmd & 1 == 0 => self.notifier.reset(),
            0xf0..=0xff => {}
            other => log::debug!("i8042: ignored controller command {other:#04x}"),
        }
    }

    fn data(&mut self, byte: u8) {
        let target = std::mem::replace(&mut self.target, DataTarget::Keyboard);
        match target {
            DataTarget::Ctr => {
                self.ctr = byte;
                self.refill();
            }
            DataTarget::OutputPort => {
                if byte & OUTPUT_PORT_RESET_LINE == 0 {
                    self.notifier.reset();
                }
            }
            DataTarget::KbdOutbuf => self.kbd_send(&[byte]),
            DataTarget::AuxOutbuf => {
                self.reply(byte);
                self.status |= ST_AUX_DATA;
            }
            DataTarget::Aux => {}
            DataTarget::KeyboardParam => self.kbd_send(&[KBD_ACK]),
            DataTarget::Keyboard => self.keyboard(byte),
        }
    }

    /// A command for the keyboard itself.
    fn keyboard(&mut self, cmd: u8) {
        // Writing to the keyboard enables its clock, as on real hardware.
        self.ctr &= !CTR_KBD_DISABLED;
        match cmd {
            KBD_CMD_SET_LEDS | KBD_CMD_SCANSET | KBD_CMD_SET_RATE => {
                self.target = DataTarget::KeyboardParam;
                self.kbd_send(&[KBD_ACK]);
            }
            KBD_CMD_ECHO => self.kbd_send(&[KBD_ECHO]),
            KBD_CMD_GET_ID => self.kbd_send(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_CMD_RESET => self.kbd_send(&[KBD_ACK, KBD_SELF_TEST_OK]),
            _ => self.kbd_send(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => {
                let v = self.out.take().unwrap_or(0);
                self.status &= !ST_AUX_DATA;
                self.refill();
                v
            }
            COMMAND => self.status | if self.out.is_some() { ST_OBF } else { 0 },
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            return;
        };
        match offset {
            DATA => {
                self.status &= !ST_CMD;
                self.data(*value);
            }
            COMMAND => {
                self.status |= ST_CMD;
                if *value == CMD_RESET_CPU {
                    self.notifier.reset();
                } else {
                    self.command(*value);
                }
            }
            _ => {}
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

    fn dev() -> (I8042, Arc<AtomicUsize>, EventFd) {
        let n = Arc::new(AtomicUsize::new(0));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = I8042::new(Box::new(Count(n.clone())), Some(irq.try_clone().unwrap()));
        (d, n, irq)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_and_output_port_pulse_notify() {
        let (mut d, n, _) = dev();
        d.write(COMMAND, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        d.write(COMMAND, &[0xaa]);
        d.write(DATA, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Write output port with the reset line low.
        d.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA, &[0x02]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        // Word writes are ignored.
        d.write(COMMAND, &[0xfe, 0]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn configuration_byte_is_read_and_written_by_polling() {
        let (mut d, _, irq) = dev();
        assert_eq!(rd(&mut d, COMMAND) & ST_OBF, 0);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, COMMAND) & ST_OBF, ST_OBF);
        assert_eq!(rd(&mut d, DATA), CTR_DEFAULT);
        assert_eq!(rd(&mut d, COMMAND) & ST_OBF, 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x65]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, DATA), 0x65);
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, DATA), SELF_TEST_OK);
        d.write(COMMAND, &[CMD_AUX_TEST]);
        assert_eq!(rd(&mut d, DATA), PORT_TEST_CLOCK_LOW, "no mouse");
        // Auxiliary loopback answers at once, flagged as auxiliary data.
        d.write(COMMAND, &[CMD_WRITE_AUX_OUTBUF]);
        d.write(DATA, &[0x5a]);
        assert_eq!(
            rd(&mut d, COMMAND) & (ST_OBF | ST_AUX_DATA),
            ST_OBF | ST_AUX_DATA
        );
        assert_eq!(rd(&mut d, DATA), 0x5a);
        assert_eq!(rd(&mut d, COMMAND) & ST_AUX_DATA, 0);
        // The mouse port cannot be enabled: there is none.
        d.write(COMMAND, &[CMD_AUX_ENABLE]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_ne!(rd(&mut d, DATA) & CTR_AUX_DISABLED, 0);
        // Controller replies raise no interrupt.
        assert!(irq.read().is_err());
    }

    #[test]
    fn keyboard_replies_one_byte_per_interrupt() {
        let (mut d, _, irq) = dev();
        d.write(DATA, &[KBD_CMD_GET_ID]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(rd(&mut d, DATA), 0xab);
        assert_eq!(rd(&mut d, DATA), 0x41);
        assert_eq!(rd(&mut d, COMMAND) & ST_OBF, 0);
        // Set LEDs takes a parameter, each byte acknowledged.
        d.write(DATA, &[KBD_CMD_SET_LEDS]);
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        d.write(DATA, &[0x07]);
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        d.write(DATA, &[KBD_CMD_RESET]);
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        assert_eq!(rd(&mut d, DATA), KBD_SELF_TEST_OK);
    }

    #[test]
    fn disabled_keyboard_interrupt_and_bounded_queue() {
        let (mut d, _, irq) = dev();
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CTR_SYS]);
        d.write(DATA, &[KBD_CMD_ECHO]);
        assert!(irq.read().is_err(), "no IRQ without CTR_KBD_INT");
        assert_eq!(rd(&mut d, DATA), KBD_ECHO);
        for _ in 0..1000 {
            d.write(DATA, &[KBD_CMD_RESET]);
        }
        let mut n = 0;
        while rd(&mut d, COMMAND) & ST_OBF != 0 {
            rd(&mut d, DATA);
            n += 1;
        }
        assert!(n <= MAX_QUEUED + 1, "{n} bytes queued");
    }

    #[test]
    fn state_round_trip_keeps_registers_and_queue() {
        let (mut a, _n, _irq) = dev();
        a.kbd_send(&[1, 2, 3]);
        a.target = DataTarget::Ctr;
        let s = a.state();
        let (mut b, _n2, _irq2) = dev();
        b.restore(&s);
        assert_eq!(b.state(), s);
        assert_eq!(rd(&mut b, 0), 1);
    }
}
