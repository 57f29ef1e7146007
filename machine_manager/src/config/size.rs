//! Size strings such as `512`, `512M`, `1.5G` and the guest memory checks.

use super::error::ConfigError;

/// One kibibyte.
const KIB: u64 = 1 << 10;
/// One mebibyte.
pub(crate) const MIB: u64 = 1 << 20;

/// Smallest guest memory accepted, in bytes.
pub const MIN_MEM_SIZE: u64 = 16 * MIB;
/// Guest page size; guest memory must be a multiple of it.
pub const PAGE_SIZE: u64 = 4096;

/// Longest fraction (digits after `.`) accepted in a size.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parse `N[.F][B|K|M|G|T]` (suffix case-insensitive) into bytes.
///
/// A number without a suffix is counted in `default_unit` bytes (QEMU's
/// `-m` uses MiB). The result must be a whole number of bytes that fits in
/// a `u64`.
pub(crate) fn parse_size(at: &str, value: &str, default_unit: u64) -> Result<u64, ConfigError> {
    let invalid = || ConfigError::InvalidSize {
        at: at.into(),
        value: value.into(),
    };
    let overflow = || ConfigError::SizeOverflow {
        at: at.into(),
        value: value.into(),
    };

    let (number, unit) = match value.char_indices().last() {
        Some((pos, c)) if c.is_ascii_alphabetic() => {
            let unit = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => KIB,
                'M' => MIB,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(invalid()),
            };
            (&value[..pos], unit)
        }
        _ => (value, default_unit),
    };

    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        return Err(invalid());
    }
    if number.contains('.') && fraction.is_empty() {
        return Err(invalid());
    }

    let unit = u128::from(unit);
    let whole: u128 = whole.parse().map_err(|_| overflow())?;
    let mut bytes = whole.checked_mul(unit).ok_or_else(overflow)?;

    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        if fraction.len() > MAX_FRACTION_DIGITS {
            return Err(invalid());
        }
        let numerator: u128 = fraction.parse().map_err(|_| invalid())?;
        let denominator = 10u128.pow(fraction.len() as u32);
        let scaled = numerator * unit;
        if !scaled.is_multiple_of(denominator) {
            // A fraction of a byte cannot be allocated.
            return Err(invalid());
        }
        bytes = bytes
            .checked_add(scaled / denominator)
            .ok_or_else(overflow)?;
    }
    u64::try_from(bytes).map_err(|_| overflow())
}

/// Check that `bytes` is usable as guest memory: at least 16 MiB and a
/// multiple of the page size.
pub(crate) fn check_mem_size(at: &str, bytes: u64) -> Result<u64, ConfigError> {
    if bytes < MIN_MEM_SIZE {
        return Err(ConfigError::MemTooSmall {
            at: at.into(),
            bytes,
        });
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(ConfigError::MemNotPageAligned {
            at: at.into(),
            bytes,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(v: &str) -> Result<u64, ConfigError> {
        parse_size("-m", v, MIB)
    }

    #[test]
    fn plain_number_uses_default_unit() {
        assert_eq!(mem("256"), Ok(256 * MIB));
        assert_eq!(parse_size("x", "4096", 1), Ok(4096));
    }

    #[test]
    fn suffixes_are_case_insensitive() {
        assert_eq!(mem("512M"), Ok(512 * MIB));
        assert_eq!(mem("512m"), Ok(512 * MIB));
        assert_eq!(mem("1G"), Ok(1 << 30));
        assert_eq!(mem("2g"), Ok(2 << 30));
        assert_eq!(mem("1T"), Ok(1 << 40));
        assert_eq!(mem("16384k"), Ok(16 * MIB));
        assert_eq!(mem("16384K"), Ok(16 * MIB));
        assert_eq!(mem("268435456B"), Ok(256 * MIB));
        assert_eq!(mem("268435456b"), Ok(256 * MIB));
    }

    #[test]
    fn fractions() {
        assert_eq!(mem("1.5G"), Ok(1536 * MIB));
        assert_eq!(mem("0.5"), Ok(512 * KIB));
        assert_eq!(mem("1.250G"), Ok(1280 * MIB));
        assert_eq!(mem("2.0"), Ok(2 * MIB));
        assert_eq!(mem("0.0009765625K"), Ok(1));
    }

    #[test]
    fn invalid_sizes() {
        for bad in [
            "",
            "12x",
            "x",
            "M",
            "1.",
            ".5",
            "1..2",
            "-1",
            "+1",
            "1 M",
            "1.5B",
            "0.1G",
            "1.2.3",
            "1e3",
            "1.0000000000000000001G",
            "12Mb",
        ] {
            let err = mem(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("-m: invalid size '{bad}'"),
                "{bad}"
            );
        }
    }

    #[test]
    fn overflow_is_reported() {
        for big in [
            "99999999999T",
            "18446744073709551616B",
            "99999999999999999999999999999999999999999",
        ] {
            let err = mem(big).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("-m: size '{big}' does not fit in 64 bits")
            );
        }
        assert_eq!(parse_size("-m", "18446744073709551615B", MIB), Ok(u64::MAX));
    }

    #[test]
    fn memory_checks() {
        assert_eq!(check_mem_size("-m", 16 * MIB), Ok(16 * MIB));
        let err = check_mem_size("-m", 8 * MIB).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-m: memory size 8388608 bytes is below the minimum of 16 MiB"
        );
        let err = check_mem_size("machine-config.mem_size", 16 * MIB + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "machine-config.mem_size: memory size 16777217 bytes is not a multiple of the 4096-byte page size"
        );
    }
}
