//! I/O limits of a drive or a tap: two token buckets, one in bytes and
//! one in operations, as plain numbers the machine hands to the device (a
//! tap has a pair per direction).
//!
//! On the command line a rate is given per second (`bps`, `iops`) with an
//! optional one-time burst on top (`bps_max`, `iops_max`); StratoVirt's
//! `iops`/`bps` and QEMU's `throttling.*-total[-max]` spellings are both
//! accepted. The JSON form is Firecracker's `rate_limiter` object.

use super::options::{parse_ranged, OptionList};
use super::ConfigError;

/// One token bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitBucket {
    /// Tokens of a full bucket; 0 means no limit.
    pub size: u64,
    /// Extra tokens available once.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to refill.
    pub refill_time_ms: u64,
}

impl LimitBucket {
    /// `rate` tokens per second (a one-second bucket) plus `burst` once.
    pub fn per_second(rate: u64, burst: u64) -> Self {
        if rate == 0 {
            return LimitBucket::default();
        }
        LimitBucket {
            size: rate,
            one_time_burst: burst,
            refill_time_ms: 1000,
        }
    }
}

/// Bandwidth and operation limits of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimits {
    /// Bytes.
    pub bandwidth: LimitBucket,
    /// Operations.
    pub ops: LimitBucket,
}

impl IoLimits {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.size > 0 || self.ops.size > 0
    }
}

/// Receive and transmit limits of a tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetIoLimits {
    /// Frames and bytes the guest receives (`rx_…`, `rx_rate_limiter`).
    pub rx: IoLimits,
    /// Frames and bytes the guest sends (`tx_…`, `tx_rate_limiter`).
    pub tx: IoLimits,
}

/// The option keys [`parse_limits`] reads, for `OptionList::parse`.
pub(crate) const LIMIT_KEYS: &[&str] = &[
    "iops",
    "bps",
    "iops_max",
    "bps_max",
    "throttling.iops-total",
    "throttling.bps-total",
    "throttling.iops-total-max",
    "throttling.bps-total-max",
];

/// The option keys [`parse_net_limits`] reads (`-netdev tap`).
pub(crate) const NET_LIMIT_KEYS: &[&str] = &[
    "rx_iops",
    "rx_bps",
    "rx_iops_max",
    "rx_bps_max",
    "tx_iops",
    "tx_bps",
    "tx_iops_max",
    "tx_bps_max",
];

/// Reads the limits of a `-netdev tap` option list: frames and bytes per
/// second the guest may receive (`rx_…`) and send (`tx_…`), with one-time
/// bursts.
pub(crate) fn parse_net_limits(list: &OptionList, at: &str) -> Result<NetIoLimits, ConfigError> {
    Ok(NetIoLimits {
        rx: parse_direction(list, at, "rx")?,
        tx: parse_direction(list, at, "tx")?,
    })
}

