//! Time as the domain sees it: microseconds since the Unix epoch, and the injectable clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// A point in time, microseconds since 1970-01-01T00:00:00Z (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
}
