//! The wire protocol over a real unix socket: framing, negotiation, ids,
//! parse errors and argument validation.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{err, Client, Setup};
use serde_json::json;

#[test]
fn greeting_is_the_first_line() {
    let s = Setup::new("greeting");
    let mut c = Client::connect(&s.sock());
    let g = c.read();
    assert_eq!(
        g,
        json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
            "package": format!("altovirt-{}", env!("CARGO_PKG_VERSION"))},
            "capabilities": []}})
    );
}

#[test]
fn negotiation_gate_and_second_capabilities() {
    let s = Setup::new("gate");
    let mut c = s.client();
    assert_eq!(
        c.cmd(r#"{"execute":"query-status","id":1}"#),
        json!({"error": {"class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1})
    );
    assert!(s.fake.calls().is_empty());
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#),
        err("GenericError", "Capability oob not available")
    );
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(
        c.cmd(r#"{"execute":"qmp_capabilities"}"#),
        err(
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    assert_eq!(
        c.cmd(r#"{"execute":"query-status"}"#),
        json!({"return": {"running": true, "singlestep": false, "status": "running"}})
    );
    // A new connection starts in negotiation mode again.
    let mut c2 = s.client();
    assert_eq!(
        c2.cmd(r#"{"execute":"stop"}"#)["error"]["class"],
        "CommandNotFound"
    );
}

#[test]
fn ids_of_any_type_are_echoed() {
    let s = Setup::new("ids");
    let mut c = s.negotiated();
    for id in [
        json!(42),
        json!(1.5e3),
        json!("req-1"),
        json!({"a": [1, "x", null], "b": {"c": true}}),
        json!([]),
    ] {
        let req = json!({"execute": "query-name", "id": id}).to_string();
        assert_eq!(c.cmd(&req), json!({"return": {}, "id": id}));
    }
}

#[test]
fn framing_without_newlines_batched_and_split() {
    let s = Setup::new("framing");
    let mut c = s.negotiated();
    // No newline between commands, two in one write.
    c.send(r#"{"execute":"query-name","id":1}{"execute":"query-uuid","id":2}"#);
    assert_eq!(c.read()["id"], 1);
    assert_eq!(c.read()["id"], 2);
    // One command split byte by byte, with whitespace inside.
    let cmd = b" { \"execute\" :\n\"query-kvm\", \"id\":\t3 }\r\n";
    for b in cmd {
        c.send_bytes(std::slice::from_ref(b));
    }
    assert_eq!(c.read(), json!({"return": {}, "id": 3}));
    assert_eq!(s.fake.calls(), ["query-name", "query-uuid", "query-kvm"]);
}

#[test]
fn garbage_malformed_and_non_objects() {
    let s = Setup::new("garbage");
    let mut c = s.negotiated();
    c.send(r#"this is not json {"execute":"query-name","id":1}"#);
    let e = c.read();
    assert_eq!(e["error"]["class"], "GenericError");
    assert!(e["error"]["desc"]
        .as_str()
        .unwrap()
        .starts_with("JSON parse error, "));
    assert!(e.get("id").is_none());
    assert_eq!(c.read(), json!({"return": {}, "id": 1}));

    c.send(r#"{"execute": }"#);
    let e = c.read();
    assert!(e["error"]["desc"]
        .as_str()
        .unwrap()
        .starts_with("JSON parse error, "));
    assert!(e.get("id").is_none());

    assert_eq!(
        c.cmd("[1, 2, 3]"),
        err("GenericError", "QMP input must be a JSON object")
    );
    assert_eq!(
        c.cmd(r#"{"execute":"query-name","bogus":1,"id":9}"#),
        json!({"error": {"class": "GenericError",
            "desc": "QMP input member 'bogus' is unexpected"}, "id": 9})
    );
    assert_eq!(
        c.cmd(r#"{"exec-oob":"query-name","id":10}"#),
        json!({"error": {"class": "GenericError",
            "desc": "QMP input member 'exec-oob' is unexpected"}, "id": 10})
    );
    // Still working.
    assert_eq!(
        c.cmd(r#"{"execute":"query-name","id":2}"#),
        json!({"return": {}, "id": 2})
    );
}

#[test]
fn oversized_message_is_refused_then_the_connection_works() {
    let s = Setup::new("oversized");
    let mut c = s.negotiated();
    // 5 MiB inside one string argument, sent in pieces.
    c.send(r#"{"execute":"device_del","arguments":{"id":""#);
    let chunk = "x".repeat(64 * 1024);
    let writer = {
        let mut w = c.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..80 {
                w.write_all(chunk.as_bytes()).unwrap();
            }
            w.write_all(br#""}}{"execute":"query-name","id":"after"}"#)
                .unwrap();
        })
    };
    let e = c.read();
    assert_eq!(e["error"]["class"], "GenericError");
    assert!(
        e["error"]["desc"].as_str().unwrap().contains("1048576"),
        "{e}"
    );
    assert_eq!(c.read(), json!({"return": {}, "id": "after"}));
    writer.join().unwrap();
    assert_eq!(s.fake.calls(), ["query-name"]);
}

#[test]
fn too_deep_nesting_is_refused() {
    let s = Setup::new("deep");
    let mut c = s.negotiated();
    let deep = format!(
        r#"{{"execute":"query-name","arguments":{{"x":{}{}}}}}"#,
        "[".repeat(2000),
        "]".repeat(2000)
    );
    let e = c.cmd(&deep);
    assert_eq!(e["error"]["class"], "GenericError");
    assert!(e["error"]["desc"].as_str().unwrap().contains("nesting"));
    assert_eq!(
        c.cmd(r#"{"execute":"query-name","id":1}"#),
        json!({"return": {}, "id": 1})
    );
    assert_eq!(s.fake.calls(), ["query-name"]);
}

#[test]
fn unknown_command_and_bad_arguments_never_reach_the_handler() {
    let s = Setup::new("args");
    let mut c = s.negotiated();
    assert_eq!(
        c.cmd(r#"{"execute":"migrate-incoming","id":1}"#),
        json!({"error": {"class": "CommandNotFound",
            "desc": "The command migrate-incoming has not been found"}, "id": 1})
    );
    let cases = [
        (
            r#"{"execute":"device_del","arguments":{"id":"d","x":1}}"#,
            "Parameter 'x' is unexpected",
        ),
        (r#"{"execute":"device_del"}"#, "Parameter 'id' is missing"),
        (
            r#"{"execute":"device_del","arguments":{"id":["d"]}}"#,
            "Invalid parameter type for 'id', expected: string",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"n","file":{"driver":"file","filename":7}}}"#,
            "Invalid parameter type for 'file.filename', expected: string",
        ),
        (
            r#"{"execute":"netdev_add","arguments":{"type":"tap"}}"#,
            "Parameter 'id' is missing",
        ),
        (
            r#"{"execute":"query-status","arguments":{"verbose":true}}"#,
            "Parameter 'verbose' is unexpected",
        ),
    ];
    for (req, desc) in cases {
        assert_eq!(c.cmd(req), err("GenericError", desc), "{req}");
    }
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
}

#[test]
fn query_commands_and_version_are_answered_by_the_server() {
    let s = Setup::new("queries");
    let mut c = s.negotiated();
    let r = c.cmd(r#"{"execute":"query-commands"}"#);
    let names: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for n in ["qmp_capabilities", "device_add", "query-status", "getfd"] {
        assert!(names.contains(&n), "{n}");
    }
    let r = c.cmd(r#"{"execute":"query-version"}"#);
    assert_eq!(r["return"]["qemu"]["major"], 7);
    assert!(s.fake.calls().is_empty());
}
