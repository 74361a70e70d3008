//! The store mark: a small file beside sled's files recording a change sequence that was
//! already durable (`store.mark`). At open, a store that recovers to a lower sequence has lost
//! durable data and is refused as damaged.
//!
//! Why: sled 0.34 reads its log until the first message whose checksum fails and treats the
//! rest as a torn tail, so a flipped byte in the middle of `db`, a truncated `db` or an emptied
//! one opens "fine" with the later writes silently gone (found by the tests in
//! `tests/api/faults.rs`). The mark is what the store cannot lose without it being noticed.
//!
//! It is written at open, at most once per [`INTERVAL`] while writes happen (by its own thread,
//! from the durable figure group commit publishes, so it never runs ahead of stable storage),
//! and at close (exact). A crash loses at most the last interval of the mark's coverage; it
//! never makes the mark claim more than is durable. Written to a temporary file, synced,
//! renamed, then the directory synced.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::group_commit::Durable;
use crate::error::{Error, Result};

/// File name in the data directory.
pub const FILE: &str = "store.mark";
const HEADER: &str = "customer-profile store mark v1";
/// How often the mark follows durable writes.
pub const INTERVAL: Duration = Duration::from_secs(1);

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The durable change sequence the mark holds; `None` when there is no mark (a new directory,
/// or one written before marks existed).
pub fn read(dir: &Path) -> Result<Option<u64>> {
    let text = match std::fs::read(path(dir)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read {}: {e}",
                path(dir).display()
            )));
        }
    };
    let unreadable = || {
        Error::Corrupt(format!(
            "{} is unreadable; if the store itself is known to be intact, delete that file to accept it as it is",
            path(dir).display()
        ))
    };
    let text = std::str::from_utf8(&text).map_err(|_| unreadable())?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(unreadable());
    }
    lines
        .next()
        .and_then(|l| l.strip_prefix("change_seq "))
        .and_then(|n| n.parse().ok())
        .map(Some)
        .ok_or_else(unreadable)
}

/// Refuses a store that recovered to less than its mark.
pub fn check(dir: &Path, recovered_change_seq: u64) -> Result<()> {
    match read(dir)? {
        Some(marked) if marked > recovered_change_seq => Err(Error::Corrupt(format!(
            "its log ends at change {recovered_change_seq} but change {marked} was durable before \
             ({}): part of sled's log file `db` is unreadable or missing",
            path(dir).display()
        ))),
        _ => Ok(()),
    }
}

/// Records `change_seq` as durable.
pub fn write(dir: &Path, change_seq: u64) -> std::io::Result<()> {
    let text = format!("{HEADER}\nchange_seq {change_seq}\n");
    super::dir_sync::write_durably(&path(dir), text.as_bytes(), None)
}

/// The thread that keeps the mark following durability.
pub struct Marker {
    dir: PathBuf,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Marker {
    /// Writes the mark for what is durable now and starts following `durable`.
    pub fn start(dir: &Path, durable: watch::Receiver<Durable>) -> Result<Marker> {
        let dir = dir.to_path_buf();
        let mut written = durable.borrow().change_seq;
        write(&dir, written).map_err(|e| {
            Error::Unavailable(format!("cannot write {}: {e}", path(&dir).display()))
        })?;
        let (tx, rx) = mpsc::channel::<()>();
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("store-mark".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(INTERVAL) {
                    let now = durable.borrow().change_seq;
                    if now > written {
                        match write(&thread_dir, now) {
                            Ok(()) => written = now,
                            Err(e) => tracing::warn!(error = %e, "cannot update the store mark"),
                        }
                    }
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the store-mark thread: {e}")))?;
        Ok(Marker {
            dir,
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread and records `change_seq` (what is durable at close).
    pub fn close(&self, change_seq: u64) -> Result<()> {
        self.stop.lock().take();
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("store-mark thread panicked");
            }
        }
        write(&self.dir, change_seq).map_err(|e| {
            Error::Unavailable(format!("cannot write {}: {e}", path(&self.dir).display()))
        })
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        self.stop.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_below_its_mark_is_refused_and_a_garbled_mark_is_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(check(dir.path(), 0).is_ok(), "no mark: a new directory");
        write(dir.path(), 40).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(dir.path()).ok().flatten(), Some(40));
        assert!(check(dir.path(), 40).is_ok());
        assert!(check(dir.path(), 41).is_ok(), "the mark may lag");
        assert!(matches!(check(dir.path(), 39), Err(Error::Corrupt(_))));
        std::fs::write(dir.path().join(FILE), b"junk").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(check(dir.path(), 100), Err(Error::Corrupt(_))));
    }
}
