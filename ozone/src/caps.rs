//! Credentials of the jailed process: rlimits, supplementary groups,
//! UID/GID, capabilities (all dropped unless `-capability` keeps some) and
//! `no_new_privs`.

use crate::error::OzoneError;

/// Capability names by number (capability(7)); the index is the number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The highest capability number the kernel might know; the bounding set
/// is walked up to the first number it rejects.
const MAX_CAP: u32 = 63;

/// The open-file limit of the VMM (lowered to the current hard limit if
/// that is smaller): enough for vCPUs, devices, event descriptors and QMP
/// clients, small enough to bound a runaway.
pub const NOFILE_LIMIT: u64 = 4096;

/// Parses `-capability`: names separated by commas, with or without the
/// `CAP_` prefix, any case.
pub fn parse_list(list: &str) -> Result<Vec<u32>, OzoneError> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let up = item.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up);
        let Some(n) = NAMES.iter().position(|n| *n == bare) else {
            return Err(OzoneError::usage(format!(
                "-capability: unknown capability '{item}' (e.g. CAP_CHOWN, CAP_NET_ADMIN)"
            )));
        };
        if !out.contains(&(n as u32)) {
            out.push(n as u32);
        }
    }
    Ok(out)
}

/// The name of capability `n` (`CAP_…`).
pub fn name(n: u32) -> String {
    NAMES
        .get(n as usize)
        .map_or_else(|| format!("CAP_{n}"), |s| format!("CAP_{s}"))
}

/// Sets the VMM's resource limits: no core dumps (guest memory never lands
/// in a file) and at most [`NOFILE_LIMIT`] open files.
pub fn set_rlimits() -> Result<(), OzoneError> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(OzoneError::last_os("setrlimit(RLIMIT_CORE, 0)"));
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } != 0 {
        return Err(OzoneError::last_os("getrlimit(RLIMIT_NOFILE)"));
    }
    let n = cur.rlim_max.min(NOFILE_LIMIT as libc::rlim_t);
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(OzoneError::last_os(format!(
            "setrlimit(RLIMIT_NOFILE, {n})"
        )));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn prctl(
    what: &str,
    op: libc::c_int,
    a: libc::c_ulong,
    b: libc::c_ulong,
) -> Result<(), OzoneError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) } != 0 {
        return Err(OzoneError::last_os(what));
    }
    Ok(())
}

/// Becomes `uid`/`gid` with only the capabilities in `keep` (none by
/// default) in every set: bounding, permitted, effective, inheritable and
/// ambient (so that they survive the exec of a non-root binary), then sets
/// `no_new_privs`. Must run as root, after the mounts.
pub fn drop_privileges(uid: u32, gid: u32, keep: &[u32]) -> Result<(), OzoneError> {
    // Root in the jail gains nothing at exec, and no uid change restores
    // capabilities; keep the permitted set across setuid only when asked.
    let mut bits = (libc::SECBIT_NOROOT | libc::SECBIT_NOROOT_LOCKED) as libc::c_ulong;
    if !keep.is_empty() {
        bits |= libc::SECBIT_KEEP_CAPS as libc::c_ulong;
    }
    prctl("prctl(PR_SET_SECUREBITS)", libc::PR_SET_SECUREBITS, bits, 0)?;
    for cap in 0..=MAX_CAP {
        // SAFETY: PR_CAPBSET_READ with an integer argument.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present < 0 {
            break; // past the kernel's last capability
        }
        if present == 1 && !keep.contains(&cap) {
            prctl(
                &format!("prctl(PR_CAPBSET_DROP, {})", name(cap)),
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0,
            )?;
        }
    }
    for &cap in keep {
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } != 1 {
            return Err(OzoneError::usage(format!(
                "-capability {}: not in altovirt-ozone's own bounding set, cannot be kept",
                name(cap)
            )));
        }
    }
    // SAFETY: setgroups with an empty list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(OzoneError::last_os("setgroups([])"));
    }
    // SAFETY: plain id changes.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(OzoneError::last_os(format!("-gid {gid}: setresgid")));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(OzoneError::last_os(format!("-uid {uid}: setresuid")));
    }
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
        data[word].inheritable |= bit;
    }
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with a version-3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(OzoneError::last_os("capset"));
    }
    prctl(
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )?;
    for &cap in keep {
        prctl(
            &format!("prctl(PR_CAP_AMBIENT_RAISE, {})", name(cap)),
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
        )?;
    }
    prctl(
        "prctl(PR_SET_NO_NEW_PRIVS)",
        libc::PR_SET_NO_NEW_PRIVS,
        1,
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_any_case_with_or_without_prefix() {
        assert_eq!(parse_list("CAP_CHOWN").unwrap(), [0]);
        assert_eq!(parse_list("cap_net_admin,SYS_ADMIN").unwrap(), [12, 21]);
        assert_eq!(parse_list("chown,CAP_CHOWN").unwrap(), [0]);
        assert_eq!(parse_list("CAP_CHECKPOINT_RESTORE").unwrap(), [40]);
        let e = parse_list("CAP_CHOWN,CAP_FLY").unwrap_err().to_string();
        assert!(
            e.contains("-capability: unknown capability 'CAP_FLY'"),
            "{e}"
        );
        assert_eq!(name(21), "CAP_SYS_ADMIN");
    }
}
