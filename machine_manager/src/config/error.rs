//! The error type shared by the command-line and JSON parsers.
//!
//! Every message is a single line that starts with the place the problem was
//! found: a flag such as `-smp`, a flag plus key such as `-smp cpus`, or a
//! JSON path such as `drive[1].path_on_host`.

use std::io;

/// Everything that can go wrong while building a [`super::VmConfig`].
///
/// The `at` field of the located variants holds the flag or JSON path the
/// value came from; `Display` always renders it first, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A command-line argument starting with `-` that is not a known flag.
    #[error("unknown flag {0} (see altovirt -h)")]
    UnknownOption(String),

    /// A flag that takes a value was the last argument.
    #[error("option '{0}' requires a value")]
    MissingValue(String),

    /// A command-line argument that is neither a flag nor a flag's value.
    #[error("unexpected argument '{0}': every argument must be an option or an option's value")]
    UnexpectedArgument(String),

    /// A value that must not be empty was empty.
    #[error("{at}: value must not be empty")]
    EmptyValue {
        /// Flag or JSON path.
        at: String,
    },

    /// A `key=value,...` option string has an empty item (e.g. `a=1,,` or `a=1,`).
    #[error("{at}: empty item in option string '{input}'")]
    EmptyItem {
        /// Flag.
        at: String,
        /// The whole option string.
        input: String,
    },

    /// An item of an option string that has no `key=` although only the
    /// first item may omit it.
    #[error("{at}: '{item}' needs a key (key=value)")]
    MissingKey {
        /// Flag.
        at: String,
        /// The offending item.
        item: String,
    },

    /// A key that the flag does not know.
    #[error("{at}: unknown key '{key}'")]
    UnknownKey {
        /// Flag.
        at: String,
        /// The unknown key.
        key: String,
    },

    /// The same key appears twice in one option string.
    #[error("{at}: key '{key}' given more than once")]
    DuplicateKey {
        /// Flag.
        at: String,
        /// The repeated key.
        key: String,
    },

    /// A value that should be an on/off switch.
    #[error("{at}: invalid on/off value '{value}' (expected on, off, true, false, yes or no)")]
    InvalidBool {
        /// Flag and key.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A value that should be a decimal integer.
    #[error("{at}: invalid number '{value}'")]
    InvalidNumber {
        /// Flag and key.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// An integer outside its allowed range.
    #[error("{at}: {value} is out of range {min}..={max}")]
    OutOfRange {
        /// Flag, flag and key, or JSON path.
        at: String,
        /// The rejected value, as written.
        value: String,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },

    /// The maximum vCPU count is smaller than the vCPU count.
    #[error("{at}: maximum vCPU count {max_vcpus} is less than the vCPU count {nr_vcpus}")]
    MaxCpusBelowCpus {
        /// Flag or JSON path.
        at: String,
        /// Requested vCPUs.
        nr_vcpus: u64,
        /// Requested maximum vCPUs.
        max_vcpus: u64,
    },

    /// A size that is not `N[.F][K|M|G|T]`.
    #[error("{at}: invalid size '{value}'")]
    InvalidSize {
        /// Flag or JSON path.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A size that does not fit in 64 bits.
    #[error("{at}: size '{value}' does not fit in 64 bits")]
    SizeOverflow {
        /// Flag or JSON path.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// Guest memory below the minimum.
    #[error("{at}: memory size {bytes} bytes is below the minimum of 16 MiB")]
    MemTooSmall {
        /// Flag or JSON path.
        at: String,
        /// The requested size in bytes.
        bytes: u64,
    },

    /// Guest memory that is not a whole number of pages.
    #[error("{at}: memory size {bytes} bytes is not a multiple of the 4096-byte page size")]
    MemNotPageAligned {
        /// Flag or JSON path.
        at: String,
        /// The requested size in bytes.
        bytes: u64,
    },

    /// A machine type other than `microvm`.
    #[error("{at}: unsupported machine type '{value}' (only 'microvm' is supported)")]
    UnsupportedMachine {
        /// Flag or JSON path.
        at: String,
        /// The rejected type.
        value: String,
    },

    /// An accelerator other than `kvm`.
    #[error("{at}: unsupported accelerator '{value}' (only 'kvm' is supported)")]
    UnsupportedAccel {
        /// Flag and key.
        at: String,
        /// The rejected accelerator.
        value: String,
    },

    /// A UUID that is not 8-4-4-4-12 hexadecimal digits.
    #[error("{at}: invalid UUID '{value}' (expected 8-4-4-4-12 hexadecimal digits)")]
    InvalidUuid {
        /// Flag.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A `-serial` backend this VMM does not provide.
    /// A device, drive, object or chardev definition that cannot be used.
    #[error("{at}: {reason}")]
    InvalidDevice {
        /// The flag (with the id or driver when known).
        at: String,
        /// What is wrong, in one line.
        reason: String,
    },

    /// `-incoming` with a form altovirt cannot restore from.
    #[error("{at}: unsupported value '{value}': {reason}")]
    InvalidIncoming {
        /// The flag.
        at: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// A QMP socket option that altovirt cannot serve.
    #[error("{at}: unsupported QMP socket '{value}': {reason}")]
    InvalidQmpSocket {
        /// The flag.
        at: String,
        /// The option string given.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// An unknown `-serial` back-end.
    #[error(
        "{at}: unsupported serial backend '{value}' (expected stdio, file:PATH, none or null)"
    )]
    InvalidSerial {
        /// Flag.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A file that could not be opened or examined.
    #[error("{at}: cannot open '{path}': {reason}")]
    FileAccess {
        /// Flag or JSON path.
        at: String,
        /// The path as given.
        path: String,
        /// The operating system's explanation.
        reason: String,
    },

    /// A path that exists but is the wrong kind of file.
    #[error("{at}: '{path}' is not a {expected}")]
    WrongFileType {
        /// Flag or JSON path.
        at: String,
        /// The path as given.
        path: String,
        /// What kind of file was wanted.
        expected: String,
    },

    /// An initrd was given but no kernel.
    #[error("{at}: an initrd needs a kernel (-kernel or boot-source.kernel_image_path)")]
    InitrdWithoutKernel {
        /// `-initrd` or `boot-source.initrd_fs_path`.
        at: String,
    },

    /// The JSON configuration file could not be read.
    #[error("JSON config {path}: cannot read file: {reason}")]
    JsonRead {
        /// The file name.
        path: String,
        /// The operating system's explanation.
        reason: String,
    },

    /// The JSON configuration file is not valid JSON.
    #[error("JSON config {path}: parse error at line {line} column {column}: {message}")]
    JsonParse {
        /// The file name.
        path: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON parser expected.
        message: String,
    },

    /// A JSON value of the wrong type.
    #[error("{at}: expected {expected}")]
    JsonType {
        /// JSON path.
        at: String,
        /// Description of the wanted type, e.g. `an integer`.
        expected: String,
    },

    /// A required JSON field is absent.
    #[error("{at}: missing field")]
    MissingField {
        /// JSON path of the absent field.
        at: String,
    },

    /// A JSON field this VMM does not know.
    #[error("{at}: unknown field")]
    UnknownField {
        /// JSON path of the unknown field.
        at: String,
    },

    /// A MAC address that is not six `:`-separated hexadecimal pairs.
    #[error("{at}: invalid MAC address '{value}'")]
    InvalidMac {
        /// JSON path.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A MAC address with the group bit set.
    #[error("{at}: MAC address '{value}' is a multicast address")]
    MulticastMac {
        /// JSON path.
        at: String,
        /// The rejected value.
        value: String,
    },

    /// A device id that is already used by another device.
    #[error("{at}: id '{id}' is already used by {first}")]
    DuplicateId {
        /// JSON path of the second use.
        at: String,
        /// The repeated id.
        id: String,
        /// JSON path of the first use.
        first: String,
    },

    /// A string longer than the host allows (e.g. a tap name).
    #[error("{at}: '{value}' is longer than {max} bytes")]
    TooLong {
        /// JSON path.
        at: String,
        /// The rejected value.
        value: String,
        /// The maximum length in bytes.
        max: usize,
    },
}

/// Text of an I/O error without the trailing ` (os error N)`.
pub(crate) fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(pos) if text.ends_with(')') => text[..pos].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reason_strips_os_error_suffix() {
        let err = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_reason(&err), "No such file or directory");
    }

    #[test]
    fn io_reason_keeps_plain_messages() {
        let err = io::Error::other("custom failure");
        assert_eq!(io_reason(&err), "custom failure");
    }

    #[test]
    fn every_message_is_one_line() {
        let at = || "x".to_string();
        let all = vec![
            ConfigError::UnknownOption(at()),
            ConfigError::MissingValue(at()),
            ConfigError::UnexpectedArgument(at()),
            ConfigError::EmptyValue { at: at() },
            ConfigError::JsonType {
                at: at(),
                expected: "an integer".into(),
            },
            ConfigError::JsonParse {
                path: at(),
                line: 1,
                column: 2,
                message: "m".into(),
            },
            ConfigError::TooLong {
                at: at(),
                value: at(),
                max: 15,
            },
        ];
        for e in all {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

/// `msg` on one line: control characters (a newline inside a quoted path,
/// say) are written as escapes, so every error stays a single line however
/// odd the input it quotes.
pub fn single_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod single_line_tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(single_line("a\nb\tc\u{7f}é"), "a\\nb\\tc\\u{7f}é");
        let e = ConfigError::UnexpectedArgument("x\ny".into());
        assert!(!single_line(&e.to_string()).contains('\n'));
    }
}
