//! Hotplug slot tables.
//!
//! altovirt's microVM has no PCI: it creates empty virtio-mmio devices at
//! boot (`-machine microvm,blk-slots=N,net-slots=M`) and QMP fills them,
//! `device_add ... "addr":"<slot index>"`. The driver hands out the lowest
//! free slot (or the one asked for, bounds-checked), refuses when all are
//! taken and frees a slot on removal. For block devices the table is
//! rebuilt from `query-block` before every change, so a table saved by
//! another process can never be stale.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotEntry {
    /// Device id (`device_add id`).
    pub device: String,
    /// Back-end id: the block node name or the netdev id.
    pub backend: String,
    /// The image file or tap name, for display.
    pub source: String,
}

/// Slot errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Every slot is taken (or there are none).
    #[error(
        "no free {kind} slot: all {count} are in use (raise {kind}_slots in the configuration)"
    )]
    Full {
        /// `blk` or `net`.
        kind: &'static str,
        /// Number of slots.
        count: usize,
    },
    /// The slot asked for does not exist.
    #[error("{kind} slot {index} is out of range (0..{count})")]
    OutOfRange {
        /// `blk` or `net`.
        kind: &'static str,
        /// Requested index.
        index: usize,
        /// Number of slots.
        count: usize,
    },
    /// The slot asked for is taken.
    #[error("{kind} slot {index} is taken by {device}")]
    Taken {
        /// `blk` or `net`.
        kind: &'static str,
        /// Requested index.
        index: usize,
        /// The device in it.
        device: String,
    },
    /// A device with this id is already plugged.
    #[error("device {0} is already plugged")]
    Duplicate(String),
    /// No plugged device has this id.
    #[error("no hotplugged device {0}")]
    Unknown(String),
}

/// One kind of slots, by index.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SlotTable {
    /// `blk` or `net` (for messages).
    #[serde(skip)]
    kind: &'static str,
    /// The slots; `None` is free.
    pub slots: Vec<Option<SlotEntry>>,
}

impl PartialEq for SlotTable {
    fn eq(&self, other: &Self) -> bool {
        self.slots == other.slots
    }
}

impl Eq for SlotTable {}

impl SlotTable {
    /// `count` free slots of `kind` (`blk` or `net`).
    pub fn new(kind: &'static str, count: usize) -> Self {
        SlotTable {
            kind,
            slots: vec![None; count],
        }
    }

