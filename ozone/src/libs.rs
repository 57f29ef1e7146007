//! The shared libraries of a dynamically linked exec file.
//!
//! Inside the jail only the jail's files exist, so a dynamic VMM binary
//! needs its program interpreter (`PT_INTERP`, e.g.
//! `/lib64/ld-linux-x86-64.so.2`) and every library it loads at the same
//! paths. The interpreter itself lists them (`ld.so --list FILE`, what
//! `ldd` runs). A static binary needs nothing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::OzoneError;

const PT_INTERP: u32 = 3;

fn bad(exec: &Path, reason: impl Into<String>) -> OzoneError {
    OzoneError::BadPath {
        flag: "-exec-file",
        path: exec.to_path_buf(),
        reason: reason.into(),
    }
}

/// The program interpreter of the ELF64 file `exec`, if it has one.
pub fn interpreter(exec: &Path) -> Result<Option<PathBuf>, OzoneError> {
    let io = |e: std::io::Error| bad(exec, e.to_string());
    let mut f = File::open(exec).map_err(io)?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh)
        .map_err(|_| bad(exec, "not an ELF file"))?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(bad(exec, "not a 64-bit little-endian ELF file"));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = u64_at(&eh, 0x20);
    let phentsize = usize::from(u16_at(&eh, 0x36));
    let phnum = u16_at(&eh, 0x38);
    if phentsize < 0x28 {
        return Err(bad(exec, "bad ELF program header size"));
    }
    let mut ph = vec![0u8; phentsize];
    for i in 0..u64::from(phnum) {
        f.seek(SeekFrom::Start(phoff + i * phentsize as u64))
            .map_err(io)?;
        f.read_exact(&mut ph).map_err(io)?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let (off, len) = (u64_at(&ph, 8), u64_at(&ph, 0x20));
        if len == 0 || len > 4096 {
            return Err(bad(exec, "bad ELF interpreter entry"));
        }
        let mut s = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(off)).map_err(io)?;
        f.read_exact(&mut s).map_err(io)?;
        let s = s.split(|&b| b == 0).next().unwrap_or_default();
        let p = std::str::from_utf8(s).map_err(|_| bad(exec, "bad ELF interpreter path"))?;
        return Ok(Some(PathBuf::from(p)));
    }
    Ok(None)
}

/// Parses the output of `ld.so --list`: the absolute paths of the
/// libraries and of the interpreter (the vDSO has none).
pub fn parse_list(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                rest.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') && !out.iter().any(|p: &PathBuf| p == Path::new(path)) {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

/// The files `exec` needs at run time (interpreter and libraries), empty
/// for a static binary.
pub fn needed(exec: &Path) -> Result<Vec<PathBuf>, OzoneError> {
    let Some(interp) = interpreter(exec)? else {
        return Ok(Vec::new());
    };
    let out = Command::new(&interp)
        .arg("--list")
        .arg(exec)
        .output()
        .map_err(|e| {
            bad(
                exec,
                format!("cannot run its interpreter {}: {e}", interp.display()),
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(bad(
            exec,
            format!(
                "{} --list failed: {}",
                interp.display(),
                err.lines().next().unwrap_or("no output")
            ),
        ));
    }
    let mut files = parse_list(&String::from_utf8_lossy(&out.stdout)).map_err(|e| bad(exec, e))?;
    if !files.contains(&interp) {
        files.push(interp);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f9a)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9b)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f9c)\n";
        assert_eq!(
            parse_list(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let e = parse_list("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.contains("libfoo.so.1 not found"), "{e}");
    }

    #[test]
    fn a_dynamic_binary_s_interpreter_and_libraries_are_found() {
        // The shell is a dynamic glibc program on every host the tests run on.
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let interp = interpreter(&sh).unwrap().expect("/bin/sh is dynamic");
        assert!(interp.is_absolute());
        let files = needed(&sh).unwrap();
        assert!(files.contains(&interp), "{files:?}");
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("libc.so")),
            "{files:?}"
        );
        let e = interpreter(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_static_binary_needs_nothing() {
        // The test binary is linked like altovirt: static-pie
        // (.cargo/config.toml), so nothing is copied into a jail for it.
        let me = std::env::current_exe().unwrap();
        assert_eq!(interpreter(&me).unwrap(), None);
        assert!(needed(&me).unwrap().is_empty());
    }
}
