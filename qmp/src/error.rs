//! Error types: QMP error replies, server set-up failures and `-qmp` option errors.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// The `class` member of a QMP error reply.
///
/// These are the classes QEMU still uses; clients switch on them, so no
/// others are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ErrorClass {
    /// Any error without a more specific class (bad arguments, failures).
    GenericError,
    /// The command does not exist, or is not allowed in the current mode.
    CommandNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// The named device does not exist.
    DeviceNotFound,
    /// KVM lacks a capability the command needs.
    #[serde(rename = "KVMMissingCap")]
    KvmMissingCap,
}

impl ErrorClass {
    /// The name sent on the wire (e.g. `"GenericError"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KvmMissingCap => "KVMMissingCap",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply: `{"error":{"class":CLASS,"desc":DESC}}`.
///
/// Returned by [`crate::QmpHandler::execute`] and by argument validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// Human-readable description.
    pub desc: String,
}

impl QmpError {
    /// An error of any class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    /// A `CommandNotFound` error.
    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::CommandNotFound, desc)
    }

    /// A `DeviceNotFound` error.
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotFound, desc)
    }

    /// A `DeviceNotActive` error.
    pub fn device_not_active(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotActive, desc)
    }

    /// A `KVMMissingCap` error.
    pub fn kvm_missing_cap(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::KvmMissingCap, desc)
    }

    /// `GenericError` for a command the VMM parses but does not implement.
    pub fn not_supported(command: &str) -> Self {
        Self::generic(format!("Command '{command}' is not supported yet"))
    }

    /// `GenericError` "Parameter 'NAME' is missing".
    pub fn missing_parameter(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is missing"))
    }

    /// `GenericError` "Parameter 'NAME' is unexpected".
    pub fn unexpected_parameter(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is unexpected"))
    }

    /// `GenericError` "Invalid parameter type for 'NAME', expected: TYPE".
    pub fn invalid_parameter_type(name: &str, expected: &str) -> Self {
        Self::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }

    /// `GenericError` "Parameter 'NAME' expects WHAT".
    pub fn invalid_parameter_value(name: &str, expects: &str) -> Self {
        Self::generic(format!("Parameter '{name}' expects {expects}"))
    }

    /// `GenericError` "Parameter 'NAME' does not accept value 'VALUE'".
    pub fn invalid_enum_value(name: &str, value: &str) -> Self {
        Self::generic(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    }
}

/// Failure to set up or start a [`crate::QmpServer`].
#[derive(Debug, thiserror::Error)]
pub enum QmpServerError {
    /// The socket path does not fit in `sockaddr_un` (107 bytes at most).
    #[error("QMP socket path {0:?} is too long (at most 107 bytes)")]
    PathTooLong(PathBuf),
    /// The socket path is empty or contains a NUL byte.
    #[error("QMP socket path {0:?} is not valid")]
    InvalidPath(PathBuf),
    /// Something that is not a socket exists at the path; it is left alone.
    #[error("cannot create QMP socket {0:?}: a file that is not a socket is in the way")]
    NotASocket(PathBuf),
    /// A live server already accepts connections on the path.
    #[error("cannot create QMP socket {0:?}: another process is listening on it")]
    InUse(PathBuf),
    /// A system call failed while creating the socket.
    #[error("cannot create QMP socket {path:?}: {op}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The operation that failed (`bind`, `listen`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A server thread could not be started.
    #[error("cannot start QMP server thread: {0}")]
    Thread(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_match_the_wire() {
        let all = [
            (ErrorClass::GenericError, "GenericError"),
            (ErrorClass::CommandNotFound, "CommandNotFound"),
            (ErrorClass::DeviceNotActive, "DeviceNotActive"),
            (ErrorClass::DeviceNotFound, "DeviceNotFound"),
            (ErrorClass::KvmMissingCap, "KVMMissingCap"),
        ];
        for (class, name) in all {
            assert_eq!(class.as_str(), name);
            assert_eq!(serde_json::to_value(class).unwrap(), name);
        }
    }

    #[test]
    fn parameter_messages_name_the_parameter() {
        assert_eq!(
            QmpError::missing_parameter("fdname").desc,
            "Parameter 'fdname' is missing"
        );
        assert_eq!(
            QmpError::invalid_parameter_type("file.filename", "string").desc,
            "Invalid parameter type for 'file.filename', expected: string"
        );
        let e = QmpError::device_not_found("Device 'x' not found");
        assert_eq!(e.to_string(), "DeviceNotFound: Device 'x' not found");
    }
}
