//! Time formatting without a date crate: Frappe's `"YYYY-MM-DD HH:MM:SS.ffffff"` stamps (UTC
//! here; Frappe uses the site time zone, and callers must treat them as opaque) and HTTP dates
//! for cookie `Expires`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Hands out strictly increasing `modified` stamps, so two saves within one microsecond
/// still differ, as the gateway's sync compares stamps for equality.
#[derive(Default)]
pub(super) struct Clock {
    last_micros: u64,
}

impl Clock {
    pub fn stamp(&mut self) -> String {
        let now = micros_since_epoch(SystemTime::now());
        self.last_micros = now.max(self.last_micros + 1);
        frappe_datetime(self.last_micros)
    }

    pub fn today(&self) -> String {
        let (y, m, d) = civil_from_days(days_since_epoch(SystemTime::now()));
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

fn days_since_epoch(t: SystemTime) -> i64 {
    (t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400) as i64
}

fn frappe_datetime(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros % 1_000_000
    )
}

/// `Sat, 05 Dec 2026 17:10:17 GMT` for `now + offset` (offset may be negative).
pub(super) fn http_date_from_now(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let rem = secs % 86_400;
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