/// The `{dir}_iops`, `{dir}_bps` and `…_max` keys of one direction.
fn parse_direction(list: &OptionList, at: &str, dir: &str) -> Result<IoLimits, ConfigError> {
    let get = |key: &str| {
        let key = format!("{dir}_{key}");
        list.get(&key)
            .map(|v| parse_ranged(&format!("{at} {key}"), v, 0, u64::MAX))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let (iops, bps) = (get("iops")?, get("bps")?);
    let (iops_max, bps_max) = (get("iops_max")?, get("bps_max")?);
    if (iops_max > 0 && iops == 0) || (bps_max > 0 && bps == 0) {
        return Err(ConfigError::InvalidDevice {
            at: at.into(),
            reason: format!("a burst ({dir}_…_max) needs its rate ({dir}_iops or {dir}_bps) too"),
        });
    }
    Ok(IoLimits {
        bandwidth: LimitBucket::per_second(bps, bps_max),
        ops: LimitBucket::per_second(iops, iops_max),
    })
}

/// One value under either spelling; both at once is an error.
fn one_of(list: &OptionList, at: &str, keys: [&str; 2]) -> Result<u64, ConfigError> {
    let mut found = None;
    for key in keys {
        if let Some(v) = list.get(key) {
            if found.is_some() {
                return Err(ConfigError::InvalidDevice {
                    at: at.into(),
                    reason: format!("{} and {} are the same setting", keys[0], keys[1]),
                });
            }
            found = Some(parse_ranged(&format!("{at} {key}"), v, 0, u64::MAX)?);
        }
    }
    Ok(found.unwrap_or(0))
}

/// Reads the limit keys of a `-drive` (or `-netdev`) option list.
pub(crate) fn parse_limits(list: &OptionList, at: &str) -> Result<IoLimits, ConfigError> {
    let iops = one_of(list, at, ["iops", "throttling.iops-total"])?;
    let bps = one_of(list, at, ["bps", "throttling.bps-total"])?;
    let iops_max = one_of(list, at, ["iops_max", "throttling.iops-total-max"])?;
    let bps_max = one_of(list, at, ["bps_max", "throttling.bps-total-max"])?;
    if (iops_max > 0 && iops == 0) || (bps_max > 0 && bps == 0) {
        return Err(ConfigError::InvalidDevice {
            at: at.into(),
            reason: "a burst (…_max) needs its rate (iops or bps) too".into(),
        });
    }
    Ok(IoLimits {
        bandwidth: LimitBucket::per_second(bps, bps_max),
        ops: LimitBucket::per_second(iops, iops_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(value: &str) -> Result<IoLimits, String> {
        let list =
            OptionList::parse("-drive", value, None, LIMIT_KEYS).map_err(|e| e.to_string())?;
        parse_limits(&list, "-drive").map_err(|e| e.to_string())
    }

    #[test]
    fn both_spellings_give_per_second_buckets() {
        let want = IoLimits {
            bandwidth: LimitBucket::per_second(1_000_000, 0),
            ops: LimitBucket::per_second(200, 50),
        };
        assert_eq!(limits("iops=200,bps=1000000,iops_max=50"), Ok(want));
        assert_eq!(
            limits("throttling.iops-total=200,throttling.bps-total=1000000,throttling.iops-total-max=50"),
            Ok(want)
        );
        assert_eq!(want.ops.refill_time_ms, 1000);
        let none = limits("iops=0").unwrap();
        assert!(!none.is_limited());
        assert_eq!(none, IoLimits::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = limits("iops=fast").unwrap_err();
        assert!(e.contains("-drive iops"), "{e}");
        let e = limits("iops=1,throttling.iops-total=2").unwrap_err();
        assert!(e.contains("same setting"), "{e}");
        let e = limits("bps_max=10").unwrap_err();
        assert!(e.contains("needs its rate"), "{e}");
    }

    #[test]
    fn netdev_receive_and_transmit_limits() {
        let net = |v: &str| {
            let list =
                OptionList::parse("-netdev", v, None, NET_LIMIT_KEYS).map_err(|e| e.to_string())?;
            parse_net_limits(&list, "-netdev").map_err(|e| e.to_string())
        };
        assert_eq!(
            net("tx_iops=1000,tx_bps=125000,tx_bps_max=5000"),
            Ok(NetIoLimits {
                rx: IoLimits::default(),
                tx: IoLimits {
                    bandwidth: LimitBucket::per_second(125_000, 5000),
                    ops: LimitBucket::per_second(1000, 0),
                },
            })
        );
        assert_eq!(
            net("rx_iops=50,rx_iops_max=5,rx_bps=9000,tx_bps=1"),
            Ok(NetIoLimits {
                rx: IoLimits {
                    bandwidth: LimitBucket::per_second(9000, 0),
                    ops: LimitBucket::per_second(50, 5),
                },
                tx: IoLimits {
                    bandwidth: LimitBucket::per_second(1, 0),
                    ops: LimitBucket::default(),
                },
            })
        );
        assert!(net("tx_iops=x").unwrap_err().contains("-netdev tx_iops"));
        assert!(net("rx_bps=-1").unwrap_err().contains("-netdev rx_bps"));
        let e = net("rx_iops_max=3").unwrap_err();
        assert!(e.contains("a burst (rx_…_max) needs its rate"), "{e}");
        assert!(net("tx_bps_max=3").unwrap_err().contains("(tx_…_max)"));
    }
}
