//! A CMOS real-time clock (MC146818-compatible) at ports 0x70 (index) and
//! 0x71 (data): the time of day in BCD, 24-hour mode, from the host's clock
//! plus an offset the guest may set; no interrupts (register C reads 0).
//! Without it, Linux's rtc_cmos driver spends seconds probing a clock that
//! reads 0xff.

use std::time::{SystemTime, UNIX_EPOCH};

use address_space::BusDevice;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate; update-in-progress clear.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: 24-hour mode, BCD, no interrupts.
const REG_B_24H: u8 = 0x02;
/// Register B SET bit: the guest is writing the time; updates are frozen.
const REG_B_SET: u8 = 0x80;
/// Register B DM bit: binary (not BCD) data mode.
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time (battery good).
const REG_D_VRT: u8 = 0x80;

const CMOS_SIZE: usize = 128;

/// The CMOS RTC as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcSnapshot {
    /// The selected register.
    pub index: u8,
    /// The 128 bytes of CMOS RAM.
    pub ram: Vec<u8>,
    /// Guest time minus host time, in seconds.
    pub offset: i64,
}

/// The CMOS RTC and its 128 bytes of CMOS RAM.
pub struct CmosRtc {
    index: u8,
    ram: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset: i64,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::with_clock(host_now)
    }
}

impl CmosRtc {
    /// An RTC that follows the host's clock (UTC).
    pub fn new() -> Self {
        Self::default()
    }

    /// The index register, the CMOS RAM and the guest's offset from the
    /// host clock (snapshots).
    pub fn state(&self) -> RtcSnapshot {
        RtcSnapshot {
            index: self.index,
            ram: self.ram.to_vec(),
            offset: self.offset,
        }
    }

    /// Puts a saved state back; the time registers follow the host clock
    /// plus the saved offset from then on.
    pub fn restore(&mut self, s: &RtcSnapshot) -> Result<(), crate::DeviceError> {
        let ram: [u8; CMOS_SIZE] = s.ram.as_slice().try_into().map_err(|_| {
            crate::DeviceError::BadState(format!(
                "CMOS RTC: {} bytes of RAM saved, {CMOS_SIZE} expected",
                s.ram.len()
            ))
        })?;
        self.index = s.index;
        self.ram = ram;
        self.offset = s.offset;
        Ok(())
    }

    fn with_clock(now: fn() -> i64) -> Self {
        let mut ram = [0u8; CMOS_SIZE];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_24H;
        ram[usize::from(REG_D)] = REG_D_VRT;
        Self {
            index: 0,
            ram,
            offset: 0,
            now,
        }
    }

    fn binary(&self) -> bool {
        self.ram[usize::from(REG_B)] & REG_B_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0x0f)
        }
    }

    /// Refreshes the time registers from the clock (unless the guest is
    /// setting the time).
    fn refresh(&mut self) {
        if self.ram[usize::from(REG_B)] & REG_B_SET != 0 {
            return;
        }
        let t = (self.now)().saturating_add(self.offset);
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
        let weekday = (days + 4).rem_euclid(7) as u32 + 1;
        let fields = [
            (REG_SECONDS, secs % 60),
            (REG_MINUTES, secs / 60 % 60),
            (REG_HOURS, secs / 3600),
            (REG_WEEKDAY, weekday),
            (REG_DAY, day),
            (REG_MONTH, month),
            (REG_YEAR, year.rem_euclid(100) as u32),
            (REG_CENTURY, year.div_euclid(100).clamp(0, 99) as u32),
        ];
        for (reg, v) in fields {
            self.ram[usize::from(reg)] = self.encode(v);
        }
    }

    /// The guest finished setting the time: the new offset follows from
    /// the time registers.
    fn latch_guest_time(&mut self) {
        let r = |reg: u8| self.decode(self.ram[usize::from(reg)]);
        let year = i64::from(r(REG_CENTURY)) * 100 + i64::from(r(REG_YEAR));
        let (month, day) = (r(REG_MONTH), r(REG_DAY));
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return;
        }
        let days = days_from_civil(year, month, day);
        let secs = i64::from(r(REG_HOURS)) * 3600
            + i64::from(r(REG_MINUTES)) * 60
            + i64::from(r(REG_SECONDS));
        self.offset = days * 86_400 + secs - (self.now)();
    }

    fn read_data(&mut self) -> u8 {
        let reg = self.index;
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                self.refresh();
                self.ram[usize::from(reg)]
            }
            // No interrupt is ever pending.
            REG_C => 0,
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_data(&mut self, value: u8) {
        let reg = self.index;
        match reg {
            // Read-only status registers.
            REG_C | REG_D => {}
            // Update-in-progress is read-only; keep it clear.
            REG_A => self.ram[usize::from(REG_A)] = value & 0x7f,
            REG_B => {
                let was_set = self.ram[usize::from(REG_B)] & REG_B_SET != 0;
                if !was_set && value & REG_B_SET != 0 {
                    // Freeze the current time so a partial update starts from it.
                    self.refresh();
                }
                self.ram[usize::from(REG_B)] = value;
                if was_set && value & REG_B_SET == 0 {
                    self.latch_guest_time();
                }
            }
            _ => self.ram[usize::from(reg)] = value,
        }
    }
}

