//! `tsckhz`: prints the host's TSC frequency in kHz, measured against the
//! monotonic clock (the median of seven 100 ms samples). The rig passes it to L1 as `tsc_early_khz=`: under
//! TCG the guest's TSC is the host's, and L1's own calibration against the
//! PIT fails when the host is busy (the guest is descheduled between PIT
//! reads), after which Linux has no reference timer on a microvm (no HPET,
//! no ACPI PM timer), marks the TSC unusable and hangs before its first
//! message. Built by scripts/rig/run.sh with rustc; not part of the
//! workspace.

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// One sample: TSC ticks and nanoseconds over `span`, each end read as a
/// (clock, tsc, clock) triple so a preemption in between shows up as a wide
/// bracket and the sample can be discarded.
fn sample(span: Duration) -> Option<f64> {
    fn bracket() -> Option<(Instant, u64)> {
        let t0 = Instant::now();
        // SAFETY: rdtsc has no preconditions on x86_64.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        let t1 = Instant::now();
        (t1 - t0 < Duration::from_micros(50)).then_some((t0 + (t1 - t0) / 2, tsc))
    }
    let (a_t, a_tsc) = bracket()?;
    std::thread::sleep(span);
    let (b_t, b_tsc) = bracket()?;
    let ns = (b_t - a_t).as_nanos() as f64;
    Some((b_tsc.wrapping_sub(a_tsc)) as f64 / ns * 1e6)
}

fn main() -> ExitCode {
    let mut khz: Vec<f64> = (0..7)
        .filter_map(|_| sample(Duration::from_millis(100)))
        .collect();
    if khz.len() < 3 {
        eprintln!("tsckhz: could not measure the TSC (the host is too busy)");
        return ExitCode::from(1);
    }
    khz.sort_by(f64::total_cmp);
    println!("{}", khz[khz.len() / 2].round() as u64);
    ExitCode::SUCCESS
}
