//! Building the tiny guests of `tests/guests/` with gcc, shared by two
//! build scripts: altovirt's (the demo guest only, the ELF64 image booted
//! when no `-kernel` is given) and the `test_guests` crate's (every image,
//! for the tests). Included with `#[path]`; not a crate of its own.
//!
//! gcc (with binutils) is required; without it the build fails with a
//! one-line message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// The sources every image is built from.
pub const GUEST_SOURCES: &[&str] = &[
    "guest.c",
    "entry64.S",
    "entry_pvh.S",
    "ap_tramp.S",
    "guest.lds.S",
];

/// Flags for freestanding 64-bit guest code: no libc, no SSE (the VMM does
/// not enable it), no red zone, absolute addressing below 2 GiB.
const CFLAGS: &str = "-m64 -O2 -Wall -Wextra -ffreestanding -fno-builtin -fno-pic -fno-pie \
    -mcmodel=small -mno-red-zone -mgeneral-regs-only -mno-mmx -mno-sse \
    -fno-stack-protector -fno-asynchronous-unwind-tables";
const LDFLAGS: &[&str] = &["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"];

/// Where the flat protected-mode part is linked and loaded.
const LOAD_ADDR: u64 = 0x10_0000;
/// Offset of the 64-bit entry inside the protected-mode part.
const ENTRY64_OFFSET: u64 = 0x200;
/// Setup sectors after the boot sector: the setup part is (1 + 1) * 512 bytes.
const SETUP_SECTS: u8 = 1;

/// Prints one line explaining why the guests could not be built and fails
/// the build script.
pub fn fail(msg: &str) -> ! {
    eprintln!("error: cannot build the tiny guests in tests/guests: {msg}");
    exit(1);
}

/// Runs gcc with `args`; fails the build with gcc's own error on one line.
fn gcc(args: &[&str]) {
    let out = Command::new("gcc")
        .args(args)
        .output()
        .unwrap_or_else(|e| fail(&format!("gcc is required but could not be run: {e}")));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let cmd = args.join(" ");
        fail(&format!(
            "gcc is required and `gcc {cmd}` failed: {}",
            lines.join(" | ")
        ));
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| fail(&format!("path {} is not UTF-8", p.display())))
}

/// Where the guest sources are and where the objects and images go.
struct Build {
    src: PathBuf,
    out: PathBuf,
}

impl Build {
    /// Compiles or assembles `src` into `<out>/<obj>`.
    fn compile(&self, src: &str, obj: &str, defines: &[&str]) -> PathBuf {
        let (src, obj) = (self.src.join(src), self.out.join(obj));
        let mut args: Vec<&str> = CFLAGS.split_whitespace().collect();
        args.extend_from_slice(defines);
        args.extend_from_slice(&["-c", path_str(&src), "-o", path_str(&obj)]);
        gcc(&args);
        obj
    }

    /// Preprocesses the linker script template into `<out>/<name>`.
    fn linker_script(&self, name: &str, defines: &[&str]) -> PathBuf {
        let (src, script) = (self.src.join("guest.lds.S"), self.out.join(name));
        let mut args = vec!["-E", "-P", "-undef", "-x", "c"];
        args.extend_from_slice(defines);
        args.extend_from_slice(&[path_str(&src), "-o", path_str(&script)]);
        gcc(&args);
        script
    }

    /// Links `objs` with `script` into `<out>/<name>`.
    fn link(&self, name: &str, script: &Path, objs: &[&Path]) -> PathBuf {
        let image = self.out.join(name);
        let script_arg = format!("-Wl,-T,{}", path_str(script));
        let mut args: Vec<&str> = LDFLAGS.to_vec();
        args.push(&script_arg);
        args.extend_from_slice(&["-o", path_str(&image)]);
        args.extend(objs.iter().map(|o| path_str(o)));
        gcc(&args);
        image
    }
}

fn le_u16(b: &[u8], off: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[off], b[off + 1]]))
}
fn le_u32(b: &[u8], off: usize) -> u64 {
    u64::from(u32::from_le_bytes([
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
    ]))
}
fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(bytes)
}

/// The single `PT_LOAD` segment of a linked guest: (file bytes, memory size).
fn load_segment(elf: &[u8]) -> (&[u8], u64) {
    const PT_LOAD: u64 = 1;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        fail("the linked bzImage payload is not an ELF64 file");
    }
    if le_u64(elf, 0x18) != LOAD_ADDR + ENTRY64_OFFSET {
        fail("the bzImage payload's 64-bit entry is not at load address + 0x200");
    }
    let (phoff, phentsize, phnum) = (le_u64(elf, 0x20), le_u16(elf, 0x36), le_u16(elf, 0x38));
    let mut loads = (0..phnum)
        .map(|i| (phoff + i * phentsize) as usize)
        .filter(|&ph| ph + 56 <= elf.len() && le_u32(elf, ph) == PT_LOAD);
    let (Some(ph), None) = (loads.next(), loads.next()) else {
        fail("the bzImage payload must have exactly one PT_LOAD segment");
    };
    let (offset, paddr) = (le_u64(elf, ph + 8) as usize, le_u64(elf, ph + 0x18));
    let (filesz, memsz) = (le_u64(elf, ph + 0x20) as usize, le_u64(elf, ph + 0x28));
    if paddr != LOAD_ADDR || offset + filesz > elf.len() {
        fail("the bzImage payload's PT_LOAD segment is not at 1 MiB");
    }
    (&elf[offset..offset + filesz], memsz)
}

