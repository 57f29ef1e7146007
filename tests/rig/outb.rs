//! `outb PORT VALUE`: writes one byte to an x86 I/O port from user space
//! (ioperm, then `out`). The rig's L2 init uses it to signal boot-complete,
//! since Debian's cloud kernel has no /dev/port. Built by scripts/rig/run.sh
//! with `rustc -C target-feature=+crt-static`; not part of the workspace.

use std::arch::asm;
use std::process::ExitCode;

const SYS_IOPERM: i64 = 173;

fn parse(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, value) = match args.as_slice() {
        [p, v] => match (parse(p), parse(v)) {
            (Some(p), Some(v)) if p <= 0xffff && v <= 0xff => (p as u16, v as u8),
            _ => {
                eprintln!("outb: PORT must be 0..=0xffff and VALUE 0..=0xff");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: outb PORT VALUE");
            return ExitCode::from(2);
        }
    };
    let ret: i64;
    // SAFETY: ioperm(port, 1, 1) only changes this process's I/O bitmap.
    unsafe {
        asm!("syscall",
            inlateout("rax") SYS_IOPERM => ret,
            in("rdi") u64::from(port), in("rsi") 1u64, in("rdx") 1u64,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if ret != 0 {
        eprintln!("outb: ioperm({port:#x}) failed: errno {}", -ret);
        return ExitCode::from(1);
    }
    // SAFETY: the port was granted above; writing it has no effect on this
    // process's memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack));
    }
    ExitCode::SUCCESS
}
