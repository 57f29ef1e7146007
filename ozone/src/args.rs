//! The command line, parsed by hand: StratoVirt's ozone uses single-dash
//! long flags (`-name`, `-exec_file`), and `-source` and `-cgroup` take one
//! or more values each.
//!
//! ```text
//! altovirt-ozone -name NAME -exec-file PATH -uid UID -gid GID
//!     [-source FILE...]... [-netns PATH] [-capability CAP[,CAP]...]
//!     [-cgroup KEY=VALUE...]... [-numa NODE] [-clean-resource]
//!     [-- ALTOVIRT ARGUMENTS]
//! ```

use std::path::PathBuf;

use crate::caps;
use crate::cgroup::Setting;
use crate::error::OzoneError;

/// The longest jail name (StratoVirt's limit, one path component).
pub const MAX_NAME_LEN: usize = 255;

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// `-h`, `-help`: print the flag list.
    Help,
    /// `-V`, `-version`: print the version.
    Version,
    /// Build a jail and run the VMM in it (there is a `--`, or there is no
    /// `-clean-resource`).
    Launch(Options),
    /// `-clean-resource` without `--`: remove what an earlier launch of
    /// this name left (StratoVirt's clean-up invocation).
    Clean(Options),
}

/// The flags of a launch or clean-up.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// `-name`: the jail's name (its directory and cgroup).
    pub name: String,
    /// `-exec-file` / `-exec_file`: the VMM binary.
    pub exec_file: PathBuf,
    /// `-uid`.
    pub uid: u32,
    /// `-gid`.
    pub gid: u32,
    /// `-source`: files linked or copied into the jail.
    pub sources: Vec<PathBuf>,
    /// `-netns`: a network namespace to join.
    pub netns: Option<PathBuf>,
    /// `-capability`: capabilities the VMM keeps (numbers).
    pub keep_caps: Vec<u32>,
    /// `-cgroup` and `-numa`: cgroup settings.
    pub cgroups: Vec<Setting>,
    /// `-clean-resource`.
    pub clean_resource: bool,
    /// The VMM's arguments (after `--`).
    pub vmm_args: Vec<String>,
}

/// The flag list printed by `-help`.
pub const HELP: &str = "\
usage: altovirt-ozone -name NAME -exec-file PATH -uid UID -gid GID [options] [-- ALTOVIRT ARGS]
       altovirt-ozone -name NAME -exec-file PATH [-uid UID -gid GID] -clean-resource

Runs altovirt jailed in /srv/zozone/<exec file name>/NAME (see docs/ozone.md).

  -name NAME                jail name: 1-255 of A-Z a-z 0-9 . _ -
  -exec-file, -exec_file P  the VMM binary (hard-linked or copied into the jail)
  -uid UID, -gid GID        the ids the VMM runs as
  -source FILE...           files for the VMM (kernel, initrd, disks); repeatable
  -netns PATH               join this network namespace (e.g. /var/run/netns/NAME)
  -capability CAP[,CAP]...  capabilities the VMM keeps (default: none)
  -cgroup KEY=VALUE...      cpuset.cpus, cpuset.mems, memory.limit_in_bytes,
                            memory.max, pids.max; repeatable
  -numa NODE                cpuset.mems=NODE
  -clean-resource           with '--': remove the jail and cgroup when the VM ends;
                            without '--': remove those an earlier launch left
  --                        the rest are altovirt's arguments; relative paths
                            resolve inside the jail
  -h, -help                 this text
  -V, -version              the version";

fn take_value<'a>(
    flag: &'static str,
    it: &mut std::iter::Peekable<impl Iterator<Item = &'a String>>,
) -> Result<&'a String, OzoneError> {
    match it.next() {
        Some(v) if v != "--" => Ok(v),
        _ => Err(OzoneError::usage(format!("{flag}: missing value"))),
    }
}

/// Values of a multi-valued flag: every following argument up to the next
/// one that starts with `-`.
fn take_values<'a>(
    flag: &'static str,
    it: &mut std::iter::Peekable<impl Iterator<Item = &'a String>>,
) -> Result<Vec<&'a String>, OzoneError> {
    let mut out = Vec::new();
    while let Some(v) = it.peek() {
        if v.starts_with('-') {
            break;
        }
        out.push(*v);
        it.next();
    }
    if out.is_empty() {
        return Err(OzoneError::usage(format!("{flag}: missing value")));
    }
    Ok(out)
}

fn parse_id(flag: &'static str, v: &str) -> Result<u32, OzoneError> {
    match v.parse::<u32>() {
        Ok(n) if n != u32::MAX => Ok(n),
        _ => Err(OzoneError::usage(format!(
            "{flag}: '{v}' is not a user or group id (0 to 4294967294)"
        ))),
    }
}

