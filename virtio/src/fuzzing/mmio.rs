//! The MMIO fuzz target: register accesses on a virtio-mmio transport
//! holding a real device.

use std::sync::{Arc, Mutex};

use address_space::{BusDevice, GuestMemoryMmap};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::devices::{make_device, Device};
use super::guest::{guest_memory, Input};
use super::{write_ram, Fuzzer};
use crate::mmio::{MmioTransport, CONFIG_SPACE_OFFSET, MMIO_MAGIC_VALUE, MMIO_WINDOW_SIZE};
use crate::snapshot::TransportState;
use crate::{
    lock, ActivateError, Interrupt, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
};

/// Every status bit a driver may see.
const STATUS_BITS: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_DEVICE_NEEDS_RESET
    | STATUS_FAILED;
/// Offset of the Status register.
const REG_STATUS: u64 = 0x70;

/// A boxed device as the transport wants it.
struct Boxed(Box<dyn VirtioDevice>);

impl VirtioDevice for Boxed {
    fn device_type(&self) -> u32 {
        self.0.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.0.queue_max_sizes()
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn ack_features(&mut self, features: u64) {
        self.0.ack_features(features)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        self.0.activate(mem, interrupt, queues)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
}

const DEVICES: [Device; 5] = [
    Device::Rng,
    Device::Block,
    Device::NetTx,
    Device::Console,
    Device::Vsock,
];

/// Runs one MMIO input.
///
/// Byte 0 picks the device (modulo 5: rng, block on an image, net,
/// console, vsock), byte 1 its variant (as for the virtqueue targets).
/// Then operations, each an opcode byte (modulo 4) and operands:
///
/// | op | operands | effect |
/// |----|----------|--------|
/// | 0 | offset u16, width u8, value u64 | writes `1 << (width % 4)` bytes at `offset % 0x1000` |
/// | 1 | offset u16, width u8 | reads likewise |
/// | 2 | addr u16, n u8, n bytes | writes guest RAM (rings, buffers) |
/// | 3 | — | waits for the device's event loop |
///
/// After each access the transport's state must be consistent: Status
/// shows only defined bits, an activated device has DRIVER_OK, a device
/// needing reset shows DEVICE_NEEDS_RESET, MagicValue never changes. At
/// the end the driver resets the device (Status = 0).
pub(super) fn run(fuzzer: &Fuzzer, data: &[u8]) {
    let mut input = Input::new(data);
    let kind = DEVICES[usize::from(input.u8()) % DEVICES.len()];
    let mode = input.u8() | 1; // block: an image, not an empty slot
    let Ok((dev, _backend, _)) = make_device(kind, mode, &fuzzer.host, &fuzzer.event_loop) else {
        return;
    };
    let mem = guest_memory();
    let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Boxed(dev)));
    let Ok(mut t) = MmioTransport::new(mem.clone(), dev) else {
        return;
    };
    ops_then_reset(fuzzer, &mut t, &mem, &mut input);
}

/// Runs one snapshot-restore input: byte 0 picks the device and byte 1 its
/// variant (as for [`run`]), bytes 2-3 (little-endian) give the length of a
/// JSON `TransportState` that follows — what a snapshot's state file holds
/// for a window. The fresh transport is restored from it (a refusal is a
/// fine outcome; a panic or an inconsistent transport is not), the device
/// resumes, and the rest of the input is MMIO operations as for [`run`].
pub(super) fn run_restore(fuzzer: &Fuzzer, data: &[u8]) {
    let mut input = Input::new(data);
    let kind = DEVICES[usize::from(input.u8()) % DEVICES.len()];
    let mode = input.u8() | 1;
    let len = usize::from(input.u16());
    let json = input.bytes(len);
    let Ok(state) = serde_json::from_slice::<TransportState>(json) else {
        return;
    };
    let Ok((dev, _backend, _)) = make_device(kind, mode, &fuzzer.host, &fuzzer.event_loop) else {
        return;
    };
    let mem = guest_memory();
    let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Boxed(dev)));
    let Ok(mut t) = MmioTransport::new(mem.clone(), dev) else {
        return;
    };
    match t.restore(&state) {
        Ok(()) => {
            assert_eq!(t.is_activated(), state.activated, "activation not restored");
            t.resume_after_restore();
        }
        Err(_) => assert!(
            !t.is_activated(),
            "a refused restore left the device active"
        ),
    }
    check_transport(&mut t);
    ops_then_reset(fuzzer, &mut t, &mem, &mut input);
}

/// The MMIO operations of the rest of `input`, each followed by the
/// consistency checks; then the driver resets the device.
fn ops_then_reset(
    fuzzer: &Fuzzer,
    t: &mut MmioTransport,
    mem: &GuestMemoryMmap,
    input: &mut Input<'_>,
) {
    while !input.is_empty() {
        match input.u8() % 4 {
            0 => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW_SIZE;
                let width = 1usize << (input.u8() % 4);
                let value = input.u64().to_le_bytes();
                t.write(offset, &value[..width]);
            }
            1 => {
                let offset = u64::from(input.u16()) % MMIO_WINDOW_SIZE;
                let mut buf = vec![0xa5u8; 1usize << (input.u8() % 4)];
                t.read(offset, &mut buf);
                if offset >= CONFIG_SPACE_OFFSET {
                    continue;
                }
                if buf.len() != 4 || !offset.is_multiple_of(4) {
                    assert!(buf.iter().all(|&b| b == 0), "odd register read not zero");
                }
            }
            2 => {
                let addr = input.u16();
                let n = input.u8();
                write_ram(mem, addr, input.bytes(usize::from(n)));
            }
            _ => fuzzer.barrier.wait(),
        }
        check_transport(t);
    }
    fuzzer.barrier.wait();
    t.write(REG_STATUS, &0u32.to_le_bytes());
    let status = read_reg(t, REG_STATUS);
    assert_eq!(status, 0, "status after reset");
    assert!(!t.is_activated(), "device still active after reset");
    // The device must be idle again: no handler of this run may still run.
    fuzzer.barrier.wait();
    let dev = t.device();
    drop(lock(&dev));
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn check_transport(t: &mut MmioTransport) {
    assert_eq!(read_reg(t, 0), MMIO_MAGIC_VALUE, "MagicValue changed");
    // The device's thread may enter DEVICE_NEEDS_RESET at any moment
    // (nothing else changes behind this thread's back): look before
    // reading Status, and compare the rest without that bit.
    let needed_reset = t.interrupt().needs_reset();
    let status = read_reg(t, REG_STATUS);
    assert_eq!(
        status & !STATUS_BITS,
        0,
        "undefined status bits {status:#x}"
    );
    if t.is_activated() {
        assert_ne!(status & STATUS_DRIVER_OK, 0, "active without DRIVER_OK");
    }
    if needed_reset {
        assert_ne!(
            status & STATUS_DEVICE_NEEDS_RESET,
            0,
            "needs reset not shown"
        );
    }
    assert_eq!(
        status & !STATUS_DEVICE_NEEDS_RESET,
        t.status() & !STATUS_DEVICE_NEEDS_RESET,
        "Status register and status() disagree"
    );
}
