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
//! A full file is closed under the sequence of its first entry and the chain continues in a new
//! one; the oldest closed files past a number kept are deleted ([`Rotation`]).
//! [`verify`] recomputes the chain across the files and names the first entry that does not
//! match.

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
    /// Before the first entry.
    fn genesis() -> Chain {
        Chain {
            seq: 0,
            prev: GENESIS.to_string(),
        }
    }

    /// Continuing after `last`.
    fn after(last: Stored) -> Chain {
        Chain {
            seq: last.entry.seq,
            prev: last.hash,
        }
    }

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
    /// The active file (the closed ones and the chain state sit beside it).
    path: PathBuf,
}

/// Whether (and why) the log cannot be written: a flag the request path reads without a lock.
#[derive(Default)]
struct Failure {
    set: std::sync::atomic::AtomicBool,
    reason: Mutex<Option<String>>,
}

/// When the log moves on to a new file, and how many closed files it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Once the active file (`audit.log`) holds at least this many bytes it is closed, renamed
    /// `audit.log.<seq of its first entry, 20 digits>` and a new `audit.log` continues the chain
    /// (0: never).
    pub max_file_bytes: u64,
    /// Closed files kept; past this many the oldest are deleted (0: every one is kept).
    pub keep_files: usize,
}

/// The log file of a data directory (the active one; closed ones sit beside it, see
/// [`Rotation`]).
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.log")
}

/// The name a closed file takes: the active file's name, a dot, and the sequence of its first
/// entry in 20 digits, so that name order is chain order.
fn rotated_path(active: &Path, first_seq: u64) -> PathBuf {
    let mut name = active.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first_seq:020}"));
    active.with_file_name(name)
}

/// The closed files beside `active`, oldest first, with the sequence their name says they
/// start at.
pub fn rotated_files(active: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let Some(dir) = active.parent() else {
        return Ok(Vec::new());
    };
    let prefix = format!(
        "{}.",
        active.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(digits) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = digits.parse::<u64>() {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The last whole entry of a file (`None` for a missing or empty file), read from its end. An
/// unreadable last line is an error: continuing from an earlier entry would fork the chain.
fn last_entry(path: &Path) -> std::io::Result<Option<Stored>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Entries are a few hundred bytes; one naming a thousand profiles is about 40 KiB.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => return parse_line(path, "last", &body[i + 1..]),
            None if start == 0 => return parse_line(path, "last", body),
            None => window = window.saturating_mul(4),
        }
    }
}

/// A line of a log file: `None` when blank, an error naming the file when unreadable.
fn parse_line(path: &Path, which: &str, line: &[u8]) -> std::io::Result<Option<Stored>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the {which} entry of {} is unreadable ({e}); `customer-profile audit-verify` checks the log; move the damaged file aside to go on with a new chain",
                path.display()
            ),
        )
    })
}

/// The sequence of a file's first entry (`None` for a missing or empty file).
fn first_entry_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut line = Vec::new();
    BufReader::new(file).read_until(b'\n', &mut line)?;
    Ok(parse_line(path, "first", &line)?.map(|s| s.entry.seq))
}

/// What the log's files alone cannot say once files are closed and deleted, kept durably in
/// `chain-state.json` beside them: where the chain stood when the newest file was closed (so a
/// restart continues it even when the closed files were moved away and the active file is still
/// empty), and where the kept chain begins (so `verify` can tell retention's deletions from
/// entries cut off the start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// The last entry of the most recently closed file.
    pub head_seq: u64,
    /// Its hash.
    pub head_hash: String,
    /// The first entry kept (1 until retention deletes a file).
    pub start_seq: u64,
    /// The hash that entry links to (the genesis hash for entry 1).
    pub start_prev: String,
}

impl Default for ChainState {
    fn default() -> Self {
        ChainState {
            head_seq: 0,
            head_hash: GENESIS.to_string(),
            start_seq: 1,
            start_prev: GENESIS.to_string(),
        }
    }
}

fn state_path(active: &Path) -> PathBuf {
    active.with_file_name("chain-state.json")
}

