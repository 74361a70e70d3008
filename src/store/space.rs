//! The free-space guard: writes are refused (UNAVAILABLE) while the volume holding the data
//! directory has less free space than `storage.min_free_mb`, so the store stops taking writes
//! *before* sled runs out of space inside a flush (which faults the store until a restart).
//! Reads are not affected. Once space returns, the next write goes through: no restart.
//!
//! The figure comes from `statvfs` (space available to unprivileged users) and is cached for
//! [`RECHECK`], so a busy writer pays for one system call per interval, not per write.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// How long a free-space figure is trusted.
pub const RECHECK: Duration = Duration::from_millis(100);

const MIB: u64 = 1024 * 1024;

/// Checks free space on the data directory's volume before writes.
pub struct SpaceGuard {
    path: PathBuf,
    /// Required free bytes; 0 disables the guard.
    min_free: AtomicU64,
    /// Last figure: when it was taken and the free bytes it found.
    last: Mutex<Option<(Instant, u64)>>,
}

impl SpaceGuard {
    /// A guard for the volume holding `path` that wants `min_free_mb` MiB free (0: disabled).
    pub fn new(path: PathBuf, min_free_mb: u64) -> Self {
        SpaceGuard {
            path,
            min_free: AtomicU64::new(min_free_mb.saturating_mul(MIB)),
            last: Mutex::new(None),
        }
    }

    /// Sets the required free space, MiB (0 disables the guard). Takes effect on the next write.
    pub fn set_min_free_mb(&self, mb: u64) {
        self.min_free
            .store(mb.saturating_mul(MIB), Ordering::Relaxed);
        *self.last.lock() = None;
    }

    /// Free bytes on the volume, as of at most [`RECHECK`] ago.
    fn free_bytes(&self) -> Result<u64> {
        let mut last = self.last.lock();
        if let Some((at, free)) = *last {
            if at.elapsed() < RECHECK {
                return Ok(free);
            }
        }
        let st = rustix::fs::statvfs(&self.path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot read the free space of the volume holding {}: {e}",
                self.path.display()
            ))
        })?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        *last = Some((Instant::now(), free));
        Ok(free)
    }

    /// `Ok` when a write may go ahead; UNAVAILABLE, saying what to do, when space is short.
    pub fn check(&self) -> Result<()> {
        let min = self.min_free.load(Ordering::Relaxed);
        if min == 0 {
            return Ok(());
        }
        let free = self.free_bytes()?;
        if free >= min {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "disk almost full: {:.1} MiB free on the volume holding {}, below storage.min_free_mb = {} MiB; \
             writes are refused (reads go on) until space returns: free space or grow the volume",
            free as f64 / MIB as f64,
            self.path.display(),
            min / MIB
        )))
    }
}

/// Why a flush failed, for the store's fault: a full disk says what to do about it.
pub fn flush_failure(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "disk full while making writes durable ({e}); the store no longer acknowledges writes: \
             free space or grow the volume, then restart the server (a write refused with this \
             message may or may not be stored: retry it with the same request_id)"
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_below_its_threshold_and_not_when_off() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let guard = SpaceGuard::new(dir.path().to_path_buf(), 0);
        assert!(guard.check().is_ok(), "off by default");
        guard.set_min_free_mb(1 << 43);
        match guard.check() {
            Err(Error::Unavailable(m)) => {
                assert!(m.contains("disk almost full"), "{m}");
                assert!(m.contains(&dir.path().display().to_string()), "{m}");
            }
            other => panic!("{other:?}"),
        }
        guard.set_min_free_mb(1);
        assert!(
            guard.check().is_ok(),
            "a new threshold is not hidden by the cache"
        );
        guard.set_min_free_mb(0);
        assert!(guard.check().is_ok());
    }

    #[test]
    fn a_full_disk_in_a_flush_says_what_to_do() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(flush_failure(&full).contains("restart the server"));
        let other = std::io::Error::other("boom");
        assert_eq!(flush_failure(&other), "boom");
    }
}