/// (year, month 1-12, day 1-31) of `days` since 1970-01-01 (proleptic
/// Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so that the leap day ends each 4-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a (year, month, day) date; the inverse of
/// [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.index,
            1 => self.read_data(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port is the NMI mask; it selects no register.
            0 => self.index = value & 0x7f,
            1 => self.write_data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23 22:24:33 UTC, a Monday.
    fn fixed() -> i64 {
        1_795_472_673
    }

    fn reg(rtc: &mut CmosRtc, r: u8) -> u8 {
        let mut b = [0u8];
        rtc.write(0, &[r]);
        rtc.read(1, &mut b);
        b[0]
    }

    fn set(rtc: &mut CmosRtc, r: u8, v: u8) {
        rtc.write(0, &[r | 0x80]); // with the NMI-mask bit, as Linux does
        rtc.write(1, &[v]);
    }

    #[test]
    fn reads_the_host_time_in_bcd() {
        let mut rtc = CmosRtc::with_clock(fixed);
        assert_eq!(reg(&mut rtc, REG_SECONDS), 0x33);
        assert_eq!(reg(&mut rtc, REG_MINUTES), 0x24);
        assert_eq!(reg(&mut rtc, REG_HOURS), 0x22);
        assert_eq!(reg(&mut rtc, REG_DAY), 0x23);
        assert_eq!(reg(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(reg(&mut rtc, REG_YEAR), 0x26);
        assert_eq!(reg(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut rtc, REG_WEEKDAY), 2); // Monday; Sunday is 1
        assert_eq!(reg(&mut rtc, REG_A) & 0x80, 0, "update in progress");
        assert_eq!(reg(&mut rtc, REG_D), REG_D_VRT);
        assert_eq!(reg(&mut rtc, REG_C), 0);
    }

    #[test]
    fn binary_mode_and_guest_set_time() {
        let mut rtc = CmosRtc::with_clock(fixed);
        set(&mut rtc, REG_B, REG_B_24H | REG_B_BINARY | REG_B_SET);
        // 2000-02-29 12:00:00.
        for (r, v) in [
            (REG_SECONDS, 0),
            (REG_MINUTES, 0),
            (REG_HOURS, 12),
            (REG_DAY, 29),
            (REG_MONTH, 2),
            (REG_YEAR, 0),
            (REG_CENTURY, 20),
        ] {
            set(&mut rtc, r, v);
        }
        set(&mut rtc, REG_B, REG_B_24H | REG_B_BINARY);
        assert_eq!(rtc.offset, 951_825_600 - fixed());
        assert_eq!(reg(&mut rtc, REG_DAY), 29);
        assert_eq!(reg(&mut rtc, REG_MONTH), 2);
        assert_eq!(reg(&mut rtc, REG_HOURS), 12);
        assert_eq!(reg(&mut rtc, REG_YEAR), 0);
    }

    #[test]
    fn cmos_ram_keeps_other_bytes_and_status_is_read_only() {
        let mut rtc = CmosRtc::with_clock(fixed);
        set(&mut rtc, 0x40, 0x5a);
        assert_eq!(reg(&mut rtc, 0x40), 0x5a);
        set(&mut rtc, REG_D, 0);
        assert_eq!(reg(&mut rtc, REG_D), REG_D_VRT);
        set(&mut rtc, REG_A, 0xa6);
        assert_eq!(reg(&mut rtc, REG_A), 0x26);
        let mut b = [0u8];
        rtc.read(0, &mut b);
        assert_eq!(b[0], REG_A, "index port reads back without the NMI bit");
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-719_468, -1, 0, 11_016, 20_415, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn state_round_trip_keeps_ram_and_guest_offset() {
        let mut a = CmosRtc::with_clock(fixed);
        set(&mut a, 0x30, 0x42); // a byte of plain CMOS RAM
        let mut s = a.state();
        s.offset = 3600;
        let mut b = CmosRtc::with_clock(fixed);
        b.restore(&s).unwrap();
        assert_eq!(b.state(), s);
        assert_eq!(reg(&mut b, 0x30), 0x42);
        // One hour ahead of the host clock (22:24 -> 23:24, BCD).
        assert_eq!(reg(&mut b, REG_HOURS), 0x23);
        s.ram.pop();
        assert!(b.restore(&s).unwrap_err().to_string().contains("127 bytes"));
    }
}
