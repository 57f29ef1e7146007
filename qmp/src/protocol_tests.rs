//! Tests of [`Session`]: the protocol without sockets.

use super::*;
use crate::framer::Framer;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records calls; answers `query-name` with a name and fails `device_del`.
#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    taken: Mutex<Vec<String>>,
}

impl QmpHandler for Fake {
    fn execute(&self, cmd: QmpCommand, fds: &mut dyn FdLookup) -> Result<Value, QmpError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match cmd {
            QmpCommand::QueryName => Ok(json!({"name": "vm1"})),
            QmpCommand::DeviceDel { id } => Err(QmpError::device_not_found(format!(
                "Device '{id}' not found"
            ))),
            QmpCommand::NetdevAdd(n) => {
                let crate::NetdevBackend::Tap(tap) = &n.backend;
                for name in tap.fd_names() {
                    if fds.take_fd(name).is_none() {
                        return Err(QmpError::generic(format!("fd '{name}' not found")));
                    }
                    lock(&self.taken).push(name.to_string());
                }
                Ok(Value::Null)
            }
            QmpCommand::Quit => panic!("boom"),
            _ => Ok(Value::Null),
        }
    }

    fn version(&self) -> QmpVersion {
        QmpVersion {
            major: 9,
            minor: 1,
            micro: 3,
            package: "test".into(),
        }
    }
}

fn session() -> (Session, Arc<Fake>, Arc<Mutex<FdStore>>) {
    let fake = Arc::new(Fake::default());
    let store = Arc::new(Mutex::new(FdStore::default()));
    (Session::new(fake.clone(), store.clone()), fake, store)
}

/// Feeds text through a framer and the session, returning reply values.
fn run(s: &mut Session, text: &str) -> Vec<Value> {
    let mut f = Framer::new();
    f.feed_all(text.as_bytes())
        .into_iter()
        .map(|fr| s.handle_frame(fr).to_json())
        .collect()
}