/// The log's [`ChainState`] (`None` for a log that never rotated).
pub fn read_state(active: &Path) -> std::io::Result<Option<ChainState>> {
    let path = state_path(active);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is unreadable: {e}", path.display()),
        )
    })
}

fn write_state(active: &Path, state: &ChainState) -> std::io::Result<()> {
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    crate::store::write_durably(&state_path(active), &json, None)
}

impl AuditLog {
    /// Opens (or creates) the log, continuing the chain from its last entry: the active file's,
    /// or while it is still empty after a rotation, the newest closed file's or the recorded
    /// head (the closed files may have been moved away), whichever is later.
    pub fn open(
        data_dir: &Path,
        clock: std::sync::Arc<dyn Clock>,
        rotation: Rotation,
    ) -> std::io::Result<AuditLog> {
        let path = log_path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            drop_torn_tail(&path)?;
        }
        let state = read_state(&path)?.unwrap_or_default();
        let chain = match last_entry(&path)? {
            Some(last) => Chain::after(last),
            None => {
                let closed = match rotated_files(&path)?.last() {
                    Some((_, newest)) => last_entry(newest)?,
                    None => None,
                };
                let closed = closed.map_or_else(Chain::genesis, Chain::after);
                if state.head_seq > closed.seq {
                    Chain {
                        seq: state.head_seq,
                        prev: state.head_hash.clone(),
                    }
                } else {
                    closed
                }
            }
        };
        let mut sink = Sink {
            first_seq: first_entry_seq(&path)?.unwrap_or(chain.seq + 1),
            path: path.clone(),
            file: None,
            good: 0,
            sync_owed: false,
            state,
            rotation,
        };
        sink.file()?;
        let (tx, rx) = mpsc::channel::<(i64, Access)>();
        let failure = std::sync::Arc::new(Failure::default());
        let writer = {
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write_loop(sink, chain, rx, &failure))?
        };
        Ok(AuditLog {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            clock,
            failure,
            path,
        })
    }

    /// The bytes the log takes on disk: the active file, the closed files and the chain state
    /// (for `/metrics`; a directory listing, no file is read).
    pub fn size_on_disk(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let closed: u64 = rotated_files(&self.path)
            .unwrap_or_default()
            .iter()
            .map(|(_, p)| len(p))
            .sum();
        closed + len(&self.path) + len(&state_path(&self.path))
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

/// The active file as the writer thread holds it.
struct Sink {
    /// `audit.log`.
    path: PathBuf,
    /// Open for appending; `None` after a rotation until the next write creates the new file
    /// (or after creating it failed).
    file: Option<File>,
    /// The file's length up to its last whole entry: a failed append is cut back to it.
    good: u64,
    /// The new file or its name is not yet known durable (a sync failed): no entry goes into
    /// it until one succeeds.
    sync_owed: bool,
    /// The sequence of the active file's first entry (its name once rotated).
    first_seq: u64,
    /// The chain's recorded head and start (written before files are renamed or deleted).
    state: ChainState,
    rotation: Rotation,
}

impl Sink {
    /// The active file, opened (or created, with its name made durable) if need be.
    fn file(&mut self) -> std::io::Result<&mut File> {
        let file = match self.file.take() {
            Some(f) => f,
            None => {
                let created = !self.path.exists();
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.good = file.metadata()?.len();
                self.sync_owed |= created;
                file
            }
        };
        if self.sync_owed {
            // The new file's name (and the audit directory's) must survive a power loss.
            let synced = file.sync_all().and_then(|_| {
                for dir in [
                    self.path.parent(),
                    self.path.parent().and_then(Path::parent),
                ]
                .into_iter()
                .flatten()
                {
                    crate::store::sync_dir(dir)?;
                }
                Ok(())
            });
            if let Err(e) = synced {
                self.file = Some(file);
                return Err(e);
            }
            self.sync_owed = false;
        }
        Ok(self.file.insert(file))
    }

    /// Appends `lines` and syncs; on failure cuts the file back to its last whole entry.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let good = self.good;
        let file = self.file()?;
        // Never append after a torn fragment: the file must end at its last whole entry (a cut
        // that failed before is tried again first).
        let result = file
            .metadata()
            .and_then(|m| {
                if m.len() == good {
                    Ok(())
                } else {
                    file.set_len(good)
                }
            })
            .and_then(|_| file.write_all(lines))
            .and_then(|_| file.sync_data());
        match result {
            Ok(()) => {
                self.good += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(good);
                Err(e)
            }
        }
    }

    /// Closes the active file under its rotated name once it is full, then deletes the closed
    /// files past the number kept. `chain` has just been written whole: its last entry ends the
    /// file. The chain's head is made durable first, so a restart continues it even if the
    /// closed file is moved away before the new one has an entry. A failure is logged and the
    /// same file goes on growing (tried again after the next write): rotation never costs an
    /// entry, and never renames over an existing file.
    fn rotate_if_full(&mut self, chain: &Chain) {
        if self.rotation.max_file_bytes == 0 || self.good < self.rotation.max_file_bytes {
            return;
        }
        let rotated = rotated_path(&self.path, self.first_seq);
        if rotated.exists() {
            tracing::error!(file = %rotated.display(), "cannot rotate the audit log: a file of that name exists (moved back?); the active file goes on growing");
            return;
        }
        let state = ChainState {
            head_seq: chain.seq,
            head_hash: chain.prev.clone(),
            ..self.state.clone()
        };
        if let Err(e) = write_state(&self.path, &state) {
            tracing::error!(error = %e, "cannot record the audit log's head before rotating; the active file goes on growing");
            return;
        }
        self.state = state;
        self.file = None;
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            tracing::error!(error = %e, file = %rotated.display(), "cannot rotate the audit log; the active file goes on growing");
            return;
        }
        tracing::info!(file = %rotated.display(), first_seq = self.first_seq, last_seq = chain.seq, "audit log rotated");
        // Renamed: the next entry begins the new file, whatever happens below.
        self.first_seq = chain.seq + 1;
        self.good = 0;
        // The new file's creation syncs the directory, and with it the rename.
        self.sync_owed = true;
        if let Err(e) = self.file() {
            // The next write tries again (and calls are refused while it cannot).
            tracing::error!(error = %e, "cannot create the new audit log file");
        }
        self.delete_past_kept();
    }

    /// Deletes the oldest closed files beyond [`Rotation::keep_files`], oldest first, after
    /// recording where the kept chain will begin; stops at the first file it cannot delete, so
    /// what stays is always a run of whole files.
    fn delete_past_kept(&mut self) {
        if self.rotation.keep_files == 0 {
            return;
        }
        let files = match rotated_files(&self.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the rotated audit log files");
                return;
            }
        };
        let excess = files.len().saturating_sub(self.rotation.keep_files);
        let Some((_, newest_deleted)) = excess.checked_sub(1).and_then(|i| files.get(i)) else {
            return;
        };
        let last = match last_entry(newest_deleted) {
            Ok(Some(last)) => last,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a rotated audit log file before deleting it");
                return;
            }
        };
        let state = ChainState {
            start_seq: last.entry.seq + 1,
            start_prev: last.hash,
            ..self.state.clone()
        };
        if let Err(e) = write_state(&self.path, &state) {
            tracing::error!(error = %e, "cannot record where the audit log will begin; no file deleted");
            return;
        }
        self.state = state;
        for (first_seq, file) in files.into_iter().take(excess) {
            match std::fs::remove_file(&file) {
                Ok(()) => {
                    tracing::info!(file = %file.display(), first_seq, "rotated audit log file deleted (audit.keep_files)")
                }
                Err(e) => {
                    tracing::error!(error = %e, file = %file.display(), "cannot delete a rotated audit log file; the older ones stay too");
                    break;
                }
            }
        }
        if let Some(dir) = self.path.parent() {
            let _ = crate::store::sync_dir(dir);
        }
    }
}

