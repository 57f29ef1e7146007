//! Value checks shared by the command-line and JSON parsers.

use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::error::{io_reason, ConfigError};

/// Smallest vCPU count.
pub const MIN_VCPUS: u8 = 1;
/// Largest vCPU count (and largest maximum vCPU count).
pub const MAX_VCPUS: u8 = 254;
/// Longest host network interface name (`IFNAMSIZ` minus the NUL byte).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Which kinds of file a path may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A regular file (kernel, initrd).
    Regular,
    /// A regular file or a block device (disk image).
    Disk,
    /// A regular file or a character device (entropy source).
    Entropy,
}

impl FileKind {
    fn accepts(self, file_type: fs::FileType) -> bool {
        match self {
            FileKind::Regular => file_type.is_file(),
            FileKind::Disk => file_type.is_file() || file_type.is_block_device(),
            FileKind::Entropy => file_type.is_file() || file_type.is_char_device(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "regular file",
            FileKind::Disk => "regular file or block device",
            FileKind::Entropy => "regular file or character device",
        }
    }
}

/// Check that `path` exists, is of the wanted kind and can be opened for
/// reading.
///
/// The type is checked before opening so that a FIFO is never opened (which
/// could block).
pub(crate) fn check_file(at: &str, path: &Path, kind: FileKind) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let access = |err: std::io::Error| ConfigError::FileAccess {
        at: at.into(),
        path: shown.clone(),
        reason: io_reason(&err),
    };
    let meta = fs::metadata(path).map_err(access)?;
    if !kind.accepts(meta.file_type()) {
        return Err(ConfigError::WrongFileType {
            at: at.into(),
            path: shown.clone(),
            expected: kind.describe().into(),
        });
    }
    File::open(path).map_err(access)?;
    Ok(())
}

/// Check an 8-4-4-4-12 hexadecimal UUID and return it in lower case.
pub(crate) fn parse_uuid(at: &str, value: &str) -> Result<String, ConfigError> {
    let groups: Vec<&str> = value.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    let valid = groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(ConfigError::InvalidUuid {
            at: at.into(),
            value: value.into(),
        });
    }
    Ok(value.to_ascii_lowercase())
}

/// Check a MAC address written as six `:`-separated pairs of hexadecimal
/// digits that is not a multicast address.
pub(crate) fn check_mac(at: &str, value: &str) -> Result<(), ConfigError> {
    let octets: Vec<&str> = value.split(':').collect();
    let well_formed = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(ConfigError::InvalidMac {
            at: at.into(),
            value: value.into(),
        });
    }
    let first = u8::from_str_radix(octets[0], 16).map_err(|_| ConfigError::InvalidMac {
        at: at.into(),
        value: value.into(),
    })?;
    if first & 1 != 0 {
        return Err(ConfigError::MulticastMac {
            at: at.into(),
            value: value.into(),
        });
    }
    Ok(())
}

/// Check that the maximum vCPU count is not below the vCPU count.
pub(crate) fn check_max_vcpus(at: &str, nr_vcpus: u8, max_vcpus: u8) -> Result<(), ConfigError> {
    if max_vcpus < nr_vcpus {
        return Err(ConfigError::MaxCpusBelowCpus {
            at: at.into(),
            nr_vcpus: nr_vcpus.into(),
            max_vcpus: max_vcpus.into(),
        });
    }
    Ok(())
}

/// Check that a string is not empty.
pub(crate) fn check_non_empty(at: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::EmptyValue { at: at.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::TempDir;

    #[test]
    fn regular_file_accepted() {
        let dir = TempDir::new("validate-regular");
        let file = dir.file("vmlinux", b"kernel");
        assert_eq!(check_file("-kernel", &file, FileKind::Regular), Ok(()));
        assert_eq!(check_file("d", &file, FileKind::Disk), Ok(()));
        assert_eq!(check_file("r", &file, FileKind::Entropy), Ok(()));
    }

    #[test]
    fn missing_file_reports_os_reason() {
        let err = check_file("-kernel", Path::new("/x/nope"), FileKind::Regular).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-kernel: cannot open '/x/nope': No such file or directory"
        );
    }

    #[test]
    fn directory_is_wrong_kind() {
        let dir = TempDir::new("validate-dir");
        let err = check_file("-initrd", dir.path(), FileKind::Regular).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("-initrd: '{}' is not a regular file", dir.path().display())
        );
        let err = check_file("drive[0].path_on_host", dir.path(), FileKind::Disk).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "drive[0].path_on_host: '{}' is not a regular file or block device",
                dir.path().display()
            )
        );
    }

    #[test]
    fn char_device_only_for_entropy() {
        let null = Path::new("/dev/null");
        assert_eq!(
            check_file("rng.random_file", null, FileKind::Entropy),
            Ok(())
        );
        let err = check_file("rng", Path::new("/dev/null"), FileKind::Disk).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rng: '/dev/null' is not a regular file or block device"
        );
        let err = check_file("-kernel", null, FileKind::Regular).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-kernel: '/dev/null' is not a regular file"
        );
    }

    #[test]
    fn uuid_is_lowercased() {
        assert_eq!(
            parse_uuid("-uuid", "ABCDEF01-2345-6789-ABCD-EF0123456789"),
            Ok("abcdef01-2345-6789-abcd-ef0123456789".to_string())
        );
    }

    #[test]
    fn bad_uuids() {
        for bad in [
            "",
            "abcdef01-2345-6789-abcd-ef012345678",
            "abcdef01-2345-6789-abcd-ef01234567890",
            "abcdef0123456789abcdef0123456789",
            "abcdef01-2345-6789-abcd-ef012345678g",
            "abcdef01-2345-6789-abcd-ef01-23456789",
            "{abcdef01-2345-6789-abcd-ef0123456789}",
        ] {
            let err = parse_uuid("-uuid", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("-uuid: invalid UUID '{bad}' (expected 8-4-4-4-12 hexadecimal digits)")
            );
        }
    }

    #[test]
    fn macs() {
        assert_eq!(check_mac("m", "12:34:56:78:9A:BC"), Ok(()));
        assert_eq!(check_mac("m", "02:00:00:00:00:01"), Ok(()));
        for bad in [
            "zz",
            "",
            "12:34:56:78:9A",
            "12:34:56:78:9A:BC:DE",
            "1:2:3:4:5:6",
            "12-34-56-78-9A-BC",
            "12:34:56:78:9A:BG",
        ] {
            let err = check_mac("net[0].mac", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("net[0].mac: invalid MAC address '{bad}'")
            );
        }
        let err = check_mac("net[0].mac", "01:00:5e:00:00:01").unwrap_err();
        assert_eq!(
            err.to_string(),
            "net[0].mac: MAC address '01:00:5e:00:00:01' is a multicast address"
        );
    }

    #[test]
    fn max_vcpus() {
        assert_eq!(check_max_vcpus("-smp", 2, 2), Ok(()));
        assert_eq!(check_max_vcpus("-smp", 2, 4), Ok(()));
        let err = check_max_vcpus("-smp", 4, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-smp: maximum vCPU count 2 is less than the vCPU count 4"
        );
    }

    #[test]
    fn non_empty() {
        assert_eq!(check_non_empty("-name", "vm"), Ok(()));
        let err = check_non_empty("-name", "").unwrap_err();
        assert_eq!(err.to_string(), "-name: value must not be empty");
    }
}
