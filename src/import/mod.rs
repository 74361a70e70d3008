//! Bulk import of customers from NDJSON (`customer-profile import`): offline, into a data
//! directory no server is using. Owns the batching, the per-line savepoints, the resumable
//! position and the report; the rules are the API's own (`domain::identity`, `profiles`,
//! `consent`, `timeline`), called exactly as the handlers call them.
//!
//! A reader thread splits and parses lines (JSON and field checks need no store) while this
//! thread runs the batches: one `Store::write` per batch, each line behind a savepoint so a
//! rejected line takes back only its own writes, and the file position written in the same
//! transaction, so a killed import restarted with the same command resumes after the last
//! committed batch and never imports a line twice.

pub mod line;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::consent;
use crate::domain::identity::{self, IgnoreReason, Outcome, ProfileKey, ResolveInput};
use crate::domain::policy::IdentityPolicy;
use crate::domain::ports::WriteTx;
use crate::domain::profiles;
use crate::domain::rules::Rules;
use crate::domain::time::{Clock, Timestamp};
use crate::domain::timeline;
use crate::error::{Error, Result};
use crate::server::config::Config;
use crate::store::{SledStore, Store, StoreOptions, Ticket};
use line::Prepared;

/// Lines per transaction unless told otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// Bytes of the file hashed into its fingerprint (with its size).
const FINGERPRINT_BYTES: u64 = 1024 * 1024;
/// Rejected lines echoed on stderr; the rest are only in the rejects file.
const STDERR_REJECTS: u64 = 20;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The NDJSON file; `-` reads standard input (not resumable).
    pub input: PathBuf,
    /// Lines per transaction (one durable flush each).
    pub batch: usize,
    /// Merge profiles when a line's identifiers belong to several; otherwise reject the line.
    pub allow_merge: bool,
    /// Where rejected lines are listed (default: next to the input, `NAME.rejects.ndjson`).
    pub rejects: Option<PathBuf>,
    /// Ignore a stored position and import from the first line.
    pub restart: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop after this many lines in this run (tests and trial runs; resumable).
    pub max_lines: Option<u64>,
}

impl Options {
    /// Defaults for `input`.
    pub fn new(input: impl Into<PathBuf>) -> Options {
        Options {
            input: input.into(),
            batch: DEFAULT_BATCH,
            allow_merge: false,
            rejects: None,
            restart: false,
            progress: true,
            max_lines: None,
        }
    }

    fn is_stdin(&self) -> bool {
        self.input.as_os_str() == "-"
    }

    /// Where rejected lines go.
    pub fn rejects_path(&self) -> PathBuf {
        if let Some(p) = &self.rejects {
            return p.clone();
        }
        if self.is_stdin() {
            return PathBuf::from("stdin.rejects.ndjson");
        }
        let stem = self
            .input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "import".into());
        self.input.with_file_name(format!("{stem}.rejects.ndjson"))
    }
}

/// Counts of an import (a resumed import counts from the file's first line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Lines imported.
    pub imported: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Profiles created (the rest matched or linked existing ones).
    pub created: u64,
    /// Lines that merged profiles (`--allow-merge`).
    pub merged: u64,
    /// Interactions recorded.
    pub interactions: u64,
    /// Consent records written.
    pub consents: u64,
}

/// Where an import stopped, stored in `meta` with each batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    /// Byte offset after the last line of the last committed batch.
    offset: u64,
    /// Totals up to there.
    counts: Counts,
}

const POSITION_FORMAT: u8 = 1;

