//! `block_set_io_throttle`: QEMU's arguments for changing a disk's I/O
//! limits at run time.
//!
//! QEMU requires the six rates (`bps`, `bps_rd`, `bps_wr`, `iops`,
//! `iops_rd`, `iops_wr`) and takes optional bursts (`bps_max`, `iops_max`,
//! ...). altovirt limits totals only: a non-zero read/write split, or a
//! burst/length/size setting other than the total bursts, is refused with
//! an error naming it. 0 means no limit.

use crate::args::Args;
use crate::error::QmpError;

/// Largest rate QEMU accepts (1e15).
pub const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// The decoded arguments of `block_set_io_throttle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSetIoThrottleArgs {
    /// The device's id (`id`, or the older `device`).
    pub id: String,
    /// Bytes per second, 0 for no limit.
    pub bps: u64,
    /// Operations per second, 0 for no limit.
    pub iops: u64,
    /// Extra bytes allowed once on top of the rate.
    pub bps_max: u64,
    /// Extra operations allowed once on top of the rate.
    pub iops_max: u64,
}

/// Split and burst members altovirt refuses when non-zero.
const UNSUPPORTED: &[&str] = &[
    "bps_rd_max",
    "bps_wr_max",
    "iops_rd_max",
    "iops_wr_max",
    "bps_max_length",
    "bps_rd_max_length",
    "bps_wr_max_length",
    "iops_max_length",
    "iops_rd_max_length",
    "iops_wr_max_length",
    "iops_size",
];

fn rate(a: &mut Args, key: &str, required: bool) -> Result<u64, QmpError> {
    match a.opt_uint(key, THROTTLE_VALUE_MAX, false)? {
        Some(n) => Ok(n),
        None if required => Err(QmpError::missing_parameter(key)),
        None => Ok(0),
    }
}

impl BlockSetIoThrottleArgs {
    /// Decodes the arguments (the caller checks for unexpected members).
    pub(crate) fn parse(a: &mut Args) -> Result<Self, QmpError> {
        let id = match (a.opt_str("id")?, a.opt_str("device")?) {
            (Some(id), None) | (None, Some(id)) => id,
            (Some(_), Some(_)) => {
                return Err(QmpError::generic(
                    "Parameters 'id' and 'device' are mutually exclusive",
                ))
            }
            (None, None) => return Err(QmpError::generic("Need exactly one of 'id' and 'device'")),
        };
        let bps = rate(a, "bps", true)?;
        let iops = rate(a, "iops", true)?;
        for key in ["bps_rd", "bps_wr", "iops_rd", "iops_wr"] {
            if rate(a, key, true)? != 0 {
                return Err(QmpError::generic(format!(
                    "{key}: separate read and write limits are not supported; set the total (bps, iops)"
                )));
            }
        }
        for key in UNSUPPORTED {
            if rate(a, key, false)? != 0 {
                return Err(QmpError::generic(format!("{key} is not supported")));
            }
        }
        if a.opt_str("group")?.is_some() {
            return Err(QmpError::generic(
                "group: throttle groups are not supported",
            ));
        }
        let bps_max = rate(a, "bps_max", false)?;
        let iops_max = rate(a, "iops_max", false)?;
        if (bps_max > 0 && bps == 0) || (iops_max > 0 && iops == 0) {
            return Err(QmpError::generic(
                "bps_max/iops_max cannot be used without bps/iops",
            ));
        }
        Ok(BlockSetIoThrottleArgs {
            id,
            bps,
            iops,
            bps_max,
            iops_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{QmpCommand, QmpError};
    use serde_json::{json, Value};

    fn parse(args: Value) -> Result<QmpCommand, QmpError> {
        match args {
            Value::Object(m) => QmpCommand::parse("block_set_io_throttle", Some(&m)),
            _ => panic!("bad test args"),
        }
    }

    fn base() -> Value {
        json!({"id": "disk0", "bps": 0, "bps_rd": 0, "bps_wr": 0,
               "iops": 200, "iops_rd": 0, "iops_wr": 0})
    }

    #[test]
    fn totals_and_bursts_decode() {
        let mut v = base();
        v["iops_max"] = json!(50);
        v["bps"] = json!(1_000_000);
        let QmpCommand::BlockSetIoThrottle(a) = parse(v).unwrap() else {
            panic!("wrong command");
        };
        assert_eq!((a.id.as_str(), a.bps, a.iops), ("disk0", 1_000_000, 200));
        assert_eq!((a.bps_max, a.iops_max), (0, 50));
        let mut v = base();
        v.as_object_mut().unwrap().remove("id");
        v["device"] = json!("old");
        let QmpCommand::BlockSetIoThrottle(a) = parse(v).unwrap() else {
            panic!("wrong command");
        };
        assert_eq!(a.id, "old");
    }

    #[test]
    fn refusals_name_the_argument() {
        let mut v = base();
        v["iops_rd"] = json!(5);
        assert!(parse(v).unwrap_err().desc.starts_with("iops_rd:"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("bps_wr");
        assert_eq!(parse(v).unwrap_err().desc, "Parameter 'bps_wr' is missing");
        let mut v = base();
        v["bps"] = json!(-1);
        assert!(parse(v).unwrap_err().desc.contains("'bps'"));
        let mut v = base();
        v["bps_max"] = json!(10);
        assert!(parse(v).unwrap_err().desc.contains("bps_max"));
        let mut v = base();
        v["device"] = json!("x");
        assert!(parse(v).unwrap_err().desc.contains("mutually exclusive"));
        let mut v = base();
        v["frob"] = json!(1);
        assert_eq!(parse(v).unwrap_err().desc, "Parameter 'frob' is unexpected");
    }
}
