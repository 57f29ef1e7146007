//! Kata's `disk_rate_limiter_*` and `net_rate_limiter_*` keys as altovirt
//! options.
//!
//! Kata gives bandwidth in bits per second (and its one-time burst in bits)
//! and operations per second; altovirt takes bytes. Disks get
//! `iops=`/`bps=` (StratoVirt's spelling) or `throttling.iops-total=`/
//! `throttling.bps-total=` (QEMU's) with `…_max` as the one-time burst.
//! Kata applies its network limits to both directions of a NIC (its
//! hypervisor config: the same value is used for inbound and outbound
//! traffic), so taps get altovirt's `rx_…` and `tx_…` keys alike, on the
//! command line and as `netdev_add` arguments for a hot-plugged NIC. 0 is
//! no limit and adds nothing.

use serde_json::{json, Value};

use crate::config::HypervisorConfig;

/// One limited quantity: rate per second and one-time burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    rate: u64,
    burst: u64,
}

impl Limit {
    fn bits(rate: u64, burst: u64) -> Self {
        Limit {
            rate: rate / 8,
            burst: burst / 8,
        }
    }
}

/// Appends `,KEY=RATE[,KEY_MAX=BURST]` when `l` limits something.
fn push(out: &mut String, key: &str, max_key: &str, l: Limit) {
    if l.rate == 0 {
        return;
    }
    out.push_str(&format!(",{key}={}", l.rate));
    if l.burst > 0 {
        out.push_str(&format!(",{max_key}={}", l.burst));
    }
}

fn disk(hv: &HypervisorConfig) -> (Limit, Limit) {
    (
        Limit::bits(
            hv.disk_rate_limiter_bw_max_rate,
            hv.disk_rate_limiter_bw_one_time_burst,
        ),
        Limit {
            rate: hv.disk_rate_limiter_ops_max_rate,
            burst: hv.disk_rate_limiter_ops_one_time_burst,
        },
    )
}

/// The `-drive` options of Kata's disk limits; `qemu_style` picks QEMU's
/// `throttling.*` spelling.
pub fn drive_options(hv: &HypervisorConfig, qemu_style: bool) -> String {
    let (bw, ops) = disk(hv);
    let mut out = String::new();
    if qemu_style {
        push(
            &mut out,
            "throttling.iops-total",
            "throttling.iops-total-max",
            ops,
        );
        push(
            &mut out,
            "throttling.bps-total",
            "throttling.bps-total-max",
            bw,
        );
    } else {
        push(&mut out, "iops", "iops_max", ops);
        push(&mut out, "bps", "bps_max", bw);
    }
    out
}

fn net(hv: &HypervisorConfig) -> (Limit, Limit) {
    (
        Limit::bits(
            hv.net_rate_limiter_bw_max_rate,
            hv.net_rate_limiter_bw_one_time_burst,
        ),
        Limit {
            rate: hv.net_rate_limiter_ops_max_rate,
            burst: hv.net_rate_limiter_ops_one_time_burst,
        },
    )
}

/// The `-netdev tap` options of Kata's network limits (both directions).
pub fn netdev_options(hv: &HypervisorConfig) -> String {
    let (bw, ops) = net(hv);
    let mut out = String::new();
    for dir in ["rx", "tx"] {
        push(
            &mut out,
            &format!("{dir}_iops"),
            &format!("{dir}_iops_max"),
            ops,
        );
        push(
            &mut out,
            &format!("{dir}_bps"),
            &format!("{dir}_bps_max"),
            bw,
        );
    }
    out
}

/// Adds Kata's network limits (both directions) to the `netdev_add`
/// arguments `args` of a hot-plugged tap (altovirt's extension keys).
pub fn add_netdev_limits(hv: &HypervisorConfig, args: &mut Value) {
    let (bw, ops) = net(hv);
    for dir in ["rx", "tx"] {
        for (key, l) in [("iops", ops), ("bps", bw)] {
            if l.rate == 0 {
                continue;
            }
            args[format!("{dir}_{key}")] = json!(l.rate);
            if l.burst > 0 {
                args[format!("{dir}_{key}_max")] = json!(l.burst);
            }
        }
    }
}

/// The `block_set_io_throttle` arguments that give the hot-plugged disk
/// `id` Kata's disk limits; `None` when there are none.
pub fn throttle_args(hv: &HypervisorConfig, id: &str) -> Option<Value> {
    let (bw, ops) = disk(hv);
    if bw.rate == 0 && ops.rate == 0 {
        return None;
    }
    Some(json!({"id": id, "bps": bw.rate, "bps_rd": 0, "bps_wr": 0,
                "iops": ops.rate, "iops_rd": 0, "iops_wr": 0,
                "bps_max": bw.burst, "iops_max": ops.burst}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_units_become_altovirt_options() {
        let mut hv = HypervisorConfig::default();
        assert_eq!(drive_options(&hv, false), "");
        assert_eq!(netdev_options(&hv), "");
        assert_eq!(throttle_args(&hv, "d"), None);
        // 8 Mbit/s = 1 MB/s; 200 ops/s with a burst of 50.
        hv.disk_rate_limiter_bw_max_rate = 8_000_000;
        hv.disk_rate_limiter_ops_max_rate = 200;
        hv.disk_rate_limiter_ops_one_time_burst = 50;
        assert_eq!(
            drive_options(&hv, false),
            ",iops=200,iops_max=50,bps=1000000"
        );
        assert_eq!(
            drive_options(&hv, true),
            ",throttling.iops-total=200,throttling.iops-total-max=50,throttling.bps-total=1000000"
        );
        let a = throttle_args(&hv, "blk1").unwrap();
        assert_eq!(
            (a["bps"].as_u64(), a["iops"].as_u64()),
            (Some(1_000_000), Some(200))
        );
        assert_eq!(a["iops_max"].as_u64(), Some(50));
        hv.net_rate_limiter_bw_max_rate = 80_000;
        hv.net_rate_limiter_bw_one_time_burst = 8_000;
        hv.net_rate_limiter_ops_max_rate = 1000;
        assert_eq!(
            netdev_options(&hv),
            ",rx_iops=1000,rx_bps=10000,rx_bps_max=1000,tx_iops=1000,tx_bps=10000,tx_bps_max=1000"
        );
        let mut args = json!({"type": "tap", "id": "n"});
        add_netdev_limits(&hv, &mut args);
        assert_eq!(
            args,
            json!({"type": "tap", "id": "n", "rx_iops": 1000, "rx_bps": 10000,
                   "rx_bps_max": 1000, "tx_iops": 1000, "tx_bps": 10000, "tx_bps_max": 1000})
        );
        let mut none = json!({"type": "tap", "id": "n"});
        add_netdev_limits(&HypervisorConfig::default(), &mut none);
        assert_eq!(none, json!({"type": "tap", "id": "n"}));
    }
}
