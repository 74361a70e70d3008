//! Time as the domain sees it: microseconds since the Unix epoch, and the injectable clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// A point in time, microseconds since 1970-01-01T00:00:00Z (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Microseconds in one second.
    pub const MICROS_PER_SEC: i64 = 1_000_000;

    /// From whole seconds and nanoseconds (sub-microsecond precision is dropped).
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Self> {
        seconds
            .checked_mul(Self::MICROS_PER_SEC)
            .and_then(|m| m.checked_add(i64::from(nanos) / 1_000))
            .map(Timestamp)
    }

    /// Whole seconds and nanoseconds, for the wire.
    pub fn to_parts(self) -> (i64, i32) {
        let secs = self.0.div_euclid(Self::MICROS_PER_SEC);
        let micros = self.0.rem_euclid(Self::MICROS_PER_SEC);
        // rem_euclid is in 0..1_000_000, so the product fits an i32.
        (secs, (micros * 1_000) as i32)
    }

    /// This time plus a duration in microseconds (saturating).
    pub fn plus_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }

    /// This time plus whole seconds (saturating).
    pub fn plus_secs(self, secs: i64) -> Self {
        self.plus_micros(secs.saturating_mul(Self::MICROS_PER_SEC))
    }
}

impl Timestamp {
    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        self.plus_micros(d.0)
    }

    /// This time minus a duration (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.0))
    }

    /// The same wall-clock time `months` calendar months later (UTC); the day is clamped to
    /// the end of a shorter month (31 January + 1 month = 28/29 February).
    pub fn plus_months(self, months: u32) -> Self {
        const DAY: i64 = 86_400 * Timestamp::MICROS_PER_SEC;
        let days = self.0.div_euclid(DAY);
        let within = self.0.rem_euclid(DAY);
        let (y, m, d) = civil_from_days(days);
        let total = y * 12 + (m - 1) + i64::from(months);
        let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        let nd = d.min(days_in_month(ny, nm));
        Timestamp(
            super::attributes::days_from_civil(ny, nm, nd)
                .saturating_mul(DAY)
                .saturating_add(within),
        )
    }
}

/// Days in a month of the proleptic Gregorian calendar.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) of a day number counted from 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A span of time in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Duration(pub i64);

impl Duration {
    /// Whole seconds.
    pub const fn secs(s: i64) -> Self {
        Duration(s * Timestamp::MICROS_PER_SEC)
    }
    /// Whole hours.
    pub const fn hours(h: i64) -> Self {
        Duration::secs(h * 3600)
    }
    /// Whole days.
    pub const fn days(d: i64) -> Self {
        Duration::secs(d * 86_400)
    }
    /// Fractional days, rounded to the microsecond.
    pub fn from_days_f64(d: f64) -> Self {
        Duration((d * 86_400.0 * Timestamp::MICROS_PER_SEC as f64).round() as i64)
    }
    /// In seconds, fractional.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / Timestamp::MICROS_PER_SEC as f64
    }
}

/// Where "now" comes from. Production uses [`SystemClock`]; tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    /// Moves the time forward by `secs` seconds.
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(
            secs.saturating_mul(Timestamp::MICROS_PER_SEC),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_including_negative_times() {
        for micros in [0, 1, -1, 1_500_000, -1_500_000, 1_700_000_000_123_456] {
            let t = Timestamp(micros);
            let (s, n) = t.to_parts();
            assert!((0..1_000_000_000).contains(&n));
            assert_eq!(Timestamp::from_parts(s, n), Some(t));
        }
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        let at = |y, m, d| {
            Timestamp(super::super::attributes::days_from_civil(y, m, d) * 86_400_000_000 + 5)
        };
        assert_eq!(at(2026, 11, 23).plus_months(12), at(2027, 11, 23));
        assert_eq!(at(2026, 11, 23).plus_months(24), at(2028, 11, 23));
        assert_eq!(at(2027, 1, 31).plus_months(1), at(2027, 2, 28));
        assert_eq!(at(2028, 1, 31).plus_months(1), at(2028, 2, 29));
        assert_eq!(at(2026, 12, 15).plus_months(2), at(2027, 2, 15));
        for z in [-1_000_000, -1, 0, 1, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(super::super::attributes::days_from_civil(y, m, d), z);
        }
    }
}