fn one(s: &mut Session, text: &str) -> Value {
    let mut r = run(s, text);
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn negotiated() -> (Session, Arc<Fake>, Arc<Mutex<FdStore>>) {
    let (mut s, f, st) = session();
    assert_eq!(
        one(&mut s, r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    (s, f, st)
}

fn err(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

#[test]
fn greeting_format() {
    let line = greeting_line(&QmpVersion::default());
    assert!(line.ends_with("}\r\n"));
    assert_eq!(
        line.trim_end(),
        format!(
            r#"{{"QMP":{{"version":{{"qemu":{{"major":7,"minor":2,"micro":0}},"package":"altovirt-{}"}},"capabilities":[]}}}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn negotiation_gate() {
    let (mut s, fake, _) = session();
    let want = err(
        "CommandNotFound",
        "Expecting capabilities negotiation with 'qmp_capabilities'",
    );
    let mut with_id = want.clone();
    with_id["id"] = json!(1);
    assert_eq!(one(&mut s, r#"{"execute":"query-name","id":1}"#), with_id);
    // Even unknown commands get the negotiation message.
    assert_eq!(one(&mut s, r#"{"execute":"nope"}"#), want);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    assert!(!s.negotiated());
    // oob is not offered; unknown capabilities are invalid values.
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#
        ),
        err("GenericError", "Capability oob not available")
    );
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["x"]}}"#
        ),
        err(
            "GenericError",
            "Parameter 'enable[0]' does not accept value 'x'"
        )
    );
    assert!(!s.negotiated());
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":[]}}"#
        ),
        json!({"return": {}})
    );
    assert!(s.negotiated());
    assert_eq!(
        one(&mut s, r#"{"execute":"qmp_capabilities","id":"again"}"#),
        json!({"error": {"class": "CommandNotFound",
            "desc": "Capabilities negotiation is already complete, command ignored"},
            "id": "again"})
    );
    assert_eq!(
        one(&mut s, r#"{"execute":"query-name"}"#),
        json!({"return": {"name": "vm1"}})
    );
}

#[test]
fn ids_are_echoed_exactly() {
    let (mut s, _, _) = negotiated();
    for id in [
        json!(7),
        json!(-1.5),
        json!("abc"),
        json!({"a": [1, {"b": null}]}),
        json!(null),
        json!([true]),
    ] {
        let req = json!({"execute": "stop", "id": id});
        let r = one(&mut s, &req.to_string());
        assert_eq!(r, json!({"return": {}, "id": id}));
    }
    // Errors echo the id too.
    let r = one(
        &mut s,
        r#"{"execute":"device_del","arguments":{"id":"d"},"id":{"x":1}}"#,
    );
    assert_eq!(
        r,
        json!({"error": {"class": "DeviceNotFound", "desc": "Device 'd' not found"},
            "id": {"x": 1}})
    );
}

#[test]
fn request_shape_errors() {
    let (mut s, fake, _) = negotiated();
    let cases = [
        ("[1,2]", "QMP input must be a JSON object", false),
        (r#""str""#, "QMP input must be a JSON object", false),
        (r#"{"id":1}"#, "QMP input lacks member 'execute'", true),
        (
            r#"{"execute":1,"id":1}"#,
            "QMP input member 'execute' must be a string",
            true,
        ),
        (
            r#"{"execute":"stop","arguments":[],"id":1}"#,
            "QMP input member 'arguments' must be an object",
            true,
        ),
        (
            r#"{"execute":"stop","foo":1,"id":1}"#,
            "QMP input member 'foo' is unexpected",
            true,
        ),
        (
            r#"{"exec-oob":"stop","id":1}"#,
            "QMP input member 'exec-oob' is unexpected",
            true,
        ),
    ];
    for (input, desc, has_id) in cases {
        let mut want = err("GenericError", desc);
        if has_id {
            want["id"] = json!(1);
        }
        assert_eq!(one(&mut s, input), want, "{input}");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn parse_errors_have_no_id_and_the_session_goes_on() {
    let (mut s, _, _) = negotiated();
    let r = run(
        &mut s,
        r#"{"execute": }garbage{"execute":"stop","id":2}{"a":tru}{"execute":"cont","id":3}"#,
    );
    assert_eq!(r.len(), 5, "{r:?}");
    for i in [0, 1, 3] {
        let desc = r[i]["error"]["desc"].as_str().unwrap();
        assert!(desc.starts_with("JSON parse error, "), "{desc}");
        assert!(r[i].get("id").is_none());
    }
    assert_eq!(r[2], json!({"return": {}, "id": 2}));
    assert_eq!(r[4], json!({"return": {}, "id": 3}));
}

#[test]
fn argument_errors_do_not_call_the_handler() {
    let (mut s, fake, _) = negotiated();
    let cases = [
        (
            r#"{"execute":"device_del","arguments":{"id":"a","force":true}}"#,
            "Parameter 'force' is unexpected",
        ),
        (
            r#"{"execute":"device_del","arguments":{}}"#,
            "Parameter 'id' is missing",
        ),
        (
            r#"{"execute":"device_del","arguments":{"id":5}}"#,
            "Invalid parameter type for 'id', expected: string",
        ),
        (
            r#"{"execute":"stop","arguments":{"x":1}}"#,
            "Parameter 'x' is unexpected",
        ),
    ];
    for (input, desc) in cases {
        assert_eq!(one(&mut s, input), err("GenericError", desc), "{input}");
    }
    assert_eq!(
        one(&mut s, r#"{"execute":"frob"}"#),
        err("CommandNotFound", "The command frob has not been found")
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn server_side_commands() {
    let (mut s, fake, _) = negotiated();
    let r = one(&mut s, r#"{"execute":"query-version"}"#);
    assert_eq!(
        r,
        json!({"return": {"qemu": {"major": 9, "minor": 1, "micro": 3}, "package": "test"}})
    );
    let r = one(&mut s, r#"{"execute":"query-commands"}"#);
    let names: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, COMMAND_NAMES);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn getfd_closefd_and_handler_lookup() {
    let (mut s, fake, store) = negotiated();
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"getfd","arguments":{"fdname":"tap0"}}"#
        ),
        err("GenericError", "No file descriptor supplied via SCM_RIGHTS")
    );
    let file = |n: &str| {
        let p = std::env::temp_dir().join(format!("qmp-proto-{}-{n}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        OwnedFd::from(f)
    };
    s.add_fds(vec![file("a"), file("b"), file("c")]);
    assert_eq!(s.pending_fds(), 3);
    for name in ["tap0", "tap1", "spare"] {
        let req = json!({"execute": "getfd", "arguments": {"fdname": name}});
        assert_eq!(one(&mut s, &req.to_string()), json!({"return": {}}));
    }
    assert_eq!(s.pending_fds(), 0);
    assert_eq!(lock(&store).len(), 3);
    let r = one(
        &mut s,
        r#"{"execute":"netdev_add","arguments":{"type":"tap","id":"n0","fds":"tap0:tap1"}}"#,
    );
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(*lock(&fake.taken), ["tap0", "tap1"]);
    assert_eq!(lock(&store).len(), 1);
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"closefd","arguments":{"fdname":"spare"}}"#
        ),
        json!({"return": {}})
    );
    assert_eq!(
        one(
            &mut s,
            r#"{"execute":"closefd","arguments":{"fdname":"spare"}}"#
        ),
        err("GenericError", "File descriptor named 'spare' not found")
    );
    assert!(lock(&store).is_empty());
}

#[test]
fn handler_panic_becomes_an_error() {
    let (mut s, _, _) = negotiated();
    let r = one(&mut s, r#"{"execute":"quit","id":1}"#);
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(r["id"], 1);
    // The session still works.
    assert_eq!(one(&mut s, r#"{"execute":"stop"}"#), json!({"return": {}}));
}

#[test]
fn reply_lines_are_single_lines() {
    let r = Response::Return {
        value: json!({"s": "a\nb\r\n"}),
        id: Some(json!("x\ny")),
    };
    let line = r.to_line();
    assert!(line.ends_with("\r\n"));
    assert!(!line[..line.len() - 2].contains(['\n', '\r']));
    assert_eq!(
        Response::Error {
            error: QmpError::generic("e"),
            id: None
        }
        .to_line(),
        "{\"error\":{\"class\":\"GenericError\",\"desc\":\"e\"}}\r\n"
    );
}