fn write_loop(
    mut sink: Sink,
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
        write_or_keep(&mut sink, &mut lines, failure, &chain);
    }
    // Stopping with entries a failed write kept: tried again for a while (space may return).
    let give_up = Instant::now() + STOP_RETRY;
    while !lines.is_empty() && Instant::now() < give_up {
        std::thread::sleep(SYNC_EVERY);
        write_or_keep(&mut sink, &mut lines, failure, &chain);
    }
    if !lines.is_empty() {
        tracing::error!(
            bytes = lines.len(),
            "the audit log could not be written before stopping; its last entries are lost"
        );
    }
}

/// Appends `lines` and syncs, then rotates a full file (`chain`: the chain as far as `lines`). On failure the file is cut back to its last whole entry (a partial append
/// would leave a torn line the chain cannot pass) and the lines are kept for the next try
/// (about every 0.4 s), so the log on disk never skips an entry; `failure` says why until a
/// write succeeds.
fn write_or_keep(sink: &mut Sink, lines: &mut Vec<u8>, failure: &Failure, chain: &Chain) {
    if lines.is_empty() {
        return;
    }
    match sink.append(lines) {
        Ok(()) => {
            lines.clear();
            if failure.reason.lock().take().is_some() {
                failure
                    .set
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::warn!("the audit log is written again; calls are served again");
            }
            sink.rotate_if_full(chain);
        }
        Err(e) => {
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
        /// The sequence of the first entry kept: 1, or where the oldest closed file kept
        /// begins when older ones were deleted ([`Rotation::keep_files`]); that entry's link
        /// to the one before cannot be checked.
        first_seq: u64,
    },
    /// The first entry that does not.
    Broken {
        /// The file it is in.
        file: PathBuf,
        /// Line number in that file, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Recomputes the chain of the log whose active file is at `path`, through its closed files
/// (oldest first) and then the active one. A missing file in the middle, an entry changed,
/// moved or removed, a file whose name does not match its first entry, entries missing before
/// where retention says the log begins, or a log ending before the recorded head breaks it.
/// A rotation by a running server while the files are read is met by reading them again.
pub fn verify(path: &Path) -> std::io::Result<Verdict> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = rotated_files(path)?;
        let result = verify_files(path, &before);
        let moved = rotated_files(path)? != before;
        match result {
            Ok(v) if !moved || attempt == 3 => return Ok(v),
            Err(e) if !moved || attempt == 3 => return Err(e),
            _ => continue,
        }
    }
}

fn verify_files(path: &Path, rotated: &[(u64, PathBuf)]) -> std::io::Result<Verdict> {
    let state = read_state(path)?.unwrap_or_default();
    let mut files: Vec<(Option<u64>, PathBuf)> = rotated
        .iter()
        .map(|(seq, p)| (Some(*seq), p.clone()))
        .collect();
    if path.exists() || files.is_empty() {
        files.push((None, path.to_path_buf()));
    }
    // The next entry's expected sequence and link (None before the first entry).
    let mut expected: Option<(u64, String)> = None;
    let mut first_seq = 1;
    let mut n = 0u64;
    let mut last: Option<(PathBuf, u64)> = None;
    for (named_seq, file) in files {
        let reader = BufReader::new(File::open(&file)?);
        let mut first_of_file = true;
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let broken = |reason: String| {
                Ok(Verdict::Broken {
                    file: file.clone(),
                    line: i as u64 + 1,
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
            let seq = stored.entry.seq;
            if first_of_file {
                if let Some(named) = named_seq.filter(|named| *named != seq) {
                    return broken(format!(
                        "the file's name says it begins at entry {named} but it begins at {seq} (renamed?)"
                    ));
                }
                first_of_file = false;
            }
            match &expected {
                Some((want, _)) if seq != *want => {
                    return broken(format!(
                        "entry {seq} where {want} was expected (an entry or a file is missing or moved)"
                    ));
                }
                Some((_, prev)) if stored.entry.prev != *prev => {
                    return broken(format!("entry {seq} does not link to the entry before it"));
                }
                Some(_) => {}
                None => {
                    // The first entry here: the genesis, where retention says the log begins,
                    // or an older entry a deletion cut short left. Either way the entry at the
                    // recorded start must link to the recorded hash (checked below).
                    if seq == 1 && stored.entry.prev != GENESIS {
                        return broken("entry 1 does not begin the chain".into());
                    }
                    if seq > state.start_seq {
                        return broken(format!(
                            "the log begins at entry {seq}, but entries from {} on were kept: entries {}..{} are missing (cut off, or files moved away)",
                            state.start_seq,
                            state.start_seq,
                            seq - 1
                        ));
                    }
                    first_seq = seq;
                }
            }
            if seq == state.start_seq && stored.entry.prev != state.start_prev {
                return broken(format!(
                    "entry {seq} does not link to the entry recorded as the one before the kept log"
                ));
            }
            let h = hash_of(&stored.entry);
            if h != stored.hash {
                return broken(format!(
                    "entry {seq} was changed: its content does not match its hash"
                ));
            }
            expected = Some((seq + 1, h));
            last = Some((file.clone(), i as u64 + 1));
            n += 1;
        }
    }
    let last_seq = expected.as_ref().map_or(0, |(next, _)| next - 1);
    if last_seq < state.head_seq {
        let (file, line) = last.unwrap_or_else(|| (path.to_path_buf(), 0));
        return Ok(Verdict::Broken {
            file,
            line,
            reason: format!(
                "the log ends at entry {last_seq}, but entry {} was written before the last rotation (entries cut off the end, or files moved away)",
                state.head_seq
            ),
        });
    }
    Ok(Verdict::Intact {
        entries: n,
        first_seq,
    })
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

    /// One file that only grows.
    const NEVER: Rotation = Rotation {
        max_file_bytes: 0,
        keep_files: 0,
    };

    /// Files of about 1 KB (ten entries fill one).
    fn small_files(keep_files: usize) -> Rotation {
        Rotation {
            max_file_bytes: 1_000,
            keep_files,
        }
    }

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
        let log = AuditLog::open(dir.path(), clock.clone(), NEVER)?;
        log.record(access(1));
        log.record(access(2));
        log.close();
        let path = log_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(br#"{"seq":3,"at":17954280"#)?;
        drop(f);

        let log = AuditLog::open(dir.path(), clock, NEVER)?;
        log.record(access(3));
        log.close();
        assert_eq!(
            verify(&path)?,
            Verdict::Intact {
                entries: 3,
                first_seq: 1
            }
        );
        Ok(())
    }

    /// Opens the log of `dir`, records `n` entries and closes it (one write, then a rotation
    /// if the file is full).
    fn round(dir: &Path, rotation: Rotation, n: usize) -> std::io::Result<()> {
        let clock = std::sync::Arc::new(ManualClock::new(Timestamp(1_795_428_000_000_000)));
        let log = AuditLog::open(dir, clock, rotation)?;
        for i in 0..n {
            log.record(access(i));
        }
        log.close();
        Ok(())
    }

    fn first_seqs(dir: &Path) -> std::io::Result<Vec<u64>> {
        Ok(rotated_files(&log_path(dir))?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect())
    }

    /// A full file is closed under the sequence of its first entry, the chain goes on in the
    /// next file (also across restarts), only the newest `keep_files` closed files stay, and
    /// `verify` checks the chain across the files from the oldest kept entry.
    #[test]
    fn full_files_rotate_the_oldest_past_the_kept_are_deleted_and_the_chain_verifies_across_files()
    -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        // Ten entries are about 1,600 bytes: every round fills a file.
        let rotation = small_files(3);
        for _ in 0..6 {
            round(dir.path(), rotation, 10)?;
        }
        assert_eq!(first_seqs(dir.path())?, vec![31, 41, 51]);
        let active = log_path(dir.path());
        assert_eq!(
            std::fs::metadata(&active)?.len(),
            0,
            "a new, empty active file"
        );
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 30,
                first_seq: 31
            }
        );
        // Below the size, the active file just grows; the chain continues from the newest
        // closed file.
        round(dir.path(), rotation, 2)?;
        assert_eq!(first_entry_seq(&active)?, Some(61));
        assert_eq!(first_seqs(dir.path())?, vec![31, 41, 51]);
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 32,
                first_seq: 31
            }
        );

        // keep_files = 0 keeps every file.
        let dir = tempfile::tempdir()?;
        let keep_all = small_files(0);
        for _ in 0..4 {
            round(dir.path(), keep_all, 10)?;
        }
        assert_eq!(first_seqs(dir.path())?, vec![1, 11, 21, 31]);
        assert_eq!(
            verify(&log_path(dir.path()))?,
            Verdict::Intact {
                entries: 40,
                first_seq: 1
            }
        );
        Ok(())
    }

    /// Several rotations in one run of the writer name each file after its own first entry.
    #[test]
    fn rotations_within_one_run_name_each_file_after_its_first_entry() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let rotation = small_files(0);
        let clock = std::sync::Arc::new(ManualClock::new(Timestamp(1_795_428_000_000_000)));
        let log = AuditLog::open(dir.path(), clock, rotation)?;
        let active = log_path(dir.path());
        for round in 1..=3u64 {
            for i in 0..10 {
                log.record(access(i));
            }
            // Wait (bounded) until the writer has written the round, so each round is a file.
            let deadline = Instant::now() + Duration::from_secs(10);
            while first_seqs(dir.path())?.len() < round as usize {
                assert!(
                    Instant::now() < deadline,
                    "round {round} not written in 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        log.close();
        assert_eq!(first_seqs(dir.path())?, vec![1, 11, 21]);
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 30,
                first_seq: 1
            }
        );
        Ok(())
    }

    /// A stop after a rotation's rename and before the new file has an entry (or exists): the
    /// next open continues the chain from the closed file.
    #[test]
    fn a_stop_between_the_rename_and_the_new_file_continues_the_chain() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        round(dir.path(), NEVER, 5)?;
        let active = log_path(dir.path());
        std::fs::rename(&active, rotated_path(&active, 1))?;
        round(dir.path(), NEVER, 1)?;
        assert_eq!(first_entry_seq(&active)?, Some(6));
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 6,
                first_seq: 1
            }
        );
        Ok(())
    }

    /// A closed file removed from the middle, a file renamed, or an entry changed in a closed
    /// file is found, and the file is named.
    #[test]
    fn a_missing_renamed_or_changed_closed_file_breaks_the_chain() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let rotation = small_files(0);
        for _ in 0..3 {
            round(dir.path(), rotation, 10)?;
        }
        let active = log_path(dir.path());
        let second = rotated_path(&active, 11);
        let third = rotated_path(&active, 21);
        let expect_broken = |want_file: &Path, want: &str| -> std::io::Result<()> {
            match verify(&active)? {
                Verdict::Broken { file, reason, .. } => {
                    assert_eq!(file, want_file, "{reason}");
                    assert!(reason.contains(want), "{reason}");
                }
                other => panic!("not noticed: {other:?}"),
            }
            Ok(())
        };

        let kept = std::fs::read(&second)?;
        std::fs::remove_file(&second)?;
        expect_broken(&third, "entry 21 where 11 was expected")?;

        std::fs::write(rotated_path(&active, 12), &kept)?;
        expect_broken(&rotated_path(&active, 12), "begins at 11")?;
        std::fs::remove_file(rotated_path(&active, 12))?;

        let text = String::from_utf8(kept).map_err(std::io::Error::other)?;
        std::fs::write(&second, text.replacen("/m/3", "/m/4", 1))?;
        expect_broken(&second, "entry 14 was changed")?;
        Ok(())
    }

    /// The chain's head is recorded before a file is closed: with the closed files moved away
    /// while the new file is still empty, a restart continues the chain instead of beginning a
    /// second one at entry 1 (whose closed files would take the same names).
    #[test]
    fn a_restart_continues_the_chain_when_the_closed_files_were_moved_away() -> std::io::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let rotation = small_files(0);
        round(dir.path(), rotation, 10)?;
        let active = log_path(dir.path());
        assert_eq!(std::fs::metadata(&active)?.len(), 0);
        for (_, file) in rotated_files(&active)? {
            std::fs::remove_file(file)?;
        }
        round(dir.path(), rotation, 1)?;
        assert_eq!(first_entry_seq(&active)?, Some(11));
        // What is left verifies as a log missing its beginning.
        match verify(&active)? {
            Verdict::Broken { reason, .. } => {
                assert!(reason.contains("entries 1..10 are missing"), "{reason}")
            }
            other => panic!("moved files not noticed: {other:?}"),
        }
        Ok(())
    }

    /// Entries cut off the start of a log that never deleted a file, or off the end of the
    /// newest closed file, are found: only retention may move where the log begins.
    #[test]
    fn entries_cut_off_the_start_or_the_end_are_found() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        round(dir.path(), NEVER, 10)?;
        let active = log_path(dir.path());
        let text = std::fs::read_to_string(&active)?;
        let rest: String = text.lines().skip(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&active, rest)?;
        match verify(&active)? {
            Verdict::Broken { line, reason, .. } => {
                assert_eq!(line, 1);
                assert!(reason.contains("begins at entry 4"), "{reason}");
            }
            other => panic!("a cut start not noticed: {other:?}"),
        }

        let dir = tempfile::tempdir()?;
        let rotation = small_files(0);
        round(dir.path(), rotation, 10)?;
        let active = log_path(dir.path());
        let closed = rotated_path(&active, 1);
        let text = std::fs::read_to_string(&closed)?;
        let kept: String = text.lines().take(9).map(|l| format!("{l}\n")).collect();
        std::fs::write(&closed, kept)?;
        match verify(&active)? {
            Verdict::Broken { reason, .. } => {
                assert!(reason.contains("ends at entry 9"), "{reason}")
            }
            other => panic!("a cut end not noticed: {other:?}"),
        }
        Ok(())
    }

    /// A deletion cut short (the start recorded, the older files not all deleted) still
    /// verifies: the chain is checked through the recorded start.
    #[test]
    fn a_deletion_cut_short_still_verifies() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let keep_all = small_files(0);
        for _ in 0..4 {
            round(dir.path(), keep_all, 10)?;
        }
        let active = log_path(dir.path());
        // Retention recorded the start at 21 and deleted only the oldest file.
        let last_deleted = last_entry(&rotated_path(&active, 11))?
            .ok_or_else(|| std::io::Error::other("the second file has entries"))?;
        let state = ChainState {
            start_seq: 21,
            start_prev: last_deleted.hash,
            ..read_state(&active)?.unwrap_or_default()
        };
        write_state(&active, &state)?;
        std::fs::remove_file(rotated_path(&active, 1))?;
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 30,
                first_seq: 11
            }
        );
        // A recorded start the chain does not pass through is found.
        write_state(
            &active,
            &ChainState {
                start_prev: GENESIS.to_string(),
                ..state
            },
        )?;
        match verify(&active)? {
            Verdict::Broken { reason, .. } => assert!(reason.contains("entry 21"), "{reason}"),
            other => panic!("a wrong start not noticed: {other:?}"),
        }
        Ok(())
    }

    /// A rotation never renames over an existing file: with the name taken, the active file
    /// goes on growing and no entry is lost.
    #[test]
    fn a_rotation_never_replaces_an_existing_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let active = log_path(dir.path());
        round(dir.path(), NEVER, 10)?;
        let squatter = rotated_path(&active, 1);
        std::fs::write(&squatter, b"not ours\n")?;
        let rotation = small_files(0);
        round(dir.path(), rotation, 10)?;
        assert_eq!(std::fs::read(&squatter)?, b"not ours\n");
        assert_eq!(first_entry_seq(&active)?, Some(1));
        std::fs::remove_file(&squatter)?;
        assert_eq!(
            verify(&active)?,
            Verdict::Intact {
                entries: 20,
                first_seq: 1
            }
        );
        Ok(())
    }

    /// An unreadable last entry stops the open (continuing from an earlier one would fork the
    /// chain) with a message that says what to do.
    #[test]
    fn an_unreadable_last_entry_refuses_the_open() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        round(dir.path(), NEVER, 2)?;
        let mut f = OpenOptions::new().append(true).open(log_path(dir.path()))?;
        f.write_all(b"{\"seq\": garbage}\n")?;
        drop(f);
        let clock = std::sync::Arc::new(ManualClock::new(Timestamp(1_795_428_000_000_000)));
        match AuditLog::open(dir.path(), clock, NEVER) {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                assert!(e.to_string().contains("audit-verify"), "{e}");
            }
            Ok(_) => panic!("opened after an unreadable last entry"),
        }
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