/// Checks a jail name: one path component of safe characters.
pub fn check_name(name: &str) -> Result<(), OzoneError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(OzoneError::usage(format!(
            "-name: '{name}' must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - (and not . or ..)"
        )))
    }
}

fn once<T>(flag: &'static str, slot: &mut Option<T>, v: T) -> Result<(), OzoneError> {
    if slot.replace(v).is_some() {
        return Err(OzoneError::usage(format!("{flag}: given more than once")));
    }
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, OzoneError> {
    let mut name = None;
    let mut exec_file = None;
    let mut uid = None;
    let mut gid = None;
    let mut netns = None;
    let mut numa = None;
    let mut caps_arg = None;
    let mut o = Options::default();
    let mut vmm_args = None;
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        if arg == "--" {
            vmm_args = Some(it.by_ref().cloned().collect::<Vec<_>>());
            break;
        }
        // StratoVirt's parser takes `-flag`; `--flag` is accepted too.
        let flag = arg.strip_prefix("--").unwrap_or(arg);
        match flag {
            "-h" | "-help" | "h" | "help" => return Ok(Command::Help),
            "-V" | "-version" | "version" => return Ok(Command::Version),
            _ => {}
        }
        let flag = if arg.starts_with("--") {
            format!("-{flag}")
        } else {
            flag.to_string()
        };
        match flag.as_str() {
            "-name" => once("-name", &mut name, take_value("-name", &mut it)?.clone())?,
            "-exec-file" | "-exec_file" => once(
                "-exec-file",
                &mut exec_file,
                PathBuf::from(take_value("-exec-file", &mut it)?),
            )?,
            "-uid" => once(
                "-uid",
                &mut uid,
                parse_id("-uid", take_value("-uid", &mut it)?)?,
            )?,
            "-gid" => once(
                "-gid",
                &mut gid,
                parse_id("-gid", take_value("-gid", &mut it)?)?,
            )?,
            "-source" => o.sources.extend(
                take_values("-source", &mut it)?
                    .into_iter()
                    .map(PathBuf::from),
            ),
            "-netns" => once(
                "-netns",
                &mut netns,
                PathBuf::from(take_value("-netns", &mut it)?),
            )?,
            "-capability" => once(
                "-capability",
                &mut caps_arg,
                take_value("-capability", &mut it)?.clone(),
            )?,
            "-cgroup" => {
                for v in take_values("-cgroup", &mut it)? {
                    for s in Setting::parse_list(v)? {
                        if o.cgroups.iter().any(|c| c.key == s.key) {
                            return Err(OzoneError::usage(format!(
                                "-cgroup {}: given more than once",
                                s.key
                            )));
                        }
                        o.cgroups.push(s);
                    }
                }
            }
            "-numa" => once("-numa", &mut numa, take_value("-numa", &mut it)?.clone())?,
            "-clean-resource" | "-clean_resource" => o.clean_resource = true,
            other => {
                return Err(OzoneError::usage(format!(
                    "unknown flag '{other}' (altovirt's own flags go after '--'; see -help)"
                )))
            }
        }
    }
    o.name = name.ok_or_else(|| OzoneError::usage("-name is required"))?;
    check_name(&o.name)?;
    o.exec_file = exec_file.ok_or_else(|| OzoneError::usage("-exec-file is required"))?;
    o.netns = netns;
    if let Some(c) = caps_arg {
        o.keep_caps = caps::parse_list(&c)?;
    }
    if let Some(node) = numa {
        if o.cgroups.iter().any(|c| c.key == "cpuset.mems") {
            return Err(OzoneError::usage(
                "-numa: cpuset.mems is also given with -cgroup; use one",
            ));
        }
        o.cgroups.push(Setting::numa(&node)?);
    }
    let launch = vmm_args.is_some() || !o.clean_resource;
    if !launch {
        // The clean-up invocation: uid and gid are accepted (StratoVirt
        // repeats the launch's flags) but not needed.
        o.uid = uid.unwrap_or(0);
        o.gid = gid.unwrap_or(0);
        return Ok(Command::Clean(o));
    }
    o.uid = uid.ok_or_else(|| OzoneError::usage("-uid is required"))?;
    o.gid = gid.ok_or_else(|| OzoneError::usage("-gid is required"))?;
    o.vmm_args = vmm_args.unwrap_or_default();
    if o.vmm_args.iter().any(|a| a == "-daemonize") {
        return Err(OzoneError::usage(
            "-daemonize: not supported in the jail (altovirt is PID 1 of the jail's PID namespace and would take the VM with it); run altovirt-ozone itself in the background",
        ));
    }
    Ok(Command::Launch(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, OzoneError> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    fn launch(s: &str) -> Options {
        match p(s) {
            Ok(Command::Launch(o)) => o,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn usage(s: &str) -> String {
        match p(s) {
            Err(e @ OzoneError::Usage(_)) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn stratovirt_spellings() {
        let o = launch(
            "-name vm1 -exec_file /bin/altovirt -gid 100 -uid 101 -capability CAP_CHOWN \
             -netns /var/run/netns/n -source /k /r -numa 0 \
             -cgroup cpuset.cpus=4-5 memory.limit_in_bytes=1000000 \
             -- -kernel ./k -qmp unix:./q.sock,server,nowait",
        );
        assert_eq!(o.name, "vm1");
        assert_eq!(o.exec_file, PathBuf::from("/bin/altovirt"));
        assert_eq!((o.uid, o.gid), (101, 100));
        assert_eq!(o.sources, [PathBuf::from("/k"), PathBuf::from("/r")]);
        assert_eq!(o.netns, Some(PathBuf::from("/var/run/netns/n")));
        assert_eq!(o.keep_caps, [0]);
        let keys: Vec<_> = o.cgroups.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cpuset.cpus", "memory.limit_in_bytes", "cpuset.mems"]
        );
        assert_eq!(o.vmm_args[0], "-kernel");
        assert_eq!(o.vmm_args.len(), 4);
        assert!(!o.clean_resource);
    }

    #[test]
    fn issue_spellings_and_repeats() {
        let o = launch(
            "-name a.b_c-1 -exec-file x -uid 65534 -gid 65534 -source k -source i \
             -cgroup cpuset.cpus=0,1,pids.max=64 -clean-resource --",
        );
        assert_eq!(o.sources.len(), 2);
        assert!(o.clean_resource);
        assert!(o.vmm_args.is_empty());
        assert_eq!(o.cgroups[0].value, "0,1");
        assert_eq!(o.cgroups[1].key, "pids.max");
        // Double-dash long flags are accepted too.
        let o = launch("--name n --exec-file x --uid 1 --gid 2");
        assert_eq!((o.uid, o.gid), (1, 2));
    }

    #[test]
    fn clean_mode_is_clean_resource_without_separator() {
        match p("-name vm -exec_file /x -uid 1 -gid 1 -source /k -clean-resource") {
            Ok(Command::Clean(o)) => assert_eq!(o.name, "vm"),
            other => panic!("{other:?}"),
        }
        match p("-name vm -exec_file /x -clean-resource") {
            Ok(Command::Clean(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors_name_the_flag() {
        assert!(usage("-exec-file x -uid 1 -gid 1").contains("-name is required"));
        assert!(usage("-name a -uid 1 -gid 1").contains("-exec-file is required"));
        assert!(usage("-name a -exec-file x -gid 1").contains("-uid is required"));
        assert!(usage("-name a -exec-file x -uid 1").contains("-gid is required"));
        assert!(usage("-name a -exec-file x -uid nobody -gid 1").contains("-uid: 'nobody'"));
        assert!(usage("-name a/b -exec-file x -uid 1 -gid 1").contains("-name: 'a/b'"));
        assert!(usage("-name .. -exec-file x -uid 1 -gid 1").contains("-name"));
        assert!(usage("-name a -name b").contains("-name: given more than once"));
        assert!(usage("-name a -exec-file x -uid 1 -gid 1 -kernel k").contains("'-kernel'"));
        assert!(usage("-name").contains("-name: missing value"));
        assert!(usage("-name a -source -uid 1").contains("-source: missing value"));
        assert!(
            usage("-name a -exec-file x -uid 1 -gid 1 -cgroup cpu.shares=2")
                .contains("-cgroup cpu.shares")
        );
        assert!(
            usage("-name a -exec-file x -uid 1 -gid 1 -capability CAP_NOPE")
                .contains("-capability")
        );
        assert!(
            usage("-name a -exec-file x -uid 1 -gid 1 -numa 0 -cgroup cpuset.mems=0")
                .contains("-numa")
        );
        assert!(usage("-name a -exec-file x -uid 1 -gid 1 -- -daemonize").contains("-daemonize"));
        let long = "n".repeat(256);
        assert!(usage(&format!("-name {long} -exec-file x -uid 1 -gid 1")).contains("-name"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p("-help").unwrap(), Command::Help);
        assert_eq!(p("-name a -h").unwrap(), Command::Help);
        assert_eq!(p("-version").unwrap(), Command::Version);
    }
}