impl Position {
    fn encode(&self) -> Result<Vec<u8>> {
        let mut out = vec![POSITION_FORMAT];
        out.extend(
            postcard::to_stdvec(self)
                .map_err(|e| Error::Corrupt(format!("encoding the import position: {e}")))?,
        );
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Position> {
        match bytes.split_first() {
            Some((&POSITION_FORMAT, rest)) => postcard::from_bytes(rest)
                .map_err(|e| Error::Corrupt(format!("stored import position: {e}"))),
            _ => Err(Error::Corrupt(
                "stored import position has an unknown format".into(),
            )),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Totals over the file (earlier runs of a resumed import included).
    pub total: Counts,
    /// This run alone.
    pub this_run: Counts,
    /// The line this run started after (0: from the start).
    pub resumed_after_line: u64,
    /// This run's wall time.
    pub elapsed: Duration,
    /// The rejects file, when this run rejected any line.
    pub rejects_file: Option<PathBuf>,
    /// The whole input has been imported (false when `max_lines` stopped this run).
    pub complete: bool,
    /// Durable flushes this run.
    pub flushes: u64,
}

impl Report {
    /// Profiles (lines imported) per second in this run.
    pub fn rate(&self) -> f64 {
        per_sec(self.this_run.imported, self.elapsed)
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.this_run;
        if self.resumed_after_line > 0 {
            writeln!(
                f,
                "resumed after line {} (a stored position of an earlier run; --restart ignores it)",
                self.resumed_after_line
            )?;
        }
        writeln!(
            f,
            "lines read {}, imported {}, rejected {}; profiles created {}, merged {}; interactions {}, consents {}",
            r.lines, r.imported, r.rejected, r.created, r.merged, r.interactions, r.consents
        )?;
        writeln!(
            f,
            "elapsed {:.2} s: {:.0} profiles/s, {:.0} interactions/s, {} durable flushes",
            self.elapsed.as_secs_f64(),
            self.rate(),
            per_sec(r.interactions, self.elapsed),
            self.flushes
        )?;
        if self.total != self.this_run {
            let t = &self.total;
            writeln!(
                f,
                "whole file so far: lines {}, imported {}, rejected {}",
                t.lines, t.imported, t.rejected
            )?;
        }
        if let Some(p) = &self.rejects_file {
            writeln!(f, "rejected lines are listed in {}", p.display())?;
        }
        if !self.complete {
            writeln!(
                f,
                "stopped before the end of the input; run the same command again to continue"
            )?;
        }
        Ok(())
    }
}

/// One line from the reader.
enum Item {
    Blank,
    Parsed(Box<Prepared>),
    Bad(String),
}

/// A batch from the reader: `(line number, item)` and the offset after its last line.
struct Batch {
    lines: Vec<(u64, Item)>,
    end_offset: u64,
}

/// Hash of the size and the first MiB: the same file gets the same position back; a
/// different file (or a grown export) starts from its first line.
fn fingerprint(file: &mut File) -> std::io::Result<[u8; 32]> {
    let size = file.metadata()?.len();
    let mut h = Sha256::new();
    h.update(b"customer-profile import v1");
    h.update(size.to_be_bytes());
    let mut head = Vec::new();
    Read::by_ref(file)
        .take(FINGERPRINT_BYTES)
        .read_to_end(&mut head)?;
    h.update(&head);
    file.seek(SeekFrom::Start(0))?;
    Ok(h.finalize().into())
}

/// Opens the data directory the way the server does (same master key, same policy).
fn open_store(config: &Config) -> anyhow::Result<SledStore> {
    let key = crate::server::startup::master_key(config)?;
    SledStore::open(&StoreOptions {
        master_key: key,
        path: config.data_dir.clone(),
        cache_capacity_bytes: config.storage.cache_capacity_mb.saturating_mul(1024 * 1024),
        min_free_mb: config.storage.min_free_mb,
    })
    .with_context(|| {
        format!(
            "opening the data directory {} (import runs offline: stop the server using it first; sled allows one process per directory)",
            config.data_dir.display()
        )
    })
}

/// Imports `opts.input` into the data directory of `config`. Rejected lines are reported,
/// never dropped silently; an I/O or storage failure stops the import with an error, and
/// what was committed before it stays (run again to resume).
pub fn run(opts: &Options, config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Report> {
    if opts.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    config.validate()?;
    let policy = config.identity_policy()?;
    let rules = config.rules()?;
    let store = open_store(config)?;
    let result = import_into(&store, opts, &policy, &rules, clock);
    let closed = store.close();
    let report = result?;
    closed.context("closing the store")?;
    Ok(report)
}

fn import_into(
    store: &SledStore,
    opts: &Options,
    policy: &IdentityPolicy,
    rules: &Rules,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let flushes_before = store.flushes();
    let (reader, fp, size): (Box<dyn BufRead + Send>, Option<[u8; 32]>, Option<u64>) =
        if opts.is_stdin() {
            (
                Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
                None,
                None,
            )
        } else {
            let mut f = File::open(&opts.input)
                .with_context(|| format!("opening {}", opts.input.display()))?;
            let fp =
                fingerprint(&mut f).with_context(|| format!("reading {}", opts.input.display()))?;
            let size = f.metadata()?.len();
            (
                Box::new(BufReader::with_capacity(1 << 20, f)),
                Some(fp),
                Some(size),
            )
        };
    let store_dyn: &dyn Store = store;
    let start = match (fp, opts.restart) {
        (Some(fp), false) => store_dyn
            .read_with(|v| v.import_position(&fp))?
            .map(|b| Position::decode(&b))
            .transpose()?
            .unwrap_or_default(),
        _ => Position::default(),
    };
    let mut reader = reader;
    if start.offset > 0 {
        // The reader is a file here: only files have a fingerprint, so only they resume.
        skip_bytes(&mut reader, start.offset)
            .with_context(|| format!("seeking in {}", opts.input.display()))?;
    }
    let progress = progress_bar(opts.progress, size, start.offset);
    let (tx, rx) = sync_channel::<std::io::Result<Batch>>(4);
    let reader_clock = clock.clone();
    let (batch, max_lines, first_line, offset) =
        (opts.batch, opts.max_lines, start.counts.lines, start.offset);
    let reader_thread = std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || {
            read_batches(
                reader,
                tx,
                reader_clock,
                batch,
                max_lines,
                first_line,
                offset,
            )
        })
        .context("starting the reader thread")?;
    let mut state = Committer {
        store: store_dyn,
        policy,
        rules,
        clock,
        allow_merge: opts.allow_merge,
        fp,
        total: start.counts.clone(),
        this_run: Counts::default(),
        rejects: RejectSink::new(opts.rejects_path(), start.offset > 0),
        offset: start.offset,
    };
    let outcome = state.commit_all(&rx, &progress);
    drop(rx);
    let complete = reader_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
    outcome?;
    progress.finish_and_clear();
    let rejects_file = state.rejects.finish()?;
    Ok(Report {
        total: state.total,
        this_run: state.this_run,
        resumed_after_line: start.counts.lines,
        elapsed: started.elapsed(),
        rejects_file,
        complete,
        flushes: store.flushes().saturating_sub(flushes_before),
    })
}

fn skip_bytes(reader: &mut Box<dyn BufRead + Send>, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        reader.consume(k);
        n -= k as u64;
    }
    Ok(())
}

fn progress_bar(show: bool, size: Option<u64>, at: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size {
        Some(size) => {
            let bar = indicatif::ProgressBar::new(size);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} eta {eta} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_position(at);
            bar
        }
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// The reader thread: lines into parsed batches. Returns whether it reached the end.
fn read_batches(
    mut reader: Box<dyn BufRead + Send>,
    tx: SyncSender<std::io::Result<Batch>>,
    clock: Arc<dyn Clock>,
    batch: usize,
    max_lines: Option<u64>,
    mut line_no: u64,
    mut offset: u64,
) -> bool {
    let mut buf = Vec::with_capacity(8192);
    let mut read_this_run = 0u64;
    loop {
        let now = clock.now();
        let mut lines = Vec::with_capacity(batch);
        let mut eof = false;
        while lines.len() < batch {
            if max_lines.is_some_and(|m| read_this_run >= m) {
                break;
            }
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    offset += n as u64;
                    line_no += 1;
                    read_this_run += 1;
                    lines.push((line_no, parse_item(&buf, now)));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return false;
                }
            }
        }
        if !lines.is_empty()
            && tx
                .send(Ok(Batch {
                    lines,
                    end_offset: offset,
                }))
                .is_err()
        {
            return false;
        }
        if eof {
            return true;
        }
        if max_lines.is_some_and(|m| read_this_run >= m) {
            // Stopped by the limit: complete only if nothing follows.
            return reader.fill_buf().map(<[u8]>::is_empty).unwrap_or(false);
        }
    }
}

fn parse_item(raw: &[u8], now: Timestamp) -> Item {
    let text = raw.trim_ascii();
    if text.is_empty() {
        return Item::Blank;
    }
    match line::parse(text, now) {
        Ok(p) => Item::Parsed(Box::new(p)),
        Err(reason) => Item::Bad(reason),
    }
}

/// Rejected lines: written to the rejects file (created at the first one, appended to when
/// resuming) and the first few echoed on stderr.
struct RejectSink {
    path: PathBuf,
    append: bool,
    file: Option<std::io::BufWriter<File>>,
    count: u64,
}

impl RejectSink {
    fn new(path: PathBuf, append: bool) -> RejectSink {
        RejectSink {
            path,
            append,
            file: None,
            count: 0,
        }
    }

