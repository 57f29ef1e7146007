//! `altovirt-shim check` and `env` on this host.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_altovirt-shim");

fn altovirt() -> PathBuf {
    PathBuf::from(BIN).parent().unwrap().join("altovirt")
}

#[test]
fn check_reports_kvm_and_boots_as_root() {
    let out = Command::new(BIN)
        .args(["check", "--verbose", "--vmm"])
        .arg(altovirt())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("KVM_CAP_IMMEDIATE_EXIT: supported"), "{so}");
    assert!(so.contains("/dev/kvm: readable and writable"), "{so}");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if cpuinfo.contains(" hypervisor") && !cpuinfo.contains(" vmx") && !cpuinfo.contains(" svm") {
        assert!(so.contains("nested/paravirtual KVM"), "{so}");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(so.contains("can create microVMs"), "{so}");
    }
}

#[test]
fn check_fails_with_reason_when_vmm_cannot_boot() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let out = Command::new(BIN)
        .args(["check", "--vmm", "/bin/false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        se.contains("NOT capable") && se.contains("boot built-in guest"),
        "{se}"
    );
}

#[test]
fn env_toml_and_json() {
    let dir = std::env::temp_dir().join(format!("shim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("configuration.toml");
    std::fs::write(
        &cfg,
        format!(
            "[hypervisor.stratovirt]\npath = \"{0}\"\nkernel = \"{0}\"\ndefault_memory = 256\n",
            BIN
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["env", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["config"]["hypervisor"]["stratovirt"]["default_memory"],
        256
    );
    assert!(v["host"]["kernel_version"]
        .as_str()
        .unwrap()
        .starts_with("Linux version"));
    assert!(v["host"]["memory_kib"].as_u64().unwrap() > 0);
    assert!(v["host"]["cpu"]["count"].as_u64().unwrap() > 0);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("env")
        .output()
        .unwrap();
    assert!(out.status.success());
    let t: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    assert_eq!(
        t["runtime_config"]["path"].as_str().unwrap(),
        cfg.to_str().unwrap()
    );
    // Without any configuration file, env still reports the host and the reason.
    let out = Command::new(BIN)
        .env("KATA_CONF_FILE", dir.join("none.toml"))
        .args(["env", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["runtime_config"]["error"]
        .as_str()
        .unwrap()
        .contains("none.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}