/// The setup part of the bzImage: boot sector and one setup sector holding
/// the boot protocol header (Documentation/x86/boot.rst). Nothing runs it:
/// its jump leads to a `cli; hlt` loop.
fn setup_part(payload_len: u64, mem_size: u64) -> Vec<u8> {
    let mut s = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    let mut put = |off: usize, bytes: &[u8]| s[off..off + bytes.len()].copy_from_slice(bytes);
    let init_size = (mem_size.max(payload_len) + 0xfff) & !0xfff;
    put(0x1f1, &[SETUP_SECTS]); // setup_sects
    put(0x1f4, &((payload_len.div_ceil(16)) as u32).to_le_bytes()); // syssize
    put(0x1fa, &0xffffu16.to_le_bytes()); // vid_mode: normal
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(0x200, &[0xeb, 0x6e]); // jmp 0x270, past the header
    put(0x202, b"HdrS"); // header
    put(0x206, &0x020fu16.to_le_bytes()); // version 2.15
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x214, &(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    put(0x22c, &0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(0x234, &[0]); // relocatable_kernel: no
    put(0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x258, &LOAD_ADDR.to_le_bytes()); // pref_address
    put(0x260, &(init_size as u32).to_le_bytes()); // init_size
    put(0x270, &[0xfa, 0xf4, 0xeb, 0xfd]); // cli; 1: hlt; jmp 1b
    s
}

/// Writes the bzImage: setup part followed by the protected-mode part.
fn write_bzimage(payload_elf: &Path, image: &Path) {
    let elf = fs::read(payload_elf)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", payload_elf.display())));
    let (payload, mem_size) = load_segment(&elf);
    let mut bz = setup_part(payload.len() as u64, mem_size);
    bz.extend_from_slice(payload);
    fs::write(image, bz)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", image.display())));
}

/// The images [`build`] made.
pub struct Images {
    /// ELF64 with a 64-bit entry (Linux 64-bit boot protocol, RSI =
    /// `boot_params`); also the demo guest.
    pub elf64: PathBuf,
    /// The same program with a Xen PVH note (32-bit entry, EBX =
    /// `hvm_start_info`), when asked for.
    pub pvh: Option<PathBuf>,
    /// A bzImage: a 1 KiB setup part (a boot protocol 2.15 header, written
    /// here) followed by the flat protected-mode part, whose offset 0x200
    /// is the 64-bit entry; when asked for.
    pub bzimage: Option<PathBuf>,
}

/// Builds the ELF64 image from the sources in `src` into `out`, and with
/// `all` the PVH and bzImage images too. Tells cargo to rebuild when a
/// source changes.
pub fn build(src: &Path, out: &Path, all: bool) -> Images {
    for file in GUEST_SOURCES {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }
    println!("cargo:rerun-if-changed={}", src.display());
    let b = Build {
        src: src.to_path_buf(),
        out: out.to_path_buf(),
    };
    let guest = b.compile("guest.c", "guest.o", &[]);
    let tramp = b.compile("ap_tramp.S", "ap_tramp.o", &[]);
    let entry_elf64 = b.compile("entry64.S", "entry64-elf64.o", &["-DBOOT_KIND=0"]);
    let plain_ld = b.linker_script("guest.ld", &[]);
    let elf64 = b.link(
        "guest-elf64.elf",
        &plain_ld,
        &[&entry_elf64, &guest, &tramp],
    );
    if !all {
        return Images {
            elf64,
            pvh: None,
            bzimage: None,
        };
    }
    let entry_bz = b.compile("entry64.S", "entry64-bzimage.o", &["-DBOOT_KIND=2"]);
    let entry_pvh = b.compile("entry_pvh.S", "entry_pvh.o", &[]);
    let pvh_ld = b.linker_script("guest-pvh.ld", &["-DPVH_NOTE"]);
    let pvh = b.link("guest-pvh.elf", &pvh_ld, &[&entry_pvh, &guest, &tramp]);
    let bz_elf = b.link(
        "guest-bzimage-payload.elf",
        &plain_ld,
        &[&entry_bz, &guest, &tramp],
    );
    let bzimage = b.out.join("guest-bzimage.bin");
    write_bzimage(&bz_elf, &bzimage);
    Images {
        elf64,
        pvh: Some(pvh),
        bzimage: Some(bzimage),
    }
}
