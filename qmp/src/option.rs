//! Parsing of the `-qmp` and `-api-channel` command-line values.
//!
//! Accepted: `unix:PATH,server,nowait`, `unix:PATH,server=on,wait=off`
//! (QEMU style, for `-qmp`) and `unix:PATH` (StratoVirt's `-api-channel`,
//! which is always a server). As in QEMU option strings, `,,` stands for a
//! literal comma in the path. Switch values may be `on`/`off`, `yes`/`no`
//! or `true`/`false`. The server never waits for a client, so `wait=on` is
//! refused; leaving `wait` out is accepted.

use std::path::PathBuf;

use crate::error::QmpOptionError;

/// Parses a `-qmp` value; `server` is required.
pub fn parse_qmp_option(s: &str) -> Result<PathBuf, QmpOptionError> {
    parse(s, true)
}

/// Parses a StratoVirt `-api-channel` value: `unix:PATH`, optionally with
/// the same `server`/`nowait` options as `-qmp`.
pub fn parse_api_channel_option(s: &str) -> Result<PathBuf, QmpOptionError> {
    parse(s, false)
}

fn parse(s: &str, need_server: bool) -> Result<PathBuf, QmpOptionError> {
    if s.is_empty() {
        return Err(QmpOptionError::Empty);
    }
    let items = split_items(s);
    let mut iter = items.into_iter();
    let first = iter.next().unwrap_or_default();
    let path = match first.split_once(':') {
        Some(("unix", path)) => path.to_string(),
        Some((kind, _)) => return Err(QmpOptionError::UnsupportedTransport(kind.to_string())),
        None => return Err(QmpOptionError::UnsupportedTransport(first)),
    };
    if path.is_empty() {
        return Err(QmpOptionError::EmptyPath);
    }
    let mut server = None;
    let mut wait = None;
    for item in iter {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (item.clone(), None),
        };
        match (key.as_str(), value) {
            ("server", None) => server = Some(true),
            ("nowait", None) => wait = Some(false),
            ("server", Some(v)) => server = Some(switch(&key, &v)?),
            ("wait", Some(v)) => wait = Some(switch(&key, &v)?),
            _ => return Err(QmpOptionError::UnknownOption(item)),
        }
    }
    if server == Some(false) || (need_server && server.is_none()) {
        return Err(QmpOptionError::NotServer);
    }
    if wait == Some(true) {
        return Err(QmpOptionError::WaitNotSupported);
    }
    Ok(PathBuf::from(path))
}

fn switch(key: &str, value: &str) -> Result<bool, QmpOptionError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(QmpOptionError::BadSwitch {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Splits at single commas; `,,` is a literal comma.
fn split_items(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for s in [
            "unix:/run/vm/qmp.sock,server,nowait",
            "unix:/run/vm/qmp.sock,server=on,wait=off",
            "unix:/run/vm/qmp.sock,nowait,server",
            "unix:/run/vm/qmp.sock,server=yes,wait=no",
            "unix:/run/vm/qmp.sock,server",
        ] {
            assert_eq!(
                parse_qmp_option(s).unwrap(),
                PathBuf::from("/run/vm/qmp.sock"),
                "{s}"
            );
        }
        assert_eq!(
            parse_api_channel_option("unix:/tmp/api.sock").unwrap(),
            PathBuf::from("/tmp/api.sock")
        );
        assert_eq!(
            parse_api_channel_option("unix:/tmp/a.sock,server,nowait").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            parse_qmp_option("unix:/tmp/a,,b.sock,server,nowait").unwrap(),
            PathBuf::from("/tmp/a,b.sock")
        );
    }

    #[test]
    fn rejected_forms() {
        use QmpOptionError as E;
        let cases = [
            ("", E::Empty),
            (
                "tcp:127.0.0.1:4444,server,nowait",
                E::UnsupportedTransport("tcp".into()),
            ),
            ("stdio", E::UnsupportedTransport("stdio".into())),
            ("unix:,server,nowait", E::EmptyPath),
            ("unix:/x,server,wait=on", E::WaitNotSupported),
            ("unix:/x,server=on,wait=on", E::WaitNotSupported),
            ("unix:/x,nowait", E::NotServer),
            ("unix:/x", E::NotServer),
            ("unix:/x,server=off,nowait", E::NotServer),
            (
                "unix:/x,server,nowait,reconnect=1",
                E::UnknownOption("reconnect=1".into()),
            ),
            (
                "unix:/x,server=maybe",
                E::BadSwitch {
                    key: "server".into(),
                    value: "maybe".into(),
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_qmp_option(s).unwrap_err(), want, "{s}");
        }
        assert_eq!(
            parse_api_channel_option("unix:/x,wait=on").unwrap_err(),
            E::WaitNotSupported
        );
        let msg = parse_qmp_option("tcp:1:2,server").unwrap_err().to_string();
        assert!(msg.contains("only 'unix:PATH'"), "{msg}");
    }
}