    fn add(&mut self, line: u64, reason: &str, bar: &indicatif::ProgressBar) -> anyhow::Result<()> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&self.path)
                .with_context(|| format!("creating the rejects file {}", self.path.display()))?;
            self.file = Some(std::io::BufWriter::new(f));
        }
        if let Some(f) = &mut self.file {
            serde_json::to_writer(
                &mut *f,
                &serde_json::json!({"line": line, "reason": reason}),
            )?;
            f.write_all(b"\n")?;
        }
        self.count += 1;
        if self.count <= STDERR_REJECTS {
            bar.suspend(|| {
                let _ = writeln!(std::io::stderr(), "line {line} rejected: {reason}");
            });
        } else if self.count == STDERR_REJECTS + 1 {
            bar.suspend(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "more rejected lines: see {}",
                    self.path.display()
                );
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(f) = &mut self.file {
            f.flush()
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<Option<PathBuf>> {
        self.flush()?;
        Ok(self.file.is_some().then_some(self.path))
    }
}

/// The committing side.
struct Committer<'a> {
    store: &'a dyn Store,
    policy: &'a IdentityPolicy,
    rules: &'a Rules,
    clock: Arc<dyn Clock>,
    allow_merge: bool,
    fp: Option<[u8; 32]>,
    total: Counts,
    this_run: Counts,
    rejects: RejectSink,
    offset: u64,
}

