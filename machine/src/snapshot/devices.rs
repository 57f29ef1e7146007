//! Device state in a snapshot: the virtio-mmio transports and their
//! devices (queue positions included), hot-plug slots, and the legacy
//! devices (serial, RTC, i8042). Being written (helper branch wip-snapdev).
