//! Request handling for one connection, independent of sockets: request
//! checks, capabilities negotiation, server-side commands and the calls to
//! the VM's [`QmpHandler`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::command::{QmpCommand, COMMAND_NAMES};
use crate::error::QmpError;
use crate::fds::{FdLookup, FdStore, PendingFds, SharedFds};
use crate::framer::Frame;
use crate::lock;

/// The version reported in the greeting and by `query-version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpVersion {
    /// QEMU-compatible major version (clients such as govmm need >= 5).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    /// Package string, e.g. `altovirt-0.1.0`.
    pub package: String,
}

impl Default for QmpVersion {
    /// 7.2.0 with package `altovirt-<version of this crate>`.
    fn default() -> Self {
        QmpVersion {
            major: 7,
            minor: 2,
            micro: 0,
            package: format!("altovirt-{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl QmpVersion {
    /// The `{"qemu":{...},"package":...}` object.
    pub fn to_json(&self) -> Value {
        json!({
            "qemu": {"major": self.major, "minor": self.minor, "micro": self.micro},
            "package": self.package,
        })
    }
}

/// The VM side of the QMP server.
///
/// `execute` is called from the connection threads, possibly from several
/// at once (one per client); implementations serialize as they need. It
/// must not wait for the thread that drops the [`crate::QmpServerHandle`].
pub trait QmpHandler: Send + Sync + 'static {
    /// Runs a VM command: everything except `qmp_capabilities`,
    /// `query-commands`, `query-version`, `getfd` and `closefd`, which the
    /// server answers itself. Returns the `return` value (`null` is sent as
    /// `{}`). Named descriptors (`netdev_add fds=...`) are taken from `fds`.
    fn execute(&self, cmd: QmpCommand, fds: &mut dyn FdLookup) -> Result<Value, QmpError>;

    /// Version reported in the greeting and by `query-version`.
    fn version(&self) -> QmpVersion {
        QmpVersion::default()
    }
}

#[derive(Serialize)]
struct VersionTriple {
    major: u32,
    minor: u32,
    micro: u32,
}

#[derive(Serialize)]
struct VersionInfo<'a> {
    qemu: VersionTriple,
    package: &'a str,
}

#[derive(Serialize)]
struct GreetingBody<'a> {
    version: VersionInfo<'a>,
    capabilities: [&'a str; 0],
}

#[derive(Serialize)]
struct Greeting<'a> {
    #[serde(rename = "QMP")]
    qmp: GreetingBody<'a>,
}

/// The greeting line (with `\r\n`) sent on every new connection.
pub fn greeting_line(version: &QmpVersion) -> String {
    let g = Greeting {
        qmp: GreetingBody {
            version: VersionInfo {
                qemu: VersionTriple {
                    major: version.major,
                    minor: version.minor,
                    micro: version.micro,
                },
                package: &version.package,
            },
            capabilities: [],
        },
    };
    to_line(&g)
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `{"return": VALUE, "id": ID}`.
    Return {
        /// The command's result.
        value: Value,
        /// The request's `id`, if it had one.
        id: Option<Value>,
    },
    /// `{"error": {...}, "id": ID}`.
    Error {
        /// The error.
        error: QmpError,
        /// The request's `id`, if it could be read.
        id: Option<Value>,
    },
}

#[derive(Serialize)]
struct ReturnReply<'a> {
    #[serde(rename = "return")]
    value: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: &'a QmpError,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

impl Response {
    /// The reply as one line of JSON ending in `\r\n`.
    pub fn to_line(&self) -> String {
        match self {
            Response::Return { value, id } => to_line(&ReturnReply {
                value,
                id: id.as_ref(),
            }),
            Response::Error { error, id } => to_line(&ErrorReply {
                error,
                id: id.as_ref(),
            }),
        }
    }

    /// The reply as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.to_line()).unwrap_or(Value::Null)
    }
}

/// Serializes compactly (never containing a newline) and appends `\r\n`.
pub(crate) fn to_line<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(mut s) => {
            s.push_str("\r\n");
            s
        }
        // Only non-string map keys can fail; none of our types have them.
        Err(e) => format!(
            "{{\"error\":{{\"class\":\"GenericError\",\"desc\":\"internal error: {}\"}}}}\r\n",
            e.to_string().replace(['"', '\\'], "'")
        ),
    }
}

/// Protocol state of one connection.
pub(crate) struct Session {
    handler: Arc<dyn QmpHandler>,
    store: Arc<Mutex<FdStore>>,
    pending: PendingFds,
    negotiated: bool,
}

