//! Guest physical address space of an altovirt microVM: the RAM layout
//! (with the 32-bit MMIO gap), its registration with KVM, and the buses
//! that route port I/O and MMIO exits to device models.

pub mod bus;
pub mod memory;
pub mod ram_file;

pub use bus::{Bus, BusDevice, BusError};
pub use memory::{GuestMemoryMmap, MemoryError, MemoryOptions};
