//! The audit log (SPEC §10): every access to customer data — principal, method, profile ids,
//! outcome, time — appended to `<data_dir>/audit/audit.log`, one JSON object per line, each
//! entry carrying the SHA-256 of the previous one (a hash chain). No personal values are
//! written: profile ids are random UUIDs, methods and principals are names.
//!
//! Appends never wait for the disk: entries go to a writer thread that writes and `fdatasync`s
//! whatever queued up, at most every 200 ms, so an entry is durable within a second. When a
//! write fails (a full disk) the writer cuts the file back to its last whole entry and keeps
//! what it could not write for the next try; until one succeeds, [`AuditLog::failing`] says
//! why and the auth layer refuses audited calls, so no served call goes unrecorded.
//! [`verify`] recomputes the chain and names the first entry that does not match.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::time::Clock;

/// How often queued entries are written and synced.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How long a stopping writer keeps trying to write entries a failed write kept.
const STOP_RETRY: Duration = Duration::from_secs(5);
/// How often, within that interval, the writer links what is queued.
const LINK_EVERY: Duration = Duration::from_millis(10);

/// The fields of an entry that its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, microseconds since the epoch (UTC).
    pub at: i64,
    /// The principal's name.
    pub principal: String,
    /// The gRPC method (`/customer_profile.v1.ProfileService/GetProfile`).
    pub method: String,
    /// The profiles the call touched.
    pub profiles: Vec<String>,
    /// The gRPC status code name (`OK`, `PERMISSION_DENIED`).
    pub outcome: String,
    /// Hash of the previous entry (hex; 64 zeros for the first).
    pub prev: String,
}

/// An entry as stored: the entry and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// SHA-256 (hex) of the entry's canonical JSON.
    pub hash: String,
}

fn hash_of(entry: &Entry) -> String {
    // serde_json writes struct fields in declaration order: a canonical form.
    let json = serde_json::to_vec(entry).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What callers submit.
#[derive(Debug, Clone)]
pub struct Access {
    /// Principal name.
    pub principal: String,
    /// Method.
    pub method: String,
    /// Profile ids.
    pub profiles: Vec<String>,
    /// Status code name.
    pub outcome: String,
}

struct Chain {
    seq: u64,
    prev: String,
}

impl Chain {
    /// The next entry of the chain.
    /// Links the next entry and appends its line (the JSON of [`Stored`] and a newline) to
    /// `out`. The entry is serialized once: its canonical JSON is what the hash covers, and the
    /// stored line is that JSON with the hash as one more field at the end (what serde writes
    /// for `Stored`, whose entry is flattened before the hash; a test holds the two equal).
    fn append(&mut self, at: i64, access: Access, out: &mut Vec<u8>) {
        let entry = Entry {
            seq: self.seq + 1,
            at,
            principal: access.principal,
            method: access.method,
            profiles: access.profiles,
            outcome: access.outcome,
            prev: std::mem::take(&mut self.prev),
        };
        let json = serde_json::to_vec(&entry).unwrap_or_default();
        let hash = hex::encode(Sha256::digest(&json));
        let Some((b'}', fields)) = json.split_last() else {
            tracing::error!(
                "an audit entry did not serialize to a JSON object; it was not written"
            );
            self.prev = entry.prev;
            return;
        };
        out.extend_from_slice(fields);
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}\n");
        self.seq = entry.seq;
        self.prev = hash;
    }
}

/// The audit log of one data directory.
pub struct AuditLog {
    queue: Mutex<Option<mpsc::Sender<(i64, Access)>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    clock: std::sync::Arc<dyn Clock>,
    /// Why the last write of the log failed, while it keeps failing (see [`AuditLog::failing`]).
    failure: std::sync::Arc<Failure>,
}

/// Whether (and why) the log cannot be written: a flag the request path reads without a lock.
#[derive(Default)]
struct Failure {
    set: std::sync::atomic::AtomicBool,
    reason: Mutex<Option<String>>,
}

/// The log file of a data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.log")
}

impl AuditLog {
    /// Opens (or creates) the log, continuing the chain from its last entry.
    pub fn open(data_dir: &Path, clock: std::sync::Arc<dyn Clock>) -> std::io::Result<AuditLog> {
        let path = log_path(data_dir);
        let created = !path.exists();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if !created {
            drop_torn_tail(&path)?;
        }
        let mut chain = Chain {
            seq: 0,
            prev: GENESIS.to_string(),
        };
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            if let Some(last) = reader
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.trim().is_empty())
                .last()
            {
                if let Ok(s) = serde_json::from_str::<Stored>(&last) {
                    chain.seq = s.entry.seq;
                    chain.prev = s.hash;
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // The length up to the last whole entry: a failed append is cut back to it.
        let good = file.metadata()?.len();
        if created {
            // The new file's name (and the audit directory's) must survive a power loss too.
            file.sync_all()?;
            for dir in [path.parent(), path.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                crate::store::sync_dir(dir)?;
            }
        }
        let (tx, rx) = mpsc::channel::<(i64, Access)>();
        let failure = std::sync::Arc::new(Failure::default());
        let writer = {
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write_loop(file, good, chain, rx, &failure))?
        };
        Ok(AuditLog {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            clock,
            failure,
        })
    }