impl Session {
    /// A connection in capabilities negotiation mode.
    pub(crate) fn new(handler: Arc<dyn QmpHandler>, store: Arc<Mutex<FdStore>>) -> Self {
        Session {
            handler,
            store,
            pending: PendingFds::default(),
            negotiated: false,
        }
    }

    /// True once `qmp_capabilities` succeeded.
    pub(crate) fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Adds descriptors received with SCM_RIGHTS.
    pub(crate) fn add_fds(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        if !fds.is_empty() {
            self.pending.extend(fds);
        }
    }

    /// Unclaimed received descriptors.
    #[cfg(test)]
    pub(crate) fn pending_fds(&self) -> usize {
        self.pending.len()
    }

    /// Answers one frame from the [`crate::Framer`].
    pub(crate) fn handle_frame(&mut self, frame: Frame) -> Response {
        match frame {
            Frame::Error(e) => Response::Error {
                error: QmpError::generic(format!("JSON parse error, {e}")),
                id: None,
            },
            Frame::Message(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => self.handle_value(v),
                Err(e) => Response::Error {
                    error: QmpError::generic(format!("JSON parse error, {e}")),
                    id: None,
                },
            },
        }
    }

    /// Answers one parsed JSON value.
    pub(crate) fn handle_value(&mut self, v: Value) -> Response {
        let Value::Object(req) = v else {
            return Response::Error {
                error: QmpError::generic("QMP input must be a JSON object"),
                id: None,
            };
        };
        let id = req.get("id").cloned();
        match self.dispatch(&req) {
            Ok(value) => Response::Return { value, id },
            Err(error) => Response::Error { error, id },
        }
    }

    fn dispatch(&mut self, req: &Map<String, Value>) -> Result<Value, QmpError> {
        let (name, args) = check_request(req)?;
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        let cmd = QmpCommand::parse(name, args)?;
        self.run(cmd)
    }

    fn run(&mut self, cmd: QmpCommand) -> Result<Value, QmpError> {
        match cmd {
            QmpCommand::QmpCapabilities { enable } => {
                if self.negotiated {
                    return Err(QmpError::command_not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ));
                }
                if !enable.is_empty() {
                    // No capability is offered in the greeting.
                    return Err(QmpError::generic("Capability oob not available"));
                }
                self.negotiated = true;
                Ok(json!({}))
            }
            QmpCommand::QueryCommands => Ok(Value::Array(
                COMMAND_NAMES.iter().map(|n| json!({"name": n})).collect(),
            )),
            QmpCommand::QueryVersion => Ok(self.handler.version().to_json()),
            QmpCommand::Getfd { fdname } => {
                let fd = self.pending.pop().ok_or_else(|| {
                    QmpError::generic("No file descriptor supplied via SCM_RIGHTS")
                })?;
                lock(&self.store).insert(&fdname, fd)?;
                Ok(json!({}))
            }
            QmpCommand::Closefd { fdname } => {
                lock(&self.store).close(&fdname)?;
                Ok(json!({}))
            }
            cmd => {
                let name = cmd.name();
                let mut fds = SharedFds(self.store.clone());
                let handler = &self.handler;
                let result = catch_unwind(AssertUnwindSafe(|| handler.execute(cmd, &mut fds)))
                    .unwrap_or_else(|_| {
                        log::error!("QMP: handler panicked while running '{name}'");
                        Err(QmpError::generic(format!(
                            "internal error while running '{name}'"
                        )))
                    });
                result.map(|v| if v.is_null() { json!({}) } else { v })
            }
        }
    }
}

/// The `arguments` member of a request.
type Arguments<'a> = Option<&'a Map<String, Value>>;

/// Checks the members of a request object as QEMU does and returns the
/// command name and its arguments.
fn check_request(req: &Map<String, Value>) -> Result<(&str, Arguments<'_>), QmpError> {
    let mut name = None;
    let mut args = None;
    for (key, value) in req {
        match key.as_str() {
            "execute" => match value {
                Value::String(s) => name = Some(s.as_str()),
                _ => {
                    return Err(QmpError::generic(
                        "QMP input member 'execute' must be a string",
                    ))
                }
            },
            "arguments" => match value {
                Value::Object(m) => args = Some(m),
                _ => {
                    return Err(QmpError::generic(
                        "QMP input member 'arguments' must be an object",
                    ))
                }
            },
            "id" => {}
            // Also "exec-oob": out-of-band execution is never enabled.
            other => {
                return Err(QmpError::generic(format!(
                    "QMP input member '{other}' is unexpected"
                )))
            }
        }
    }
    let name = name.ok_or_else(|| QmpError::generic("QMP input lacks member 'execute'"))?;
    Ok((name, args))
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
