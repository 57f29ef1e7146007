use super::*;
use crate::hotplug::{BlockHotplug, Slot};
use crate::hotplug_request::{BlockdevRequest, DeviceRequest, ImageSource};
use std::sync::{Arc, Mutex};
use util::event_loop::EventLoop;
use virtio::block::Block;
use virtio::rate_limiter::{BucketConfig, RateLimitConfig};
use virtio::snapshot::{DeviceExtra, QueueSnapshot};

#[test]
fn window_differences_name_the_device() {
    let a = [("rng0", 0xd000_0000, virtio::TYPE_RNG)];
    let b = [
        ("rng0", 0xd000_0000, virtio::TYPE_RNG),
        ("blk-slot0", 0xd000_1000, virtio::TYPE_BLOCK),
    ];
    assert_eq!(window_difference(&a, &a), None);
    assert_eq!(
        window_difference(&a, &b).unwrap(),
        "virtio-blk 'blk-slot0' at 0xd0001000 is in this VM but not in the snapshot"
    );
    assert_eq!(
        window_difference(&b, &a).unwrap(),
        "virtio-blk 'blk-slot0' at 0xd0001000 is in the snapshot but not in this VM"
    );
    let c = [("rng1", 0xd000_0000, virtio::TYPE_RNG)];
    assert_eq!(
        window_difference(&a, &c).unwrap(),
        "window 0xd0000000: the snapshot has virtio-rng 'rng0' (at 0xd0000000), this VM virtio-rng 'rng1'"
    );
    let d = [("rng0", 0xd000_0000, virtio::TYPE_CONSOLE)];
    assert!(window_difference(&a, &d)
        .unwrap()
        .contains("this VM virtio-console 'rng0'"));
}

fn sample_state() -> DevicesState {
    let q = QueueSnapshot {
        max_size: 256,
        next_avail: 7,
        next_used: 5,
        event_idx_enabled: false,
        size: 128,
        ready: true,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
    };
    DevicesState {
        windows: vec![WindowState {
            id: "balloon0".into(),
            base: 0xd000_0000,
            transport: TransportState {
                device_type: virtio::TYPE_BALLOON,
                status: 0xf,
                driver_features: 1 << 32,
                device_features_sel: 1,
                driver_features_sel: 1,
                queue_sel: 1,
                queues: vec![q, q],
                queue_bad: vec![false, false],
                activated: true,
                interrupt_status: 1,
                needs_reset: false,
                config_generation: 3,
                device: DeviceExtra::Balloon {
                    num_pages: 100,
                    actual: 50,
                },
            },
        }],
        block_hotplug: BlockHotplugState {
            nodes: vec![],
            slots: vec![None],
            fixed: vec![],
        },
        net_hotplug: NetHotplugState {
            netdevs: vec![],
            slots: vec![],
        },
        serial: None,
        rtc: devices::cmos_rtc::CmosRtc::new().state(),
        i8042: devices::i8042::I8042::new(Box::new(NoReset), None).state(),
    }
}

struct NoReset;
impl devices::i8042::ResetNotifier for NoReset {
    fn reset(&self) {}
}

#[test]
fn state_survives_json() {
    let s = sample_state();
    let json = serde_json::to_string(&s).unwrap();
    let back: DevicesState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

fn image(dir: &std::path::Path, name: &str, len: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

fn empty_slots(el: &EventLoop, n: usize) -> BlockHotplug {
    let slots = (0..n)
        .map(|i| {
            Slot::new(
                Arc::new(Mutex::new(Block::new_empty(el.clone()))),
                0xd000_0000 + 0x1000 * i as u64,
            )
        })
        .collect();
    BlockHotplug::new(slots, vec![], vec![])
}

#[test]
fn hot_plugged_disk_is_replugged_into_its_slot() {
    let dir = std::env::temp_dir().join(format!("altovirt-snapdev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = image(&dir, "d.img", 1 << 20);
    let el = EventLoop::new("snap-hp").unwrap();
    let mut a = empty_slots(&el, 2);
    a.blockdev_add(&BlockdevRequest {
        node_name: "drive1".into(),
        source: ImageSource::Path(path.clone()),
        read_only: Some(true),
        direct: None,
    })
    .unwrap();
    a.device_add(&DeviceRequest {
        driver: "virtio-blk-mmio".into(),
        id: Some("disk1".into()),
        addr: Some("1".into()),
        drive: Some("drive1".into()),
        serial: Some("SER1".into()),
        ..Default::default()
    })
    .unwrap();
    let limits = RateLimitConfig {
        bandwidth: BucketConfig {
            size: 1 << 20,
            one_time_burst: 0,
            refill_time_ms: 100,
        },
        ..Default::default()
    };
    a.set_io_limits("disk1", limits).unwrap();
    let saved = a.save_state();
    assert_eq!(saved.slots[0], None);
    let disk = saved.slots[1].as_ref().unwrap();
    assert_eq!(disk.id, "disk1");
    assert_eq!(disk.serial.as_deref(), Some("SER1"));
    assert_eq!(disk.capacity, 2048);
    assert_eq!(disk.rate_limit, limits);
    // The old process ends (its image lock goes with it).
    assert!(a.device_del("disk1").is_ok());

    let mut b = empty_slots(&el, 2);
    b.restore_state(&saved).unwrap();
    assert_eq!(b.save_state(), saved);
    assert!(b.has_device("disk1"));
    // The node is in use again: it cannot be deleted.
    assert!(b.blockdev_del("drive1").is_err());

    // A resized image is refused.
    b.device_del("disk1").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let mut c = empty_slots(&el, 2);
    let e = c.restore_state(&saved).unwrap_err();
    assert!(
        e.contains("disk 'disk1': the image has 4096 sectors, the snapshot 2048"),
        "{e}"
    );
    let mut d = empty_slots(&el, 3);
    assert!(d
        .restore_state(&saved)
        .unwrap_err()
        .contains("2 block slots saved, 3 here"));
    el.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
