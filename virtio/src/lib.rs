//! virtio-mmio transport and devices (block, net, rng, console, vsock).
//!
//! Not implemented yet: this crate is part of the workspace layout and is
//! filled by the virtio-mmio issue. Device sections in the configuration are
//! refused with a clear error until then.
