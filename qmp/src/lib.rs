//! QMP: protocol, server and schema of altovirt's control socket.
//!
//! Not implemented yet: this crate is part of the workspace layout and is
//! filled by the QMP issue.