/// What one line did.
#[derive(Default)]
struct LineDone {
    created: bool,
    merged: bool,
    interactions: u64,
    consents: u64,
}

impl Committer<'_> {
    fn commit_all(
        &mut self,
        rx: &Receiver<std::io::Result<Batch>>,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .context("starting a runtime to wait for durability")?;
        let started = Instant::now();
        let mut pending: Option<Ticket> = None;
        for batch in rx {
            let batch = batch.context("reading the input")?;
            let (ticket, results) = self.commit(batch)?;
            // The previous batch's flush ran while this one was built; waiting for it here
            // keeps at most one batch in flight.
            if let Some(t) = pending.replace(ticket) {
                runtime.block_on(self.store.durable(t))?;
            }
            for (line, reason) in results {
                self.rejects.add(line, &reason, bar)?;
            }
            self.rejects.flush()?;
            bar.set_position(self.offset);
            bar.set_message(format!(
                "{} imported, {} rejected, {:.0}/s",
                self.total.imported,
                self.total.rejected,
                per_sec(self.this_run.imported, started.elapsed())
            ));
        }
        if let Some(t) = pending {
            runtime.block_on(self.store.durable(t))?;
        }
        Ok(())
    }

    /// One batch in one transaction; returns its ticket and the rejected lines.
    fn commit(&mut self, batch: Batch) -> anyhow::Result<(Ticket, Vec<(u64, String)>)> {
        let now = self.clock.now();
        let mut lines = Some(batch.lines);
        let mut outcome: Option<(Counts, Vec<(u64, String)>)> = None;
        let (policy, rules, allow_merge, fp) = (self.policy, self.rules, self.allow_merge, self.fp);
        let total = self.total.clone();
        let ticket = self.store.write(&mut |tx| {
            let lines = lines
                .take()
                .ok_or_else(|| Error::Unavailable("import batch ran twice".into()))?;
            let mut counts = Counts::default();
            let mut rejected = Vec::new();
            for (line_no, item) in lines {
                counts.lines += 1;
                let p = match item {
                    Item::Blank => continue,
                    Item::Bad(reason) => {
                        rejected.push((line_no, reason));
                        continue;
                    }
                    Item::Parsed(p) => p,
                };
                tx.savepoint();
                match apply_line(tx, *p, policy, rules, allow_merge, now) {
                    Ok(done) => {
                        counts.imported += 1;
                        counts.created += u64::from(done.created);
                        counts.merged += u64::from(done.merged);
                        counts.interactions += done.interactions;
                        counts.consents += done.consents;
                    }
                    Err(e @ (Error::Unavailable(_) | Error::Corrupt(_))) => return Err(e),
                    Err(e) => {
                        tx.rollback_to_savepoint()?;
                        rejected.push((line_no, line::reason(&e)));
                    }
                }
            }
            counts.rejected = rejected.len() as u64;
            if let Some(fp) = &fp {
                let position = Position {
                    offset: batch.end_offset,
                    counts: add(&total, &counts),
                };
                tx.put_import_position(fp, &position.encode()?)?;
            }
            outcome = Some((counts, rejected));
            Ok(())
        })?;
        let (counts, rejected) =
            outcome.ok_or_else(|| anyhow::anyhow!("the import batch did not run"))?;
        self.total = add(&self.total, &counts);
        self.this_run = add(&self.this_run, &counts);
        self.offset = batch.end_offset;
        Ok((ticket, rejected))
    }
}

