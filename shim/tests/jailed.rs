//! `jailer_path`: the driver launches altovirt through `altovirt-ozone`.
//! The VM runs in `/srv/zozone/altovirt/ID` as uid 65534 with no
//! capabilities; the driver reaches QMP through the jail, reports the
//! VMM's host pid and host vCPU thread ids, refuses block hotplug of host
//! images, keeps the console log in the run directory and removes the jail
//! when the VM stops.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use shim::config_load;
use shim::driver::{DriverError, Hypervisor};
use shim::hotplug::BlockDevice;

mod common;
use common::{altovirt, guest, target_debug};

/// Root is needed to jail (and KVM to boot); otherwise print why and skip,
/// except under CI=true or ALTOVIRT_REQUIRE_KVM=1.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if root && kvm {
        return true;
    }
    let must = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
    assert!(
        !must,
        "{test}: needs root and /dev/kvm (root {root}, kvm {kvm})"
    );
    eprintln!("SKIP {test}: needs root and /dev/kvm (root {root}, kvm {kvm})");
    false
}

fn ozone() -> PathBuf {
    let p = target_debug().join("altovirt-ozone");
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build -p ozone` with the same target dir",
        p.display()
    );
    p
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap()
}

#[test]
fn altovirt_runs_in_its_jail() {
    if !can_run("altovirt_runs_in_its_jail") {
        return;
    }
    let tag = format!("shim-jail-{}", std::process::id());
    let run = std::env::temp_dir().join(&tag);
    let images = std::env::temp_dir().join(format!("{tag}-images"));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&images).unwrap();
    let kernel = images.join("guest.elf");
    std::fs::copy(guest(), &kernel).unwrap();
    // Loaded from a Kata-style file, so that the keys are validated too.
    let file = images.join("configuration.toml");
    std::fs::write(
        &file,
        format!(
            "[hypervisor.stratovirt]\npath = \"{}\"\nkernel = \"{}\"\n\
             kernel_params = \"guest.exit=halt\"\ndefault_vcpus = 2\ndefault_memory = 64\n\
             jailer_path = \"{}\"\n",
            altovirt().expect("altovirt not built").display(),
            kernel.display(),
            ozone().display()
        ),
    )
    .unwrap();
    let cfg = config_load::load(&file).expect("configuration");
    assert_eq!(cfg.hypervisor.jailer_uid, 65534);
    let mut h = Hypervisor::new(&cfg, &tag, &run);
    let args = h.args();
    let after = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
    assert_eq!(after("-kernel"), "guest.elf");
    assert_eq!(after("-qmp"), "unix:qmp.socket,server,nowait");
    h.start().expect("jailed start");

    let jail = Path::new("/srv/zozone/altovirt").join(&tag);
    assert_eq!(h.spec().qmp_socket(), jail.join("qmp.socket"));
    assert!(jail.join("qmp.socket").exists() && jail.join("kata.hvsock").exists());
    let pid = h.pids()[0];
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let j = std::fs::metadata(&jail).unwrap();
    assert_eq!((root.dev(), root.ino()), (j.dev(), j.ino()));
    assert_eq!(h.status().unwrap(), "running");

    // vCPU thread ids are the host's: threads of the VMM named vcpuN.
    let tids = h.thread_ids().unwrap();
    assert_eq!(tids.len(), 2, "{tids:?}");
    for (i, tid) in &tids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_else(|e| panic!("vcpu {i}: thread {tid} is not the VMM's: {e}"));
        assert_eq!(comm.trim(), format!("vcpu{i}"));
    }

    // Host images are not visible in the jail: block hotplug is refused.
    assert!(!h.capabilities().block_device_hotplug);
    let img = images.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let dev = BlockDevice {
        id: "d1".into(),
        path: img,
        read_only: false,
        direct: false,
        slot: None,
    };
    assert!(matches!(
        h.hotplug_add_block(&dev),
        Err(DriverError::Unsupported { .. })
    ));

    // The guest's console goes to console.log in the jail; wait for its
    // last line before stopping.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(jail.join("console.log"))
        .unwrap_or_default()
        .contains("halting")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not halt"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = h.stop().unwrap().expect("exit status");
    assert!(status.success(), "{status:?}");
    assert!(!jail.exists(), "jail left behind");
    assert!(h.pids().is_empty());
    let console = std::fs::read_to_string(run.join("console.log")).unwrap_or_default();
    assert!(console.contains("altovirt-guest"), "console: {console:?}");
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&images);
}

#[test]
fn jailer_keys_are_validated() {
    let dir = std::env::temp_dir().join(format!("shim-jail-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("k");
    std::fs::write(&kernel, b"k").unwrap();
    let write = |extra: &str, section: &str| {
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            format!(
                "[hypervisor.{section}]\npath = \"/bin/sh\"\nkernel = \"{}\"\n{extra}\n",
                kernel.display()
            ),
        )
        .unwrap();
        config_load::load(&f)
    };
    let err = |extra: &str, section: &str| match write(extra, section) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{extra}: accepted: {:?}", c.hypervisor),
    };
    assert!(err("jailer_path = \"/nonexistent/ozone\"", "stratovirt")
        .contains("jailer_path: /nonexistent/ozone does not exist"));
    assert!(err("jailer_path = \"/bin/sh\"", "qemu").contains("jailer_path"));
    assert!(err(
        "jailer_path = \"/bin/sh\"\nvalid_jailer_paths = [\"/opt/*\"]",
        "stratovirt"
    )
    .contains("valid_jailer_paths"));
    assert!(err(
        "jailer_path = \"/bin/sh\"\nentropy_source = \"/dev/random\"",
        "stratovirt"
    )
    .contains("entropy_source"));
    let ok = write(
        "jailer_path = \"/bin/sh\"\njailer_uid = 1000\njailer_gid = 1001",
        "stratovirt",
    )
    .unwrap();
    assert_eq!(
        (ok.hypervisor.jailer_uid, ok.hypervisor.jailer_gid),
        (1000, 1001)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