    /// Sets the kind after deserializing.
    pub fn with_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no slots at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// The slot and entry of `device`.
    pub fn find(&self, device: &str) -> Option<(usize, &SlotEntry)> {
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.as_ref().filter(|e| e.device == device).map(|e| (i, e)))
    }

    /// The slot `allocate` would use for `want`, without taking it.
    pub fn choose(&self, want: Option<usize>) -> Result<usize, SlotError> {
        let (kind, count) = (self.kind, self.slots.len());
        match want {
            Some(index) => match self.slots.get(index) {
                None => Err(SlotError::OutOfRange { kind, index, count }),
                Some(Some(e)) => Err(SlotError::Taken {
                    kind,
                    index,
                    device: e.device.clone(),
                }),
                Some(None) => Ok(index),
            },
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or(SlotError::Full { kind, count }),
        }
    }

    /// Puts `entry` into slot `want` (bounds-checked) or the lowest free
    /// one; refuses a device id already present.
    pub fn allocate(&mut self, want: Option<usize>, entry: SlotEntry) -> Result<usize, SlotError> {
        if self.find(&entry.device).is_some() {
            return Err(SlotError::Duplicate(entry.device));
        }
        let i = self.choose(want)?;
        self.slots[i] = Some(entry);
        Ok(i)
    }

    /// Frees the slot of `device`.
    pub fn release(&mut self, device: &str) -> Result<(usize, SlotEntry), SlotError> {
        let (i, _) = self
            .find(device)
            .ok_or_else(|| SlotError::Unknown(device.into()))?;
        let e = self.slots[i]
            .take()
            .ok_or_else(|| SlotError::Unknown(device.into()))?;
        Ok((i, e))
    }

    /// Rebuilds the table from altovirt's `query-block` reply (one entry per
    /// slot with `slot`, and `device` + `inserted` when filled; disks created
    /// at boot come first, without `slot`, and are not slots). Returns false
    /// (table untouched) if the reply has another shape.
    pub fn sync_from_query_block(&mut self, reply: &Value) -> bool {
        let Some(list) = reply.as_array() else {
            return false;
        };
        let mut slots: Vec<Option<SlotEntry>> = Vec::new();
        for b in list {
            let Some(slot) = b.get("slot") else {
                continue;
            };
            let Some(i) = slot.as_u64() else {
                return false;
            };
            let i = i as usize;
            if i >= 64 {
                return false;
            }
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            let device = b.get("device").and_then(Value::as_str).unwrap_or("");
            if device.is_empty() {
                continue;
            }
            let ins = b.get("inserted");
            let s = |k: &str| {
                ins.and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            slots[i] = Some(SlotEntry {
                device: device.into(),
                backend: s("node-name"),
                source: s("file"),
            });
        }
        self.slots = slots;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(d: &str) -> SlotEntry {
        SlotEntry {
            device: d.into(),
            backend: format!("drive-{d}"),
            source: "/img".into(),
        }
    }

    #[test]
    fn lowest_free_full_and_release() {
        let mut t = SlotTable::new("blk", 3);
        assert_eq!(t.allocate(None, e("a")), Ok(0));
        assert_eq!(t.allocate(None, e("b")), Ok(1));
        assert_eq!(t.allocate(None, e("c")), Ok(2));
        let full = t.allocate(None, e("d")).unwrap_err();
        assert_eq!(
            full,
            SlotError::Full {
                kind: "blk",
                count: 3
            }
        );
        assert!(full.to_string().contains("raise blk_slots"), "{full}");
        assert_eq!(t.release("b").unwrap().0, 1);
        assert_eq!(t.allocate(None, e("d")), Ok(1));
        assert_eq!(t.used(), 3);
        assert_eq!(t.release("zz"), Err(SlotError::Unknown("zz".into())));
    }

    #[test]
    fn explicit_slot_bounds_and_duplicates() {
        let mut t = SlotTable::new("net", 2);
        assert_eq!(
            t.allocate(Some(2), e("a")),
            Err(SlotError::OutOfRange {
                kind: "net",
                index: 2,
                count: 2
            })
        );
        assert_eq!(t.allocate(Some(1), e("a")), Ok(1));
        assert!(matches!(
            t.allocate(Some(1), e("b")),
            Err(SlotError::Taken { index: 1, .. })
        ));
        assert_eq!(
            t.allocate(None, e("a")),
            Err(SlotError::Duplicate("a".into()))
        );
        assert_eq!(t.allocate(None, e("b")), Ok(0));
        let none = SlotTable::new("net", 0);
        assert_eq!(
            none.choose(None),
            Err(SlotError::Full {
                kind: "net",
                count: 0
            })
        );
    }

    #[test]
    fn rebuilt_from_query_block() {
        let mut t = SlotTable::new("blk", 4);
        t.allocate(None, e("stale")).unwrap();
        let reply = json!([
            {"device": "rootfs", "qdev": "/machine/peripheral/virtio-blk0", "removable": false,
             "inserted": {"file": "/root.img", "ro": true, "drv": "raw"}},
            {"device": "", "slot": 0, "locked": false, "removable": true, "type": "unknown"},
            {"device": "vd1", "slot": 1, "qdev": "/machine/peripheral/vd1", "inserted":
                {"node-name": "drive-vd1", "file": "/x.img", "ro": false, "drv": "raw"}},
            {"device": "", "slot": 2}
        ]);
        assert!(t.sync_from_query_block(&reply));
        assert_eq!(t.len(), 3, "the boot disk is not a slot");
        assert_eq!(t.find("stale"), None);
        assert_eq!(t.find("rootfs"), None);
        let (i, got) = t.find("vd1").unwrap();
        assert_eq!(
            (i, got.backend.as_str(), got.source.as_str()),
            (1, "drive-vd1", "/x.img")
        );
        assert_eq!(t.choose(None), Ok(0));
        // Malformed replies leave the table alone.
        assert!(!t.sync_from_query_block(&json!({})));
        assert!(!t.sync_from_query_block(&json!([{"device": "", "slot": "0"}])));
        assert_eq!(t.len(), 3);
        // Boot disks only (blk-slots=0): no slot to plug into.
        assert!(t.sync_from_query_block(&json!([{"device": "rootfs"}])));
        assert_eq!(t.len(), 0);
    }
}
