//! Filling the guest's receive queue: control packets first, then the
//! connections with something to send, round robin.

use super::{Muxer, BUDGET, RXQ};
use crate::vsock::packet::{rx_capacity, write_rx};

impl Muxer {
    /// Picks who sends the next packet: a control packet (`None`) or a
    /// connection (`Some(id)`); `None` when nothing is pending.
    fn next_sender(&mut self) -> Option<Option<u64>> {
        if !self.ctrl.is_empty() {
            return Some(None);
        }
        while let Some(&id) = self.rx_ready.front() {
            match self.conns.get_mut(&id) {
                Some(c) if c.has_rx() => return Some(Some(id)),
                Some(c) => c.queued = false,
                None => {}
            }
            self.rx_ready.pop_front();
        }
        None
    }

    /// Moves pending packets into the guest's receive buffers.
    pub(super) fn fill_rx(&mut self) {
        let mut used = false;
        let mut served = 0;
        loop {
            if served == BUDGET {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.rx_kick.write(1);
                }
                break;
            }
            let Some(sender) = self.next_sender() else {
                break;
            };
            let Some(a) = self.active.as_mut() else {
                return;
            };
            let Some(chain) = a.qs.pop(RXQ) else {
                break;
            };
            served += 1;
            let written = match rx_capacity(&a.qs.mem, &chain) {
                None => {
                    log::warn!("vsock: unusable receive buffer");
                    0
                }
                Some(room) => {
                    let pkt = match sender {
                        None => self.ctrl.pop_front().map(|h| (h, Vec::new())),
                        Some(id) => self.conns.get_mut(&id).and_then(|c| c.take_rx(room)),
                    };
                    pkt.and_then(|(h, data)| write_rx(&a.qs.mem, &chain, h, &data))
                        .unwrap_or(0)
                }
            };
            if !a.qs.add_used(RXQ, chain.head, written) {
                break;
            }
            used = true;
            if let Some(id) = sender {
                self.rx_ready.pop_front();
                if let Some(c) = self.conns.get_mut(&id) {
                    c.queued = false;
                }
                // Room freed in the staging buffer; requeues if more is due.
                self.pump(id);
            }
        }
        if let Some(a) = self.active.as_ref() {
            if used {
                a.qs.interrupt.signal_used_queue();
            }
        }
    }
}