    /// Why the log cannot be written, while that lasts (a full disk, an I/O error). The entries
    /// that could not be written are kept and written, in order and chained, once a write
    /// succeeds; meanwhile calls that would add entries are refused (the auth layer asks here),
    /// so no access goes unrecorded and the kept entries stay few.
    pub fn failing(&self) -> Option<String> {
        if !self.failure.set.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.failure.reason.lock().clone()
    }

    /// Appends an entry (never waits for the disk). The time is taken here; the chain (sequence,
    /// previous hash, own hash) is built by the writer thread in queue order, so the request
    /// path neither hashes nor serializes nor contends on a chain lock.
    pub fn record(&self, access: Access) {
        let at = self.clock.now().0;
        if let Some(q) = self.queue.lock().as_ref() {
            if q.send((at, access)).is_err() {
                tracing::error!("audit writer has stopped; an audit entry was not written");
            }
        }
    }

    /// Writes and syncs everything queued, then stops the writer.
    pub fn close(&self) {
        self.queue.lock().take();
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Cuts a partly written last line off the log. A crash (SIGKILL, power loss) during an
/// append can leave a line without its newline; the next append would then continue that line,
/// making two entries unreadable and restarting the chain from the genesis hash. The torn
/// entry was never synced, so nothing acknowledged is lost by dropping it.
fn drop_torn_tail(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    // The length up to and including the last newline (0 when there is none).
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = len - keep,
            "the audit log ended in a partly written entry (a crash during an append); cut it off"
        );
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(())
}

fn write_loop(
    mut file: File,
    mut good: u64,
    mut chain: Chain,
    rx: mpsc::Receiver<(i64, Access)>,
    failure: &Failure,
) {
    let mut open = true;
    let mut lines = Vec::new();
    while open {
        match rx.recv_timeout(SYNC_EVERY) {
            Ok((at, access)) => chain.append(at, access, &mut lines),
            // Nothing new; entries kept from a failed write are tried again.
            Err(mpsc::RecvTimeoutError::Timeout) if !lines.is_empty() => {}
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Everything that arrives within the sync interval of the first entry shares one write
        // and one sync. Meanwhile the writer wakes every LINK_EVERY to link what came: linking
        // a whole interval at once was a burst of CPU (3,000 entries at 15,000 calls/s) that
        // the serving threads of a one-core server had to share the core with, the p99 of
        // reads at half load. It sleeps rather than waiting on the queue: a waiting receiver
        // must be woken by every send, a futex call and a context switch per audited request
        // on the serving path.
        let started = Instant::now();
        while open && started.elapsed() < SYNC_EVERY {
            std::thread::sleep(LINK_EVERY.min(SYNC_EVERY.saturating_sub(started.elapsed())));
            loop {
                match rx.try_recv() {
                    Ok((at, access)) => chain.append(at, access, &mut lines),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        write_or_keep(&mut file, &mut good, &mut lines, failure);
    }
    // Stopping with entries a failed write kept: tried again for a while (space may return).
    let give_up = Instant::now() + STOP_RETRY;
    while !lines.is_empty() && Instant::now() < give_up {
        std::thread::sleep(SYNC_EVERY);
        write_or_keep(&mut file, &mut good, &mut lines, failure);
    }
    if !lines.is_empty() {
        tracing::error!(
            bytes = lines.len(),
            "the audit log could not be written before stopping; its last entries are lost"
        );
    }
}

/// Appends `lines` and syncs. On failure the file is cut back to its last whole entry (a
/// partial append would leave a torn line the chain cannot pass) and the lines are kept for the
/// next try (about every 0.4 s), so the log on disk never skips an entry; `failure` says why
/// until a write succeeds.
fn write_or_keep(file: &mut File, good: &mut u64, lines: &mut Vec<u8>, failure: &Failure) {
    if lines.is_empty() {
        return;
    }
    // Never append after a torn fragment: the file must end at its last whole entry (a cut that
    // failed before is tried again first).
    let at_good = file.metadata().and_then(|m| {
        if m.len() == *good {
            Ok(())
        } else {
            file.set_len(*good)
        }
    });
    match at_good
        .and_then(|_| file.write_all(lines))
        .and_then(|_| file.sync_data())
    {
        Ok(()) => {
            *good += lines.len() as u64;
            lines.clear();
            if failure.reason.lock().take().is_some() {
                failure
                    .set
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::warn!("the audit log is written again; calls are served again");
            }
        }
        Err(e) => {
            let _ = file.set_len(*good);
            let mut reason = failure.reason.lock();
            if reason.is_none() {
                tracing::error!(error = %e, "cannot write the audit log; calls that read or change customer data are refused until it can be written");
            }
            *reason = Some(e.to_string());
            failure
                .set
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry links to the one before and matches its hash.
    Intact {
        /// Entries checked.
        entries: u64,
    },
    /// The first entry that does not.
    Broken {
        /// Line number, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Recomputes the chain of the log at `path`.
pub fn verify(path: &Path) -> std::io::Result<Verdict> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut n = 0u64;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let broken = |reason: String| {
            Ok(Verdict::Broken {
                line: line_no,
                reason,
            })
        };
        let Ok(text) = std::str::from_utf8(&line) else {
            return broken("not UTF-8".into());
        };
        let stored: Stored = match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => return broken(format!("unreadable entry: {e}")),
        };
        if stored.entry.seq != expected_seq {
            return broken(format!(
                "entry {} where {expected_seq} was expected (an entry is missing or moved)",
                stored.entry.seq
            ));
        }
        if stored.entry.prev != prev {
            return broken(format!(
                "entry {} does not link to the entry before it",
                stored.entry.seq
            ));
        }
        let h = hash_of(&stored.entry);
        if h != stored.hash {
            return broken(format!(
                "entry {} was changed: its content does not match its hash",
                stored.entry.seq
            ));
        }
        prev = h;
        expected_seq += 1;
        n += 1;
    }
    Ok(Verdict::Intact { entries: n })
}

/// Profile ids a handler touched, carried to the auth layer in the response extensions.
#[derive(Debug, Clone, Default)]
pub struct AuditIds(pub Vec<String>);

/// Set on a reply the overload limits gave without starting the call (RESOURCE_EXHAUSTED:
/// shed or rate limited). Such a call read and wrote nothing, so it is not an access to
/// personal data and is not written to the audit log: `grpc_requests_shed_total` counts it.
/// Logging each would make every refused call of a flood cost a log line.
#[derive(Debug, Clone, Copy)]
pub struct NotStarted;

/// The name of a gRPC status code (`0` → `OK`); a number outside the table is `UNKNOWN`, as
/// gRPC reads it. A table, not a formatted string: every call's metrics and log line name it.
pub fn code_name(code: i32) -> &'static str {
    use tonic::Code::*;
    match tonic::Code::from_i32(code) {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::{ManualClock, Timestamp};

    fn access(n: usize) -> Access {
        Access {
            principal: "local".into(),
            method: format!("/m/{n}"),
            profiles: Vec::new(),
            outcome: "OK".into(),
        }
    }

    /// The line the writer builds by hand is exactly serde's JSON of the stored entry, and its
    /// hash covers the entry's own JSON (what `verify` recomputes).
    #[test]
    fn an_appended_line_is_the_json_of_the_stored_entry() -> serde_json::Result<()> {
        let mut chain = Chain {
            seq: 41,
            prev: GENESIS.to_string(),
        };
        let mut out = Vec::new();
        let access = Access {
            principal: "ops \"night\" \u{e9}quipe\n".into(),
            method: "/customer_profile.v1.ProfileService/GetProfile".into(),
            profiles: vec!["018bcfe5-7f70-7639-aafe-47a59bc4089d".into(), "x\\y".into()],
            outcome: "OK".into(),
        };
        chain.append(-5, access.clone(), &mut out);
        chain.append(7, access, &mut out);
        let text = String::from_utf8(out).map_err(serde::de::Error::custom)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let mut prev = GENESIS.to_string();
        for (i, line) in lines.iter().enumerate() {
            let stored: Stored = serde_json::from_str(line)?;
            assert_eq!(stored.entry.seq, 42 + i as u64);
            assert_eq!(stored.entry.prev, prev);
            assert_eq!(stored.hash, hash_of(&stored.entry));
            assert_eq!(*line, serde_json::to_string(&stored)?);
            prev = stored.hash;
        }
        assert_eq!(chain.prev, prev);
        Ok(())
    }

    /// Regression (crash harness): a torn last line left by a crash during an append is cut
    /// off at the next open, and the chain continues intact from the last complete entry.
    #[test]
    fn a_torn_last_entry_is_cut_off_and_the_chain_continues() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let clock = std::sync::Arc::new(ManualClock::new(Timestamp(1_795_428_000_000_000)));
        let log = AuditLog::open(dir.path(), clock.clone())?;
        log.record(access(1));
        log.record(access(2));
        log.close();
        let path = log_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(br#"{"seq":3,"at":17954280"#)?;
        drop(f);

        let log = AuditLog::open(dir.path(), clock)?;
        log.record(access(3));
        log.close();
        assert_eq!(verify(&path)?, Verdict::Intact { entries: 3 });
        Ok(())
    }

    #[test]
    fn code_names_are_the_upper_snake_case_of_each_code() {
        for code in 0..=16 {
            let camel = format!("{:?}", tonic::Code::from_i32(code));
            let mut snake = String::new();
            for (i, c) in camel.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            assert_eq!(code_name(code), snake, "code {code}");
        }
        assert_eq!(code_name(17), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }
}
