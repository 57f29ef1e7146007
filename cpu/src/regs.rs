//! Boot-time register state of the boot vCPU for each entry protocol.

use boot_loader::paging::{boot_gdt, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use boot_loader::{BootInfo, BootProtocol};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Decodes a GDT descriptor into the segment register KVM expects.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// General-purpose registers at entry.
pub fn boot_regs(boot: &BootInfo) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: boot.entry,
        ..Default::default()
    };
    match boot.protocol {
        BootProtocol::Linux64 { zero_page } => {
            regs.rsp = boot.stack_pointer;
            regs.rbp = boot.stack_pointer;
            regs.rsi = zero_page;
        }
        BootProtocol::Pvh { start_info } => {
            regs.rbx = start_info;
        }
    }
    regs
}

/// Applies the boot segment and control registers to `sregs`.
pub fn boot_sregs(boot: &BootInfo, sregs: &mut kvm_sregs) {
    let long_mode = matches!(boot.protocol, BootProtocol::Linux64 { .. });
    let gdt = boot_gdt(long_mode);
    let code = segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    let tss = segment_from_gdt(gdt[3], TSS_SELECTOR);
    sregs.gdt.base = boot.gdt_base;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = boot.idt_base;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    if long_mode {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.cr3 = boot.cr3;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
}

/// FPU state at reset: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(protocol: BootProtocol) -> BootInfo {
        BootInfo {
            entry: 0x100200,
            protocol,
            kernel: (0x100000, 0x200000),
            initrd: None,
            gdt_base: 0x500,
            idt_base: 0x520,
            cr3: 0x9000,
            stack_pointer: 0x8ff0,
        }
    }

    #[test]
    fn long_mode_entry() {
        let b = boot(BootProtocol::Linux64 { zero_page: 0x7000 });
        let r = boot_regs(&b);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100200, 0x7000, 0x8ff0, 2)
        );
        let mut s = kvm_sregs::default();
        boot_sregs(&b, &mut s);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.db, 0);
        assert_eq!(s.cs.limit, 0xffff_ffff);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
    }

    #[test]
    fn pvh_entry_is_32bit_without_paging() {
        let b = boot(BootProtocol::Pvh { start_info: 0x6000 });
        let r = boot_regs(&b);
        assert_eq!(r.rbx, 0x6000);
        let mut s = kvm_sregs::default();
        boot_sregs(&b, &mut s);
        assert_eq!((s.cs.l, s.cs.db, s.cs.selector), (0, 1, 0x08));
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        assert_eq!(s.ds.type_, 3);
        assert_eq!(s.tr.type_, 11);
    }
}
