//! The ACPI power button with Debian's kernel (a): QMP `system_powerdown`
//! raises the GED's interrupt, the DSDT's `_EVT` notifies the `PNP0C0C`
//! button and Linux reports `KEY_POWER` on its input device
//! (scenarios `a_powerdown` and `a_powerdown_ignored` in
//! scripts/rig/l1-init.sh).

use crate::harness::*;

/// The events the QMP listener in L1 received, by name, in order.
fn event_names(sc: &Scenario) -> Vec<String> {
    sc.all("event")
        .iter()
        .filter_map(|e| {
            let rest = e.strip_prefix("\"event\":\"")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// The power button device Linux's button driver made of `PNP0C0C`.
fn assert_button_driver_bound(sc: &Scenario, ctx: &str) {
    let dev = sc
        .guest("PWRBTN-DEVICE")
        .unwrap_or_else(|| panic!("no \"Power Button\" input device in L2:\n{ctx}"));
    assert!(
        dev.starts_with("PNP0C0C/button/input") && dev.contains(" event"),
        "power button device {dev:?}:\n{ctx}"
    );
    assert!(
        !sc.console.iter().any(|l| l.starts_with("L2-INSMOD-FAILED")),
        "a module failed to load:\n{ctx}"
    );
}

#[test]
fn rig_system_powerdown_makes_linux_power_off_through_acpid() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "a_powerdown");
    report_timing("a_powerdown", sc);
    eprintln!(
        "rig a_powerdown: system_powerdown to altovirt's exit {} ms (L1 clock, QMP client included)",
        sc.get("press-to-exit-ms").unwrap_or("?")
    );
    let ctx = sc.context();
    assert_button_driver_bound(sc, &ctx);
    assert!(
        sc.guest("ACPID")
            .is_some_and(|v| v.contains("/dev/input/event")),
        "acpid holds no input device:\n{ctx}"
    );
    // The command is accepted while the guest runs.
    let replies = sc.all("qmp-powerdown");
    assert!(
        replies.iter().filter(|r| **r == r#"{"return":{}}"#).count() == 2,
        "system_powerdown replies {replies:?}:\n{ctx}"
    );
    // The GED's interrupt reached Linux (IOAPIC pin 3, edge) once, and
    // acpid got KEY_POWER and ran its handler.
    let pressed = sc
        .guest("PWRBTN-PRESSED")
        .unwrap_or_else(|| panic!("acpid never ran the power button handler:\n{ctx}"));
    assert!(
        pressed.contains("IO-APIC 3-edge ACPI:Ged"),
        "GED interrupt line {pressed:?}:\n{ctx}"
    );
    let count: u64 = pressed
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse::<u64>().ok())
        .sum();
    assert_eq!(count, 1, "GED interrupts {pressed:?}:\n{ctx}");
    assert!(
        sc.console.iter().any(|l| l == "acpid: PWRF/00000080"),
        "acpid did not report the power button:\n{ctx}"
    );
    // poweroff -f: S5, SHUTDOWN from the guest, exit 0.
    assert!(sc.get("timeout").is_none(), "altovirt kept running:\n{ctx}");
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    assert_eq!(event_names(sc), ["POWERDOWN", "SHUTDOWN"], "{ctx}");
    let shutdown = shutdown_events(sc);
    assert!(
        shutdown[0].contains(r#""guest":true"#)
            && shutdown[0].contains(r#""reason":"guest-shutdown""#),
        "SHUTDOWN {shutdown:?}:\n{ctx}"
    );
}

#[test]
fn rig_a_guest_that_ignores_the_power_button_keeps_running_until_quit() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "a_powerdown_ignored");
    report_timing("a_powerdown_ignored", sc);
    let ctx = sc.context();
    assert_button_driver_bound(sc, &ctx);
    // The press arrived (the GED interrupt count went from 0 to 1)...
    let ticks = sc.guest_all("TICK");
    assert!(
        ticks.first().is_some_and(|t| t.ends_with(" ged=0")),
        "ticks before the press {ticks:?}:\n{ctx}"
    );
    assert!(
        sc.get("no-ged-irq").is_none() && ticks.iter().any(|t| t.ends_with(" ged=1")),
        "the GED interrupt never reached the guest:\n{ctx}"
    );
    // ... nobody acted on it: the guest kept printing for 2 s more (a tick
    // every 0.2 s), QMP still answered "running", and only quit ended it.
    let after: u32 = sc
        .get("ticks-after-powerdown")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tick count after the press:\n{ctx}"));
    assert!(after >= 3, "{after} ticks in 2 s after the press:\n{ctx}");
    let replies = sc.all("qmp-status-quit");
    assert!(
        replies.contains(&r#"{"return":{"running":true,"singlestep":false,"status":"running"}}"#),
        "query-status after the press {replies:?}:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    assert_eq!(event_names(sc), ["POWERDOWN", "SHUTDOWN"], "{ctx}");
    assert!(
        shutdown_events(sc)[0].contains(r#""reason":"host-qmp-quit""#),
        "{ctx}"
    );
}
