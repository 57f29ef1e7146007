//! Refusing guest RAM the host cannot back.
//!
//! Guest RAM is mapped lazily, but KVM and the host kernel still spend
//! memory in proportion to its size (page tables, memory-slot bitmaps) as
//! soon as it is registered: asking for far more than the host has costs
//! gigabytes before anything fails. So RAM above the host's `MemTotal` is
//! refused unless `-machine mem-overcommit=on` says it is meant.

use crate::error::MachineError;

/// `MemTotal` in bytes from the text of /proc/meminfo.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Checks `mem_size` against `host_total` (bytes; `None` when unknown,
/// which allows anything).
fn check(mem_size: u64, host_total: Option<u64>, overcommit: bool) -> Result<(), MachineError> {
    match host_total {
        Some(host) if mem_size > host && !overcommit => Err(MachineError::RamAboveHost {
            requested_mib: mem_size >> 20,
            host_mib: host >> 20,
        }),
        _ => Ok(()),
    }
}

/// Refuses `mem_size` bytes of guest RAM when it exceeds this host's RAM,
/// unless `overcommit`.
pub fn check_guest_ram(mem_size: u64, overcommit: bool) -> Result<(), MachineError> {
    let host = match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => parse_mem_total(&text),
        Err(e) => {
            log::warn!("cannot read /proc/meminfo ({e}); guest RAM is not checked against it");
            None
        }
    };
    check(mem_size, host, overcommit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_above_mem_total_needs_overcommit() {
        let host = parse_mem_total("MemTotal:        2048000 kB\nMemFree: 5 kB\n");
        assert_eq!(host, Some(2_048_000 * 1024));
        assert!(check(1 << 30, host, false).is_ok());
        let e = check(4 << 40, host, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-m: 4194304 MiB of guest RAM is more than this host's 2000 MiB (MemTotal); \
             add -machine mem-overcommit=on to allow it"
        );
        assert!(e.is_user_error());
        assert!(check(4 << 40, host, true).is_ok());
        assert!(check(4 << 40, None, false).is_ok());
        assert_eq!(parse_mem_total("nothing"), None);
    }
}