fn add(a: &Counts, b: &Counts) -> Counts {
    Counts {
        lines: a.lines + b.lines,
        imported: a.imported + b.imported,
        rejected: a.rejected + b.rejected,
        created: a.created + b.created,
        merged: a.merged + b.merged,
        interactions: a.interactions + b.interactions,
        consents: a.consents + b.consents,
    }
}

/// One customer through the API's rules, in the order a client would call them: Resolve
/// (create + link; merge only when allowed), UpdateProfile, RecordConsent, SetPreferences,
/// RecordInteraction. Any refusal rejects the whole line (the caller rolls it back).
fn apply_line(
    tx: &mut dyn WriteTx,
    p: Prepared,
    policy: &IdentityPolicy,
    rules: &Rules,
    allow_merge: bool,
    now: Timestamp,
) -> Result<LineDone> {
    let input = ResolveInput {
        identifiers: p.identifiers,
        create_if_missing: true,
        allow_merge,
        source: p.source.clone(),
    };
    let decision = identity::decide(tx, &input, policy)?;
    let r = identity::apply(tx, decision, &input.source, now)?;
    let blocked: Vec<String> = r
        .ignored
        .iter()
        .filter(|(_, why)| *why == IgnoreReason::Blocked)
        .map(|(id, _)| id.to_string())
        .collect();
    if !blocked.is_empty() {
        return Err(Error::precondition(
            "IDENTIFIER_BLOCKED",
            format!(
                "{} on the block list (identity.blocked); remove it from the line",
                blocked.join(", ")
            ),
        ));
    }
    let profile = match (r.outcome, r.profile) {
        (Outcome::Conflict, _) => {
            return Err(Error::precondition(
                "IDENTIFIERS_OF_SEVERAL_PROFILES",
                format!(
                    "the identifiers belong to {} profiles ({}); import with --allow-merge to merge them, or split the line",
                    r.others.len() + 1,
                    r.profile
                        .iter()
                        .chain(r.others.iter())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        (_, Some(profile)) => profile,
        (_, None) => {
            return Err(Error::precondition(
                "NO_USABLE_IDENTIFIER",
                "no identifier could be resolved",
            ));
        }
    };
    if !r.conflicts.is_empty() {
        return Err(Error::precondition(
            "IDENTIFIER_CONFLICT",
            r.conflicts
                .iter()
                .map(|c| match c.owner {
                    Some(o) => format!("{} ({:?}, owned by {o})", c.identifier, c.reason),
                    None => format!("{} ({:?})", c.identifier, c.reason),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let key = ProfileKey::Id(profile);
    if !p.changes.is_empty() {
        profiles::update_profile(tx, &key, p.changes, &p.source, p.observed_at, None, now)?;
    }
    let mut done = LineDone {
        created: r.outcome == Outcome::Created,
        merged: r.outcome == Outcome::Merged,
        ..LineDone::default()
    };
    for (i, c) in p.consents.into_iter().enumerate() {
        consent::record(tx, &key, c, &rules.consent, now)
            .map_err(|e| e.within(&format!("consents[{i}]")))?;
        done.consents += 1;
    }
    if let Some(prefs) = p.preferences {
        consent::set_preferences(tx, &key, prefs, now)?;
    }
    for (i, n) in p.interactions.into_iter().enumerate() {
        timeline::record(tx, &key, n, rules, now)
            .map_err(|e| e.within(&format!("interactions[{i}]")))?;
        done.interactions += 1;
    }
    Ok(done)
}

/// The default rejects path for `input` (for messages and tests).
pub fn default_rejects_path(input: &Path) -> PathBuf {
    Options::new(input).rejects_path()
}
