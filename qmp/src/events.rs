//! Asynchronous events, broadcast to every negotiated client of every
//! socket that shares an [`EventHub`].

use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::conn::Conn;
use crate::lock;
use crate::protocol::to_line;

#[derive(Default)]
struct HubInner {
    conns: Mutex<Vec<Weak<Conn>>>,
}

/// The set of client connections events go to.
///
/// Create one per VM, pass it to every [`crate::QmpServer::bind`], and give
/// [`EventHub::emitter`]s to the parts of the VMM that raise events.
#[derive(Clone, Default)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

impl EventHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that emits events to this hub's clients.
    pub fn emitter(&self) -> EventEmitter {
        EventEmitter {
            inner: self.inner.clone(),
        }
    }

    /// Adds a connection; it receives events once negotiated.
    pub(crate) fn register(&self, conn: &Arc<Conn>) {
        let mut conns = lock(&self.inner.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(conn));
    }

    /// Number of connections still open on all sockets of this hub.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns)
            .iter()
            .filter(|c| c.strong_count() > 0)
            .count()
    }
}

/// Emits QMP events. Cheap to clone; `emit` never blocks on a client.
#[derive(Clone)]
pub struct EventEmitter {
    inner: Arc<HubInner>,
}

impl EventEmitter {
    /// Sends `{"event":NAME,"data":DATA,"timestamp":{...}}` to every
    /// negotiated client, stamped with the wall clock now. `data` is
    /// omitted when it is `null` (events such as `STOP` carry none).
    ///
    /// All clients see events in the order they were emitted. An event
    /// emitted while a client's command runs is sent after that command's
    /// reply. A client whose queue is full is disconnected.
    pub fn emit(&self, name: &str, data: Value) {
        let line: Arc<str> = Arc::from(event_line(name, &data, Timestamp::now()));
        // The hub lock is held across the loop so that concurrent emitters
        // queue their events in the same order for every client.
        let mut conns = lock(&self.inner.conns);
        conns.retain(|weak| match weak.upgrade() {
            Some(conn) => conn.push_event(&line),
            None => false,
        });
    }
}

/// When an event happened, relative to the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// Whole seconds (-1 if the clock could not be read).
    pub seconds: i64,
    /// Microseconds within the second (-1 if the clock could not be read).
    pub microseconds: i64,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            Err(_) => Timestamp {
                seconds: -1,
                microseconds: -1,
            },
        }
    }
}

#[derive(Serialize)]
struct EventMessage<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Value::is_null")]
    data: &'a Value,
    timestamp: Timestamp,
}

/// The event as one line of JSON ending in `\r\n`.
pub fn event_line(name: &str, data: &Value, timestamp: Timestamp) -> String {
    to_line(&EventMessage {
        event: name,
        data,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_format() {
        let ts = Timestamp {
            seconds: 1,
            microseconds: 2,
        };
        assert_eq!(
            event_line("DEVICE_DELETED", &json!({"device": "d"}), ts),
            "{\"event\":\"DEVICE_DELETED\",\"data\":{\"device\":\"d\"},\
             \"timestamp\":{\"seconds\":1,\"microseconds\":2}}\r\n"
        );
        assert_eq!(
            event_line("STOP", &Value::Null, ts),
            "{\"event\":\"STOP\",\"timestamp\":{\"seconds\":1,\"microseconds\":2}}\r\n"
        );
    }

    #[test]
    fn timestamp_is_wall_clock() {
        let t = Timestamp::now();
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((secs - t.seconds).abs() <= 1);
        assert!((0..1_000_000).contains(&t.microseconds));
    }

    #[test]
    fn emitting_with_no_clients_is_fine() {
        let hub = EventHub::new();
        hub.emitter().emit("STOP", Value::Null);
        assert_eq!(hub.connections(), 0);
    }
}
