use super::*;
use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;

const GREETING: &str = r#"{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":"fake"},"capabilities":[]}}"#;

fn sock_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shim-qmpc-{}-{name}.sock", std::process::id()))
}

/// A fake VMM: greets, then answers with `answer` (or never, if it returns
/// `None`). Lines the client sent are reported on the channel.
fn fake_vmm<F>(name: &str, answer: F) -> (std::path::PathBuf, mpsc::Receiver<String>)
where
    F: Fn(&Value) -> Option<String> + Send + 'static,
{
    let path = sock_path(name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(format!("{GREETING}\r\n").as_bytes()).unwrap();
        let r = io::BufReader::new(s.try_clone().unwrap());
        for line in r.lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).unwrap();
            let _ = tx.send(line.clone());
            if v["execute"] == "qmp_capabilities" {
                let id = v["id"].clone();
                let _ = s.write_all(format!("{{\"return\":{{}},\"id\":{id}}}\r\n").as_bytes());
                continue;
            }
            if let Some(a) = answer(&v) {
                let _ = s.write_all(a.as_bytes());
            }
        }
    });
    (path, rx)
}

#[test]
fn greeting_negotiation_and_reply_by_id() {
    let (path, rx) = fake_vmm("basic", |v| {
        let id = v["id"].clone();
        // An event, a stale reply, then the real one split in two writes'
        // worth of bytes without a separator.
        Some(format!(
            "{{\"event\":\"STOP\",\"timestamp\":{{\"seconds\":1,\"microseconds\":2}}}}{{\"return\":1,\"id\":999}}{{\"return\":{{\"status\":\"paused\"}},\"id\":{id}}}\r\n"
        ))
    });
    let mut c = QmpClient::connect(&path, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    assert_eq!(c.greeting().version, (7, 2, 0));
    assert_eq!(c.greeting().package, "fake");
    let r = c.execute("query-status", None).unwrap();
    assert_eq!(r["status"], "paused");
    let evs = c.take_events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].name, "STOP");
    let first: Value = serde_json::from_str(&rx.recv().unwrap()).unwrap();
    assert_eq!(first["execute"], "qmp_capabilities");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn command_error_is_reported() {
    let (path, _rx) = fake_vmm("err", |v| {
        Some(format!(
            "{{\"error\":{{\"class\":\"GenericError\",\"desc\":\"nope\"}},\"id\":{}}}\n",
            v["id"]
        ))
    });
    let mut c = QmpClient::connect(&path, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    match c.execute("stop", None) {
        Err(QmpClientError::Command { class, desc, .. }) => {
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "nope");
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn command_timeout_when_vmm_never_answers() {
    let (path, _rx) = fake_vmm("silent", |_| None);
    let mut c =
        QmpClient::connect(&path, Duration::from_secs(2), Duration::from_millis(200)).unwrap();
    let t = Instant::now();
    match c.execute("query-status", None) {
        Err(QmpClientError::Timeout { what, timeout }) => {
            assert_eq!(what, "query-status");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("{other:?}"),
    }
    let el = t.elapsed();
    assert!(
        el >= Duration::from_millis(200) && el < Duration::from_secs(2),
        "{el:?}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn event_wait_timeout_and_delivery() {
    let (path, _rx) = fake_vmm("events", |v| {
        if v["execute"] == "stop" {
            Some(format!(
                "{{\"return\":{{}},\"id\":{}}}\r\n{{\"event\":\"STOP\",\"timestamp\":{{\"seconds\":1,\"microseconds\":2}}}}\r\n",
                v["id"]
            ))
        } else {
            None
        }
    });
    let mut c = QmpClient::connect(&path, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    c.execute("stop", None).unwrap();
    let ev = c.wait_event("STOP", Duration::from_secs(2)).unwrap();
    assert_eq!(ev.name, "STOP");
    let t = Instant::now();
    match c.wait_event("RESUME", Duration::from_millis(150)) {
        Err(QmpClientError::Timeout { what, timeout }) => {
            assert_eq!(what, "event RESUME");
            assert_eq!(timeout, Duration::from_millis(150));
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn connect_times_out_without_socket() {
    let path = sock_path("absent");
    let _ = std::fs::remove_file(&path);
    let t = Instant::now();
    let e = QmpClient::connect(&path, Duration::from_millis(200), Duration::from_secs(1));
    assert!(matches!(e, Err(QmpClientError::Connect { .. })));
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[test]
fn getfd_sends_scm_rights() {
    let path = sock_path("fd");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(format!("{GREETING}\r\n").as_bytes()).unwrap();
        let mut fds_seen = 0;
        let mut pending = String::new();
        loop {
            let mut buf = [0u8; 4096];
            let n = match s.recv_with_fd(&mut buf) {
                Ok((0, _)) | Err(_) => return,
                Ok((n, file)) => {
                    fds_seen += usize::from(file.is_some());
                    n
                }
            };
            pending.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["execute"] == "getfd" {
                    tx.send(fds_seen).unwrap();
                }
                s.write_all(format!("{{\"return\":{{}},\"id\":{}}}\n", v["id"]).as_bytes())
                    .unwrap();
            }
        }
    });
    let mut c = QmpClient::connect(&path, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let f = std::fs::File::open("/dev/null").unwrap();
    c.getfd("tap0", std::os::fd::AsRawFd::as_raw_fd(&f))
        .unwrap();
    assert_eq!(rx.recv().unwrap(), 1);
    let _ = std::fs::remove_file(&path);
}
