//! The sled implementation of [`Store`].
//!
//! Writes are serialized by one writer lock. A write runs the caller's rules against a
//! [`Pending`] write set that overlays committed data (so reads, scans included, see the
//! transaction's own writes), then merges the whole set into the [`Overlay`] of commits not yet
//! in sled and hands the commit to group commit for durability; the flusher applies everything
//! gathered as one multi-tree sled transaction (atomic on crash) before each flush. Readers
//! take a shared lock that the merge and the apply take exclusively, so a read never sees half
//! a commit.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use super::codec::{decode, decode_u64, encode};
use super::crypto::{self, Crypto, Key, SEALED};
use super::dir_sync::{DirSync, sync_dir};
use super::group_commit::{Durable, GroupCommit};
use super::keys::{self, TreeName};
use super::mark::{self, Marker};
use super::space::SpaceGuard;
use super::{BoxFuture, Store, Ticket};
use crate::domain::attributes::HistoryEntry;
use crate::domain::consent::{ConsentRecord, Preferences};
use crate::domain::identifier::Identifier;
use crate::domain::ids::{MergeId, ProfileId};
use crate::domain::interaction::{Interaction, InteractionCursor};
use crate::domain::ports::{NewChange, ReadView, WriteTx};
use crate::domain::profile::{ChangeEvent, IdentifierLink, MergeRecord, ProfileRecord};
use crate::domain::segments::{IndexQuery, IndexTerm};
use crate::domain::summary::Summary;
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// Schema version of data directories written by this build.
/// 2: every tree in the sled tree of its name (`store/layout.rs`); builds with schema 1 refuse
/// it, among them those that kept trees under their neighbours' names.
pub const SCHEMA_VERSION: u64 = 2;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory.
    pub path: PathBuf,
    /// sled's page cache, bytes.
    pub cache_capacity_bytes: u64,
    /// The master key: data keys are wrapped under it, index hashes keyed by it.
    pub master_key: Key,
    /// Writes are refused (UNAVAILABLE) while the volume has less free space than this, MiB;
    /// 0 disables the check (`storage.min_free_mb`).
    pub min_free_mb: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotentRecord {
    created_at: Timestamp,
    response: Vec<u8>,
}

impl super::codec::Stored for IdempotentRecord {}

/// Decodes a stored idempotency record to its response bytes (for the fuzz targets).
#[doc(hidden)]
pub(crate) fn decode_idempotent_record(bytes: &[u8]) -> Result<Vec<u8>> {
    decode::<IdempotentRecord>("idempotency record", bytes).map(|r| r.response)
}

struct WriterState {
    commit: u64,
    last_change_seq: u64,
    last_write_seq: u64,
    closed: bool,
}

/// Commits made but not yet applied to sled. A sled transaction costs far more than its
/// inserts: sled 0.34 seals its log buffer at every transaction and hands the buffer's write
/// to its I/O thread pool, whose every hand-over wakes all seven idle I/O threads. Measured
/// with 64 concurrent writers on one core: 1.3 hand-overs per commit, 39,000 context switches
/// per I/O thread in 10 s, those threads 47 % of the core. So a commit goes here, and the
/// flusher applies everything gathered as one sled transaction just before each flush.
///
/// Every read goes through it (plaintext, later commits winning), so a commit is visible to
/// the next write and to readers as soon as it returns, as when it went to sled at once; no
/// write is acknowledged before it is applied and flushed. Readers hold the lock's shared side
/// for a whole read, and commits and the apply take the exclusive side, so a reader sees whole
/// commits only.
struct Overlay {
    /// What reads see, per tree: the values as written (`None`: deleted).
    plain: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// The same writes as they are stored (sealed), per tree, plus the data keys created.
    sealed: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Profiles whose data keys the gathered commits delete.
    dropped_keys: std::collections::HashSet<[u8; 16]>,
    /// Commits gathered.
    commits: u64,
}

impl Overlay {
    fn new() -> Overlay {
        Overlay {
            plain: vec![BTreeMap::new(); TreeName::ALL.len()],
            sealed: vec![BTreeMap::new(); TreeName::ALL.len()],
            dropped_keys: Default::default(),
            commits: 0,
        }
    }
}

/// Applies the gathered commits to sled as one transaction (called by the flusher before it
/// flushes, so every commit it is about to make durable is in the log).
fn apply_overlay(
    trees: &[sled::Tree],
    lock: &RwLock<Overlay>,
    data_keys: &RwLock<HashMap<[u8; 16], Key>>,
) -> std::result::Result<(), String> {
    // Nothing gathered (the last flush or a backup applied it): no need to queue for the
    // exclusive side behind long readers.
    if lock.read_recursive().commits == 0 {
        return Ok(());
    }
    apply_gathered(trees, &mut lock.write(), data_keys)
}

/// [`apply_overlay`] with the exclusive side already held.
fn apply_gathered(
    trees: &[sled::Tree],
    ov: &mut Overlay,
    data_keys: &RwLock<HashMap<[u8; 16], Key>>,
) -> std::result::Result<(), String> {
    if ov.commits == 0 {
        return Ok(());
    }
    let result: std::result::Result<(), TransactionError<()>> = trees.transaction(|txs| {
        for (i, writes) in ov.sealed.iter().enumerate() {
            for (k, v) in writes {
                match v {
                    Some(v) => {
                        txs[i].insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        txs[i].remove(k.as_slice())?;
                    }
                }
            }
        }
        Ok::<(), ConflictableTransactionError<()>>(())
    });
    result.map_err(|e| match e {
        TransactionError::Storage(e) => format!("applying commits to the store: {e}"),
        TransactionError::Abort(()) => "applying commits to the store: aborted".to_string(),
    })?;
    {
        // A reader may have cached a deleted key from sled before this apply.
        let mut cache = data_keys.write();
        for profile in &ov.dropped_keys {
            cache.remove(profile);
        }
    }
    *ov = Overlay::new();
    Ok(())
}

/// `pending` (entries of `[lo, hi)` written over the data `below` reads) merged over it: at
/// most `limit` entries in key order (`rev`: descending). `below(n)` reads at most `n`.
fn merge_over(
    pending: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    lo: &[u8],
    hi: Option<&[u8]>,
    rev: bool,
    limit: usize,
    below: impl FnOnce(usize) -> Result<Entries>,
) -> Result<Entries> {
    if hi.is_some_and(|h| h <= lo) {
        return Ok(Vec::new());
    }
    let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = pending
        .range(lo.to_vec()..)
        .take_while(|(k, _)| hi.is_none_or(|h| k.as_slice() < h))
        .collect();
    if pending.is_empty() {
        return below(limit);
    }
    // Deletions can hide at most `pending.len()` entries below, so this many entries always
    // leave `limit` after the overlay, up to the last one read.
    let want = limit.saturating_add(pending.len());
    let committed = below(want)?;
    let truncated = committed.len() == want;
    let boundary = if truncated {
        committed.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
    for (k, v) in pending {
        let beyond = boundary
            .as_ref()
            .is_some_and(|b| if rev { k < b } else { k > b });
        if beyond {
            continue;
        }
        match v {
            Some(v) => {
                merged.insert(k.clone(), v.clone());
            }
            None => {
                merged.remove(k);
            }
        }
    }
    let out: Entries = if rev {
        merged.into_iter().rev().take(limit).collect()
    } else {
        merged.into_iter().take(limit).collect()
    };
    Ok(out)
}

/// sled-backed store.
pub struct SledStore {
    db: sled::Db,
    trees: Arc<Vec<sled::Tree>>,
    writer: Mutex<WriterState>,
    /// Commits not yet applied to sled, behind the lock that makes what readers see a
    /// snapshot (see [`Overlay`]).
    commit_lock: Arc<RwLock<Overlay>>,
    group: GroupCommit,
    crypto: Crypto,
    gate: tokio::sync::Mutex<()>,
    /// Unwrapped data keys by profile id.
    data_keys: Arc<RwLock<HashMap<[u8; 16], Key>>>,
    /// Refuses writes while the volume is almost full.
    space: SpaceGuard,
    /// Keeps `store.mark` following durability (detects a log that lost durable data).
    marker: Marker,
    /// Told what each commit wrote ([`Store::on_commit`]).
    hooks: RwLock<Vec<super::CommitHook>>,
}

/// How a tree's values are sealed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sealing {
    /// Not personal: ids, counters, times, empty index values.
    Plain,
    /// With the data key of the profile whose id starts the key.
    Profile,
    /// With the service key.
    Service,
}

fn sealing(t: TreeName) -> Sealing {
    match t {
        TreeName::Profiles
        | TreeName::ProfileIdentifiers
        | TreeName::AttributeHistory
        | TreeName::ProfileInteractions
        | TreeName::Consents
        | TreeName::Preferences
        | TreeName::Summaries
        | TreeName::SegmentTerms => Sealing::Profile,
        TreeName::IdentifierToProfile | TreeName::Merges | TreeName::Idempotency => {
            Sealing::Service
        }
        TreeName::Meta
        | TreeName::ProfileMerges
        | TreeName::IdempotencyExpiry
        | TreeName::IdempotencyMentions
        | TreeName::Changes
        | TreeName::SentMessages
        | TreeName::SegmentIndex
        | TreeName::InteractionIndex
        | TreeName::Erased
        | TreeName::DataKeys => Sealing::Plain,
    }
}

/// Whether every key of a tree starts with the id of the profile whose value it is, and
/// `None` for the trees whose writes a profile read never shows. `Some(false)`: the tree holds
/// something profile reads show under keys that name no profile (merge records).
fn keyed_by_profile(t: TreeName) -> Option<bool> {
    match t {
        TreeName::Profiles
        | TreeName::ProfileIdentifiers
        | TreeName::ProfileMerges
        | TreeName::AttributeHistory
        | TreeName::ProfileInteractions
        | TreeName::Consents
        | TreeName::Preferences
        | TreeName::Summaries
        | TreeName::SentMessages
        | TreeName::SegmentTerms
        | TreeName::Erased
        | TreeName::DataKeys => Some(true),
        TreeName::Merges => Some(false),
        TreeName::Meta
        | TreeName::IdentifierToProfile
        | TreeName::Idempotency
        | TreeName::IdempotencyExpiry
        | TreeName::IdempotencyMentions
        | TreeName::Changes
        | TreeName::SegmentIndex
        | TreeName::InteractionIndex => None,
    }
}

/// Tells `hooks` what `writes` (one commit's, per tree) wrote.
fn tell_hooks(hooks: &[super::CommitHook], writes: &[BTreeMap<Vec<u8>, Option<Vec<u8>>>]) {
    if hooks.is_empty() {
        return;
    }
    let mut profiles: Vec<ProfileId> = Vec::new();
    let mut everything = false;
    for t in TreeName::ALL {
        let w = &writes[t.index()];
        if w.is_empty() {
            continue;
        }
        match keyed_by_profile(t) {
            None => {}
            Some(false) => everything = true,
            Some(true) => {
                for k in w.keys() {
                    match k.get(..16).and_then(|p| <[u8; 16]>::try_from(p).ok()) {
                        Some(p) => profiles.push(ProfileId::from_bytes(p)),
                        // Cannot be attributed: be safe.
                        None => everything = true,
                    }
                }
            }
        }
    }
    let touched = if everything {
        super::Touched::Everything
    } else {
        profiles.sort_unstable();
        profiles.dedup();
        super::Touched::Profiles(&profiles)
    };
    for h in hooks {
        h(touched);
    }
}

fn profile_prefix(key: &[u8]) -> Result<[u8; 16]> {
    key.get(..16)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| Error::Corrupt("a profile key is shorter than a profile id".into()))
}

pub(super) fn sled_err(e: sled::Error) -> Error {
    match e {
        sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
        other => Error::Unavailable(other.to_string()),
    }
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Raw access to trees; the typed [`ReadView`] is built on it once for every reader.
trait Raw {
    /// Keys of index hashing.
    fn crypto(&self) -> &Crypto;
    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys in `[lo, hi)` (`hi = None`: to the end), ascending or descending, at most `limit`.
    fn range(
        &self,
        tree: TreeName,
        lo: &[u8],
        hi: Option<&[u8]>,
        rev: bool,
        limit: usize,
    ) -> Result<Entries>;
}

impl SledStore {
    /// Opens (or creates) the data directory, checks the schema version and starts group
    /// commit. A damaged directory is refused with [`Error::Corrupt`] naming it: sled 0.34 may
    /// panic on files it cannot parse, so the panic is caught and reported the same way.
    pub fn open(opts: &StoreOptions) -> Result<SledStore> {
        let damaged = |what: String| {
            Error::Corrupt(format!(
                "the data directory {} is damaged ({what}); restore it from a backup \
                 (`customer-profile restore --from <file> --data-dir <empty dir>`)",
                opts.path.display()
            ))
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_checked(opts))) {
            Ok(Ok(store)) => {
                store.index_idempotency_mentions()?;
                Ok(store)
            }
            Ok(Err(Error::Corrupt(what))) => Err(damaged(what)),
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                Err(damaged(format!(
                    "the storage engine failed reading it: {what}"
                )))
            }
        }
    }

    fn open_checked(opts: &StoreOptions) -> Result<SledStore> {
        std::fs::create_dir_all(&opts.path).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data directory {}: {e}",
                opts.path.display()
            ))
        })?;
        remove_partial_snapshots(&opts.path)?;
        let config = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(None);
        // sled's file lock is released when its I/O threads let go of a closed store, a moment
        // after the close; an in-process restart waits for that (bounded) instead of failing.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_held(&e) && attempts < 250 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(sled::Error::Io(e)) => {
                    return Err(Error::Unavailable(format!(
                        "cannot open data directory {} (is another server using it?): {e}",
                        opts.path.display()
                    )));
                }
                // Unreadable configuration or log: the files are damaged.
                Err(e) => return Err(Error::Corrupt(e.to_string())),
            }
        };
        let trees = TreeName::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(sled_err))
            .collect::<Result<Vec<_>>>()?;
        let meta = &trees[TreeName::Meta.index()];
        let read_u64 = |key: &[u8]| -> Result<u64> {
            match meta.get(key).map_err(sled_err)? {
                Some(v) => decode_u64(std::str::from_utf8(key).unwrap_or("meta"), &v),
                None => Ok(0),
            }
        };
        // Before anything is written: a store that lost durable data is refused as it is.
        mark::check(&opts.path, read_u64(keys::META_LAST_CHANGE_SEQ)?)?;
        check_schema(meta, &trees[TreeName::Profiles.index()])?;
        // Every tree in the sled tree of its name (directories of builds that shifted some).
        super::layout::ensure(&db, &trees, &opts.path)?;
        let crypto = Crypto::new(&opts.master_key);
        match meta.get(keys::META_MASTER_KEY_CHECK).map_err(sled_err)? {
            None => {
                meta.insert(keys::META_MASTER_KEY_CHECK, &crypto.check_value())
                    .map_err(sled_err)?;
            }
            Some(v) if v.as_ref() == crypto.check_value() => {}
            Some(_) => {
                return Err(Error::Unavailable(format!(
                    "the master key is not the one the data directory {} was written with; configure that key (encryption.master_key_file)",
                    opts.path.display()
                )));
            }
        }
        let last_change_seq = read_u64(keys::META_LAST_CHANGE_SEQ)?;
        let last_write_seq = read_u64(keys::META_LAST_WRITE_SEQ)?;
        db.flush().map_err(sled_err)?;
        let log_file = File::open(opts.path.join("db")).map_err(|e| {
            Error::Unavailable(format!("cannot open the store's log file for fsync: {e}"))
        })?;
        log_file
            .sync_all()
            .map_err(|e| Error::Unavailable(format!("cannot fsync the store's log file: {e}")))?;
        // sled writes `conf` without a sync and never syncs a directory: make the files and
        // names that exist now durable before the first write is acknowledged.
        let mut dirs = DirSync::for_sled(&opts.path);
        File::open(opts.path.join("conf"))
            .and_then(|f| f.sync_all())
            .and_then(|_| dirs.sync())
            .and_then(|_| match opts.path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
                _ => Ok(()),
            })
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot fsync the data directory {}: {e}",
                    opts.path.display()
                ))
            })?;
        let trees = Arc::new(trees);
        let commit_lock = Arc::new(RwLock::new(Overlay::new()));
        let data_keys = Arc::new(RwLock::new(HashMap::new()));
        let apply = {
            let (trees, commit_lock, data_keys) =
                (trees.clone(), commit_lock.clone(), data_keys.clone());
            Box::new(move || apply_overlay(&trees, &commit_lock, &data_keys))
        };
        let group = GroupCommit::start(
            db.clone(),
            log_file,
            dirs,
            Durable {
                commit: 0,
                change_seq: last_change_seq,
                fault: None,
            },
            apply,
        )
        .map_err(|e| Error::Unavailable(format!("cannot start the flusher thread: {e}")))?;
        let marker = Marker::start(&opts.path, group.subscribe())?;
        Ok(SledStore {
            db,
            trees,
            writer: Mutex::new(WriterState {
                commit: 0,
                last_change_seq,
                last_write_seq,
                closed: false,
            }),
            commit_lock,
            group,
            crypto,
            gate: tokio::sync::Mutex::new(()),
            data_keys,
            space: SpaceGuard::new(opts.path.clone(), opts.min_free_mb),
            marker,
            hooks: RwLock::new(Vec::new()),
        })
    }

    /// The data key of a profile, if it has one (committed).
    fn data_key(&self, profile: [u8; 16]) -> Result<Option<Key>> {
        // Held throughout, so no commit can delete the key between the check and the cache
        // insert below (which would keep a deleted key for good).
        let ov = self.commit_lock.read_recursive();
        if ov.dropped_keys.contains(&profile) {
            return Ok(None);
        }
        if let Some(k) = self.data_keys.read().get(&profile) {
            return Ok(Some(k.clone()));
        }
        let Some(wrapped) = self
            .tree(TreeName::DataKeys)
            .get(profile)
            .map_err(sled_err)?
        else {
            return Ok(None);
        };
        let k = self.crypto.unwrap_key(&profile, &wrapped)?;
        self.data_keys.write().insert(profile, k.clone());
        Ok(Some(k))
    }

    /// A value as read from sled, opened when sealed (values written before encryption at rest
    /// are plaintext and pass as they are).
    fn unseal(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        if value.first() != Some(&SEALED) {
            return Ok(value.to_vec());
        }
        let context: [&[u8]; 2] = [tree.name().as_bytes(), key];
        match sealing(tree) {
            Sealing::Plain => Ok(value.to_vec()),
            Sealing::Service => crypto::open(self.crypto.service_key(), &context, value),
            Sealing::Profile => {
                let profile = profile_prefix(key)?;
                let k = self.data_key(profile)?.ok_or_else(|| {
                    Error::Corrupt(format!("{}: no data key for its profile", tree.name()))
                })?;
                crypto::open(&k, &context, value)
            }
        }
    }

    fn tree(&self, t: TreeName) -> &sled::Tree {
        &self.trees[t.index()]
    }

    /// Size of the data on disk, bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(sled_err)
    }

    /// Declares a storage fault, as a failed flush would: writes are refused with UNAVAILABLE,
    /// reads go on, health turns NOT_SERVING (fault drills and tests).
    pub fn declare_fault(&self, reason: &str) {
        self.group.fail(reason);
    }

    /// Commit delay under concurrent writers (`storage.group_commit_delay_us`; 0 disables).
    pub fn set_group_commit_delay(&self, delay: std::time::Duration) {
        self.group.set_delay(delay);
    }

    /// Refuse writes (UNAVAILABLE) while the data directory's volume has less than `mb` MiB
    /// free (`storage.min_free_mb`; 0 disables). Takes effect on the next write.
    pub fn set_min_free_mb(&self, mb: u64) {
        self.space.set_min_free_mb(mb);
    }

    /// Fills `IdempotencyMentions` from every stored response, once per data directory
    /// (directories written before that index existed); later writes keep it.
    fn index_idempotency_mentions(&self) -> Result<()> {
        if self
            .get(TreeName::Meta, keys::META_IDEMPOTENCY_MENTIONS)?
            .is_some()
        {
            return Ok(());
        }
        let written = self.write_pending(&mut |p| {
            for (k, v) in p.range(TreeName::Idempotency, &[], None, false, usize::MAX)? {
                let record: IdempotentRecord = decode("idempotency record", &v)?;
                for u in keys::mentioned_uuids(&record.response) {
                    p.set(
                        TreeName::IdempotencyMentions,
                        keys::idempotency_mention(&u, &k),
                        Vec::new(),
                    );
                }
            }
            p.set(
                TreeName::Meta,
                keys::META_IDEMPOTENCY_MENTIONS.to_vec(),
                vec![1],
            );
            Ok(())
        });
        if let Err(e) = written {
            // Not fatal: erasure scans every stored response until the index is complete.
            tracing::warn!(error = %e, "could not index stored idempotent responses; erasure falls back to scanning them");
        }
        Ok(())
    }

    /// Number of flushes so far.
    pub fn flushes(&self) -> u64 {
        self.group.flushes()
    }

    fn write_pending(&self, f: &mut dyn FnMut(&mut Pending<'_>) -> Result<()>) -> Result<Ticket> {
        let mut w = self.writer.lock();
        if w.closed {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        if let Some(fault) = &self.group.subscribe().borrow().fault {
            return Err(Error::Unavailable(format!(
                "the store hit a storage fault: {fault}"
            )));
        }
        self.space.check()?;
        let mut p = Pending {
            store: self,
            writes: vec![BTreeMap::new(); TreeName::ALL.len()],
            change_seq: w.last_change_seq,
            write_seq: w.last_write_seq,
            dropped_keys: Vec::new(),
            undo: None,
            last_event: None,
        };
        f(&mut p)?;
        if p.writes.iter().all(BTreeMap::is_empty) {
            return Ok(Ticket(w.commit));
        }
        if p.change_seq != w.last_change_seq {
            p.set(
                TreeName::Meta,
                keys::META_LAST_CHANGE_SEQ.to_vec(),
                p.change_seq.to_be_bytes().to_vec(),
            );
        }
        if p.write_seq != w.last_write_seq {
            p.set(
                TreeName::Meta,
                keys::META_LAST_WRITE_SEQ.to_vec(),
                p.write_seq.to_be_bytes().to_vec(),
            );
        }
        let (sealed, new_keys) = self.seal_writes(&p)?;
        let Pending {
            writes,
            change_seq,
            write_seq,
            dropped_keys,
            ..
        } = p;
        {
            let mut ov = self.commit_lock.write();
            let ov = &mut *ov;
            tell_hooks(&self.hooks.read(), &writes);
            for (mine, gathered) in writes.into_iter().zip(ov.plain.iter_mut()) {
                gathered.extend(mine);
            }
            // New data keys exist only sealed (wrapped, stored as they are): reads see those.
            let keys = TreeName::DataKeys.index();
            ov.plain[keys].extend(sealed[keys].iter().cloned());
            for (mine, gathered) in sealed.into_iter().zip(ov.sealed.iter_mut()) {
                gathered.extend(mine);
            }
            ov.commits += 1;
            let mut cache = self.data_keys.write();
            for profile in dropped_keys {
                cache.remove(&profile);
                ov.dropped_keys.insert(profile);
            }
            for (profile, k) in new_keys {
                ov.dropped_keys.remove(&profile);
                cache.insert(profile, k);
            }
        }
        w.commit += 1;
        w.last_change_seq = change_seq;
        w.last_write_seq = write_seq;
        self.group.request(w.commit, w.last_change_seq);
        Ok(Ticket(w.commit))
    }
}

/// First bytes of a backup file: format 2 tags each record with its tree's position in
/// [`TreeName::ALL`].
const BACKUP_MAGIC: &[u8; 9] = b"CPBACKUP2";
/// Format 1: tags whose meaning depends on the build (see `layout::v1_tree_map`).
const BACKUP_MAGIC_V1: &[u8; 9] = b"CPBACKUP1";
/// Ends the records of a backup file.
const BACKUP_END: u8 = 0xFF;

impl SledStore {
    /// Writes a consistent snapshot of every tree to `sink` (values as stored, so encrypted
    /// ones stay encrypted), ending with the record count and a SHA-256 of everything before
    /// it. Commits wait while it runs. The commits gathered so far are applied first, so their
    /// flush does not wait for the backup, and the backup holds everything committed before it.
    pub fn backup(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        use sha2::{Digest, Sha256};
        let _snapshot = {
            let mut ov = self.commit_lock.write();
            apply_gathered(&self.trees, &mut ov, &self.data_keys).map_err(Error::Unavailable)?;
            parking_lot::RwLockWriteGuard::downgrade(ov)
        };
        let mut hash = Sha256::new();
        let mut emit = |bytes: &[u8], hash: &mut Sha256| -> Result<()> {
            hash.update(bytes);
            sink(bytes)
        };
        emit(BACKUP_MAGIC, &mut hash)?;
        let mut n = 0u64;
        let mut buf = Vec::with_capacity(64 * 1024);
        for t in TreeName::ALL {
            for item in self.tree(t).iter() {
                let (k, v) = item.map_err(sled_err)?;
                buf.push(t.index() as u8);
                buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
                buf.extend_from_slice(&k);
                buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
                buf.extend_from_slice(&v);
                n += 1;
                if buf.len() >= 60 * 1024 {
                    emit(&buf, &mut hash)?;
                    buf.clear();
                }
            }
        }
        buf.push(BACKUP_END);
        buf.extend_from_slice(&n.to_be_bytes());
        emit(&buf, &mut hash)?;
        let digest: [u8; 32] = hash.finalize().into();
        sink(&digest)?;
        Ok(n)
    }

    /// Loads a backup file into `dir`, which must be empty or absent. The whole file is
    /// checked (format and checksum) before anything is written; a damaged file is refused.
    pub fn restore(file: &std::path::Path, dir: &std::path::Path) -> Result<u64> {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(file)
            .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", file.display())))?;
        let bad = |why: &str| Error::Corrupt(format!("backup {}: {why}", file.display()));
        if bytes.len() < BACKUP_MAGIC.len() + 1 + 8 + 32
            || !(bytes.starts_with(BACKUP_MAGIC) || bytes.starts_with(BACKUP_MAGIC_V1))
        {
            return Err(bad("not a customer-profile backup"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(bad("checksum mismatch: the file is damaged or incomplete"));
        }
        // Parse everything first.
        let mut records: Vec<(usize, &[u8], &[u8])> = Vec::new();
        let mut at = BACKUP_MAGIC.len();
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let end = at
                .checked_add(n)
                .filter(|e| *e <= body.len())
                .ok_or_else(|| bad("truncated record"))?;
            let out = &body[*at..end];
            *at = end;
            Ok(out)
        };
        loop {
            let tag = take(&mut at, 1)?[0];
            if tag == BACKUP_END {
                break;
            }
            if usize::from(tag) >= TreeName::ALL.len() {
                return Err(bad("unknown tree"));
            }
            let klen = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("length"))?)
                as usize;
            let k = take(&mut at, klen)?;
            let vlen = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("length"))?)
                as usize;
            let v = take(&mut at, vlen)?;
            records.push((usize::from(tag), k, v));
        }
        let count = u64::from_be_bytes(take(&mut at, 8)?.try_into().map_err(|_| bad("count"))?);
        if count != records.len() as u64 || at != body.len() {
            return Err(bad("record count does not match"));
        }
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", dir.display())))?
                .next()
                .is_some()
        {
            return Err(Error::Unavailable(format!(
                "{} is not empty; restore only into an empty data directory",
                dir.display()
            )));
        }
        let db = sled::Config::new().path(dir).open().map_err(sled_err)?;
        let trees = TreeName::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(sled_err))
            .collect::<Result<Vec<_>>>()?;
        // Each record into the sled tree at its tag's position, as the writing build kept it
        // (format 1 of the builds e69ea4f..11fad48 included): the directory is then what
        // that build had on disk, and the layout check at open sorts it out.
        for (t, k, v) in &records {
            trees[*t].insert(*k, *v).map_err(sled_err)?;
        }
        flush_and_sync(&db, dir)?;
        Ok(count)
    }
}

type SealedWrites = Vec<Vec<(Vec<u8>, Option<Vec<u8>>)>>;
/// Data keys created in a transaction, by profile id.
type NewKeys = Vec<([u8; 16], Key)>;

impl SledStore {
    /// The write set with personal values sealed, plus the data keys created for profiles
    /// written for the first time (their wrapped form is part of the write set).
    fn seal_writes(&self, p: &Pending<'_>) -> Result<(SealedWrites, NewKeys)> {
        let mut out: SealedWrites = vec![Vec::new(); TreeName::ALL.len()];
        let mut new_keys: NewKeys = Vec::new();
        for t in TreeName::ALL {
            for (k, v) in &p.writes[t.index()] {
                let value = match (v, sealing(t)) {
                    (None, _) => None,
                    (Some(v), _) if v.is_empty() => Some(v.clone()),
                    (Some(v), Sealing::Plain) => Some(v.clone()),
                    (Some(v), Sealing::Service) => Some(crypto::seal(
                        self.crypto.service_key(),
                        &[t.name().as_bytes(), k],
                        v,
                    )?),
                    (Some(v), Sealing::Profile) => {
                        let profile = profile_prefix(k)?;
                        if p.dropped_keys.contains(&profile) {
                            // Sealing it with a key this transaction deletes would store a
                            // value no one can read: a bug in the rules, refused whole.
                            return Err(Error::Unavailable(format!(
                                "{}: a value for profile {} written in the transaction that erases it",
                                t.name(),
                                uuid::Uuid::from_bytes(profile)
                            )));
                        }
                        let key = match new_keys.iter().find(|(p, _)| *p == profile) {
                            Some((_, key)) => key.clone(),
                            None => match self.data_key(profile)? {
                                Some(key) => key,
                                None => {
                                    let key = Key::generate()?;
                                    new_keys.push((profile, key.clone()));
                                    key
                                }
                            },
                        };
                        Some(crypto::seal(&key, &[t.name().as_bytes(), k], v)?)
                    }
                };
                out[t.index()].push((k.clone(), value));
            }
        }
        for (profile, key) in &new_keys {
            out[TreeName::DataKeys.index()]
                .push((profile.to_vec(), Some(self.crypto.wrap(profile, key)?)));
        }
        Ok((out, new_keys))
    }
}

/// sled's flush, then our own fsync of its log: sled's flush alone is not a sync point
/// (ARCHITECTURE, durability). For the one-off writes outside group commit (restore, the
/// layout check).
pub(super) fn flush_and_sync(db: &sled::Db, dir: &std::path::Path) -> Result<()> {
    db.flush().map_err(sled_err)?;
    File::open(dir.join("db"))
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Unavailable(format!("cannot fsync the store's log file: {e}")))
}

/// Whether sled failed to open because its lock on the directory is held. sled 0.34 reports
/// that as `ErrorKind::Other` with the lock error in the message, not as `WouldBlock`.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Deletes snapshot files sled did not finish (`snap.<lsn>.generating`), before sled opens the
/// directory. sled 0.34 writes its snapshot at every open into `snap.<lsn>.generating`, syncs
/// it and renames it; a kill before the rename leaves the file, and at the next open sled takes
/// it for the newest snapshot (its name sorts after `snap.<lsn>`), finds its checksum wrong
/// and refuses to open ("Read corrupted data") for good. Found by the crash harness, which
/// kills the server during start-up too. An unfinished snapshot holds nothing the log does not:
/// without it sled starts from the last complete one. Skipped while another process holds
/// sled's lock on the directory (its snapshot may be in the making).
fn remove_partial_snapshots(dir: &std::path::Path) -> Result<()> {
    let io = |e: std::io::Error| {
        Error::Unavailable(format!(
            "cannot tidy the data directory {}: {e}",
            dir.display()
        ))
    };
    let log = match File::open(dir.join("db")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if fs2::FileExt::try_lock_exclusive(&log).is_err() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing a snapshot sled did not finish (the process was stopped while writing it)");
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    fs2::FileExt::unlock(&log).map_err(io)?;
    Ok(())
}

/// Checks (or, in an empty store, writes) the schema version: a newer one refuses to start.
fn check_schema(meta: &sled::Tree, profiles: &sled::Tree) -> Result<()> {
    match meta.get(keys::META_SCHEMA_VERSION).map_err(sled_err)? {
        None => {
            if !profiles.is_empty() {
                return Err(Error::Corrupt(
                    "the data directory holds profiles but no schema version".into(),
                ));
            }
            meta.insert(keys::META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes())
                .map_err(sled_err)?;
        }
        Some(v) => {
            let found = decode_u64("schema_version", &v)?;
            if found > SCHEMA_VERSION {
                return Err(Error::Unavailable(format!(
                    "the data directory has schema version {found}, newer than this build's {SCHEMA_VERSION}; run a newer release"
                )));
            }
            // Older schemas are migrated here when there are any (v1 is the first).
        }
    }
    Ok(())
}

impl Raw for SledStore {
    fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // Shared side again: the reader holds it already, and a plain read would wait behind a
        // queued commit that waits for this reader.
        if let Some(v) = self.commit_lock.read_recursive().plain[tree.index()].get(key) {
            return Ok(v.clone());
        }
        self.tree(tree)
            .get(key)
            .map_err(sled_err)?
            .map(|v| self.unseal(tree, key, &v))
            .transpose()
    }

    fn range(
        &self,
        tree: TreeName,
        lo: &[u8],
        hi: Option<&[u8]>,
        rev: bool,
        limit: usize,
    ) -> Result<Entries> {
        let ov = self.commit_lock.read_recursive();
        let pending = &ov.plain[tree.index()];
        merge_over(pending, lo, hi, rev, limit, |n| {
            self.sled_range(tree, lo, hi, rev, n, pending)
        })
    }
}

impl SledStore {
    /// Entries of sled alone; see [`Raw::range`]. Those `overlaid` will replace come back with
    /// an empty value, unopened: a commit not yet applied may have deleted their data key.
    fn sled_range(
        &self,
        tree: TreeName,
        lo: &[u8],
        hi: Option<&[u8]>,
        rev: bool,
        limit: usize,
        overlaid: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Result<Entries> {
        let t = self.tree(tree);
        let iter = match hi {
            Some(hi) if hi <= lo => return Ok(Vec::new()),
            Some(hi) => t.range(lo..hi),
            None => t.range(lo..),
        };
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if rev {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        iter.take(limit)
            .map(|r| {
                let (k, v) = r.map_err(sled_err)?;
                if overlaid.contains_key(k.as_ref()) {
                    return Ok((k.to_vec(), Vec::new()));
                }
                let v = self.unseal(tree, &k, &v)?;
                Ok((k.to_vec(), v))
            })
            .collect()
    }
}

/// The write set of the transaction being built, over committed data.
struct Pending<'a> {
    store: &'a SledStore,
    writes: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    change_seq: u64,
    write_seq: u64,
    /// Profiles erased in this transaction (their data keys go).
    dropped_keys: Vec<[u8; 16]>,
    /// Since the last savepoint, when one is set: what each write replaced in the write set.
    undo: Option<Undo>,
    /// The change event this transaction emitted last (since its last savepoint), which the next
    /// one may join (see [`WriteTx::emit`] below).
    last_event: Option<ChangeEvent>,
}

/// A write-set entry as it was before a write: tree, key, and its earlier pending value
/// (`None`: not in the write set).
type Replaced = (TreeName, Vec<u8>, Option<Option<Vec<u8>>>);

/// What a rollback restores: the write-set entries overwritten since the savepoint (`None`:
/// the key was not in the write set) and the counters as they were.
struct Undo {
    entries: Vec<Replaced>,
    change_seq: u64,
    write_seq: u64,
    dropped_keys: usize,
}

impl Pending<'_> {
    /// Deletes the stored response under `idem` with its expiry entry and every mention
    /// entry; false if there was none.
    fn forget_idempotent(&mut self, idem: &[u8]) -> Result<bool> {
        let Some(v) = self.get(TreeName::Idempotency, idem)? else {
            return Ok(false);
        };
        let record: IdempotentRecord = decode("idempotency record", &v)?;
        for u in keys::mentioned_uuids(&record.response) {
            self.delete(
                TreeName::IdempotencyMentions,
                keys::idempotency_mention(&u, idem),
            );
        }
        self.delete(
            TreeName::IdempotencyExpiry,
            keys::idempotency_expiry(record.created_at, idem),
        );
        self.delete(TreeName::Idempotency, idem.to_vec());
        Ok(true)
    }

    fn set(&mut self, tree: TreeName, key: Vec<u8>, value: Vec<u8>) {
        self.put(tree, key, Some(value));
    }

    fn delete(&mut self, tree: TreeName, key: Vec<u8>) {
        self.put(tree, key, None);
    }

    fn put(&mut self, tree: TreeName, key: Vec<u8>, value: Option<Vec<u8>>) {
        match &mut self.undo {
            None => {
                self.writes[tree.index()].insert(key, value);
            }
            Some(undo) => {
                let old = self.writes[tree.index()].insert(key.clone(), value);
                undo.entries.push((tree, key, old));
            }
        }
    }
}

impl Raw for Pending<'_> {
    fn crypto(&self) -> &Crypto {
        &self.store.crypto
    }

    fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes[tree.index()].get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(tree, key),
        }
    }

    fn range(
        &self,
        tree: TreeName,
        lo: &[u8],
        hi: Option<&[u8]>,
        rev: bool,
        limit: usize,
    ) -> Result<Entries> {
        merge_over(&self.writes[tree.index()], lo, hi, rev, limit, |n| {
            self.store.range(tree, lo, hi, rev, n)
        })
    }
}

/// An identifier's index key: a keyed hash, so no identifier is stored in plaintext.
fn ident_key(c: &Crypto, id: &Identifier) -> Vec<u8> {
    c.hash("identifier", &keys::identifier(id)).to_vec()
}

/// Origin profile ++ identifier hash.
fn profile_ident_key(c: &Crypto, profile: ProfileId, id: &Identifier) -> Vec<u8> {
    let mut k = keys::profile(profile).to_vec();
    k.extend_from_slice(&ident_key(c, id));
    k
}

/// A segment index term as stored: attribute values as keyed hashes (`h` ++ 20 bytes);
/// identifier kinds and consent pairs (not personal) as they are.
fn term_key(c: &Crypto, t: &IndexTerm) -> Vec<u8> {
    match t {
        IndexTerm::Attr { .. } => {
            let mut k = vec![b'h'];
            k.extend_from_slice(&c.hash("term", &keys::index_term(t))[..20]);
            k
        }
        _ => keys::index_term(t),
    }
}

/// A range bucket of an attribute (`r` ++ 20 bytes of keyed hash).
fn bucket_key(c: &Crypto, path: &str, tag: u8, bucket: i64) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(&c.hash("bucket", &keys::bucket_term(path, tag, bucket))[..20]);
    k
}

/// Every segment index key of one term of `profile`.
fn term_entries(c: &Crypto, t: &IndexTerm, profile: ProfileId) -> Vec<Vec<u8>> {
    let mut out = vec![term_key(c, t)];
    if let IndexTerm::Attr { path, value } = t {
        if let Some(b) = keys::bucket_of(value) {
            out.push(bucket_key(c, path, value.tag(), b));
        }
    }
    for k in &mut out {
        k.extend_from_slice(profile.as_bytes());
    }
    out
}

/// The interaction index prefix: the type in clear (not personal), an attribute key and value
/// as a keyed hash.
fn interaction_prefix(c: &Crypto, kind: &str, attr: Option<(&str, &str)>) -> Vec<u8> {
    match attr {
        None => keys::interaction_index_prefix(kind, None),
        Some((k, v)) => {
            let mut p = vec![b'a'];
            p.extend_from_slice(kind.as_bytes());
            p.push(0);
            let plain = [k.as_bytes(), &[0], v.as_bytes()].concat();
            p.extend_from_slice(&c.hash("interaction attribute", &plain)[..20]);
            p
        }
    }
}

/// Every interaction index key of `i`.
fn interaction_entries(c: &Crypto, i: &Interaction) -> Vec<Vec<u8>> {
    let mut prefixes = vec![interaction_prefix(c, &i.kind, None)];
    for (k, v) in &i.attributes {
        prefixes.push(interaction_prefix(c, &i.kind, Some((k, v))));
    }
    prefixes
        .iter()
        .map(|p| keys::interaction_index(p, i.occurred_at, i.origin, i.id))
        .collect()
}

fn prefix_bounds(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    (prefix.to_vec(), keys::prefix_end(prefix))
}

impl<R: Raw> ReadView for R {
    fn import_position(&self, file: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.get(TreeName::Meta, &keys::import_position(file))
    }

    fn profile(&self, id: ProfileId) -> Result<Option<ProfileRecord>> {
        self.get(TreeName::Profiles, &keys::profile(id))?
            .map(|v| decode("profile", &v))
            .transpose()
    }

    fn identifier_link(&self, id: &Identifier) -> Result<Option<IdentifierLink>> {
        self.get(TreeName::IdentifierToProfile, &ident_key(self.crypto(), id))?
            .map(|v| decode("identifier link", &v))
            .transpose()
    }

    fn own_identifiers(&self, profile: ProfileId) -> Result<Vec<IdentifierLink>> {
        let (lo, hi) = prefix_bounds(&keys::profile(profile));
        self.range(
            TreeName::ProfileIdentifiers,
            &lo,
            hi.as_deref(),
            false,
            usize::MAX,
        )?
        .iter()
        .map(|(_, v)| decode("profile identifier", v))
        .collect()
    }

    fn merge(&self, id: MergeId) -> Result<Option<MergeRecord>> {
        self.get(TreeName::Merges, &keys::merge(id))?
            .map(|v| decode("merge", &v))
            .transpose()
    }

    fn merges_of(&self, profile: ProfileId) -> Result<Vec<MergeId>> {
        let (lo, hi) = prefix_bounds(&keys::profile(profile));
        self.range(
            TreeName::ProfileMerges,
            &lo,
            hi.as_deref(),
            false,
            usize::MAX,
        )?
        .iter()
        .map(|(k, _)| keys::merge_of_profile_merge(k))
        .collect()
    }

    fn history(&self, profile: ProfileId, after: u64, limit: usize) -> Result<Vec<HistoryEntry>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let lo = keys::history(profile, from);
        let hi = keys::prefix_end(&keys::profile(profile));
        self.range(TreeName::AttributeHistory, &lo, hi.as_deref(), false, limit)?
            .iter()
            .map(|(_, v)| decode("history entry", v))
            .collect()
    }

    fn interactions(
        &self,
        profile: ProfileId,
        before: Option<InteractionCursor>,
        limit: usize,
    ) -> Result<Vec<Interaction>> {
        let lo = keys::profile(profile).to_vec();
        let hi = match before {
            Some((t, id)) => Some(keys::interaction(profile, t, id).to_vec()),
            None => keys::prefix_end(&lo),
        };
        self.range(
            TreeName::ProfileInteractions,
            &lo,
            hi.as_deref(),
            true,
            limit,
        )?
        .iter()
        .map(|(_, v)| decode("interaction", v))
        .collect()
    }

    fn idempotent_response(&self, scope: &str, request_id: &str) -> Result<Option<Vec<u8>>> {
        self.get(TreeName::Idempotency, &keys::idempotency(scope, request_id))?
            .map(|v| decode::<IdempotentRecord>("idempotency record", &v).map(|r| r.response))
            .transpose()
    }

    fn consents(&self, profile: ProfileId) -> Result<Vec<ConsentRecord>> {
        let (lo, hi) = prefix_bounds(&keys::profile(profile));
        self.range(TreeName::Consents, &lo, hi.as_deref(), false, usize::MAX)?
            .iter()
            .map(|(_, v)| decode("consent record", v))
            .collect()
    }

    fn preferences(&self, profile: ProfileId) -> Result<Option<Preferences>> {
        self.get(TreeName::Preferences, &keys::profile(profile))?
            .map(|v| decode("preferences", &v))
            .transpose()
    }

    fn summary(&self, profile: ProfileId) -> Result<Option<Summary>> {
        self.get(TreeName::Summaries, &keys::profile(profile))?
            .map(|v| decode("summary", &v))
            .transpose()
    }

    fn message_sent(&self, profile: ProfileId, message_key: &str) -> Result<Option<Timestamp>> {
        self.get(
            TreeName::SentMessages,
            &keys::sent_message(profile, message_key),
        )?
        .map(|v| decode("sent message", &v))
        .transpose()
    }

    fn index_terms(&self, profile: ProfileId) -> Result<Vec<IndexTerm>> {
        Ok(self
            .get(TreeName::SegmentTerms, &keys::profile(profile))?
            .map(|v| decode("segment terms", &v))
            .transpose()?
            .unwrap_or_default())
    }

    fn index_scan(&self, q: &IndexQuery, limit: usize) -> Result<Option<Vec<ProfileId>>> {
        let prefixes = match q {
            IndexQuery::Term(t) => vec![term_key(self.crypto(), t)],
            IndexQuery::AttrRange { path, lower, upper } => {
                let tag = lower.as_ref().or(upper.as_ref()).map(|(v, _)| v.tag());
                let (Some(tag), Some(buckets)) = (
                    tag,
                    keys::buckets_between(
                        lower.as_ref().map(|(v, _)| v),
                        upper.as_ref().map(|(v, _)| v),
                    ),
                ) else {
                    return Ok(None);
                };
                buckets
                    .map(|b| bucket_key(self.crypto(), path, tag, b))
                    .collect()
            }
        };
        let mut out = Vec::new();
        for p in prefixes {
            if out.len() >= limit {
                break;
            }
            let (lo, hi) = prefix_bounds(&p);
            for (k, _) in self.range(
                TreeName::SegmentIndex,
                &lo,
                hi.as_deref(),
                false,
                limit - out.len(),
            )? {
                out.push(keys::profile_of_index_entry(&k)?);
            }
        }
        Ok(Some(out))
    }

    fn term_postings(
        &self,
        term: &IndexTerm,
        after: Option<ProfileId>,
        limit: usize,
    ) -> Result<Vec<ProfileId>> {
        let prefix = term_key(self.crypto(), term);
        let (mut lo, hi) = prefix_bounds(&prefix);
        if let Some(a) = after {
            // Entries are the term's key ++ a 16-byte id: this is the first key above `a`'s.
            lo.extend_from_slice(a.as_bytes());
            lo.push(0);
        }
        self.range(TreeName::SegmentIndex, &lo, hi.as_deref(), false, limit)?
            .iter()
            .map(|(k, _)| keys::profile_of_index_entry(k))
            .collect()
    }

    fn interactions_indexed(
        &self,
        kind: &str,
        attr: Option<(&str, &str)>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<ProfileId>> {
        let prefix = interaction_prefix(self.crypto(), kind, attr);
        let mut lo = prefix.clone();
        lo.extend_from_slice(&keys::time_bytes(since));
        let hi = keys::prefix_end(&prefix);
        self.range(TreeName::InteractionIndex, &lo, hi.as_deref(), false, limit)?
            .iter()
            .map(|(k, _)| keys::origin_of_interaction_index(k))
            .collect()
    }

    fn erased(&self, profile: ProfileId) -> Result<Option<Timestamp>> {
        self.get(TreeName::Erased, &keys::profile(profile))?
            .map(|v| decode("erasure tombstone", &v))
            .transpose()
    }

    fn profiles_after(&self, after: Option<ProfileId>, limit: usize) -> Result<Vec<ProfileRecord>> {
        let lo = match after {
            Some(a) => match keys::prefix_end(&keys::profile(a)) {
                Some(k) => k,
                None => return Ok(Vec::new()),
            },
            None => Vec::new(),
        };
        self.range(TreeName::Profiles, &lo, None, false, limit)?
            .iter()
            .map(|(_, v)| decode("profile", v))
            .collect()
    }
}

impl WriteTx for Pending<'_> {
    fn put_profile(&mut self, p: &ProfileRecord) -> Result<()> {
        self.set(TreeName::Profiles, keys::profile(p.id).to_vec(), encode(p)?);
        Ok(())
    }

    fn put_link(&mut self, link: &IdentifierLink) -> Result<()> {
        let v = encode(link)?;
        let c = self.crypto();
        let (k1, k2) = (
            ident_key(c, &link.identifier),
            profile_ident_key(c, link.origin, &link.identifier),
        );
        self.set(TreeName::IdentifierToProfile, k1, v.clone());
        self.set(TreeName::ProfileIdentifiers, k2, v);
        Ok(())
    }

    fn remove_link(&mut self, link: &IdentifierLink) -> Result<()> {
        let c = self.crypto();
        let (k1, k2) = (
            ident_key(c, &link.identifier),
            profile_ident_key(c, link.origin, &link.identifier),
        );
        self.delete(TreeName::IdentifierToProfile, k1);
        self.delete(TreeName::ProfileIdentifiers, k2);
        Ok(())
    }

    fn put_merge(&mut self, m: &MergeRecord) -> Result<()> {
        self.set(TreeName::Merges, keys::merge(m.id).to_vec(), encode(m)?);
        self.set(
            TreeName::ProfileMerges,
            keys::profile_merge(m.survivor, m.id).to_vec(),
            Vec::new(),
        );
        self.set(
            TreeName::ProfileMerges,
            keys::profile_merge(m.absorbed, m.id).to_vec(),
            Vec::new(),
        );
        Ok(())
    }

    fn put_history(&mut self, h: &HistoryEntry) -> Result<()> {
        self.set(
            TreeName::AttributeHistory,
            keys::history(h.origin, h.write_seq).to_vec(),
            encode(h)?,
        );
        Ok(())
    }

    fn put_interaction(&mut self, i: &Interaction) -> Result<()> {
        self.set(
            TreeName::ProfileInteractions,
            keys::interaction(i.origin, i.occurred_at, i.id).to_vec(),
            encode(i)?,
        );
        for k in interaction_entries(self.crypto(), i) {
            self.set(TreeName::InteractionIndex, k, Vec::new());
        }
        Ok(())
    }

    fn put_consent(&mut self, c: &ConsentRecord) -> Result<()> {
        self.set(
            TreeName::Consents,
            keys::consent(c.origin, c.write_seq).to_vec(),
            encode(c)?,
        );
        Ok(())
    }

    fn put_preferences(&mut self, profile: ProfileId, p: &Preferences) -> Result<()> {
        self.set(
            TreeName::Preferences,
            keys::profile(profile).to_vec(),
            encode(p)?,
        );
        Ok(())
    }

    fn put_summary(&mut self, profile: ProfileId, s: &Summary) -> Result<()> {
        self.set(
            TreeName::Summaries,
            keys::profile(profile).to_vec(),
            encode(s)?,
        );
        Ok(())
    }

    fn put_message_sent(
        &mut self,
        profile: ProfileId,
        message_key: &str,
        at: Timestamp,
    ) -> Result<()> {
        self.set(
            TreeName::SentMessages,
            keys::sent_message(profile, message_key),
            encode(&at)?,
        );
        Ok(())
    }

    fn set_index_terms(
        &mut self,
        profile: ProfileId,
        old: &[IndexTerm],
        new: &[IndexTerm],
    ) -> Result<()> {
        for t in old {
            if !new.contains(t) {
                for k in term_entries(self.crypto(), t, profile) {
                    self.delete(TreeName::SegmentIndex, k);
                }
            }
        }
        for t in new {
            if !old.contains(t) {
                for k in term_entries(self.crypto(), t, profile) {
                    self.set(TreeName::SegmentIndex, k, Vec::new());
                }
            }
        }
        if new.is_empty() {
            self.delete(TreeName::SegmentTerms, keys::profile(profile).to_vec());
        } else {
            self.set(
                TreeName::SegmentTerms,
                keys::profile(profile).to_vec(),
                encode(&new.to_vec())?,
            );
        }
        Ok(())
    }

    fn put_idempotent_response(
        &mut self,
        scope: &str,
        request_id: &str,
        at: Timestamp,
        response: &[u8],
    ) -> Result<()> {
        let key = keys::idempotency(scope, request_id);
        let record = IdempotentRecord {
            created_at: at,
            response: response.to_vec(),
        };
        self.set(
            TreeName::IdempotencyExpiry,
            keys::idempotency_expiry(at, &key),
            Vec::new(),
        );
        for u in keys::mentioned_uuids(response) {
            self.set(
                TreeName::IdempotencyMentions,
                keys::idempotency_mention(&u, &key),
                Vec::new(),
            );
        }
        self.set(TreeName::Idempotency, key, encode(&record)?);
        Ok(())
    }

    fn erase_profile(&mut self, profile: ProfileId, at: Timestamp) -> Result<()> {
        let (lo, hi) = prefix_bounds(&keys::profile(profile));
        for link in self.own_identifiers(profile)? {
            self.remove_link(&link)?;
        }
        for i in self.interactions(profile, None, usize::MAX)? {
            for k in interaction_entries(self.crypto(), &i) {
                self.delete(TreeName::InteractionIndex, k);
            }
        }
        let terms = self.index_terms(profile)?;
        self.set_index_terms(profile, &terms, &[])?;
        for tree in [
            TreeName::AttributeHistory,
            TreeName::ProfileInteractions,
            TreeName::Consents,
            TreeName::SentMessages,
        ] {
            for (k, _) in self.range(tree, &lo, hi.as_deref(), false, usize::MAX)? {
                self.delete(tree, k);
            }
        }
        for tree in [
            TreeName::Preferences,
            TreeName::Summaries,
            TreeName::Profiles,
        ] {
            self.delete(tree, keys::profile(profile).to_vec());
        }
        self.set(
            TreeName::Erased,
            keys::profile(profile).to_vec(),
            encode(&at)?,
        );
        // The data key goes with the records (SPEC §10): copies of them left in sled's log
        // or in a backup taken before can no longer be opened.
        self.delete(TreeName::DataKeys, keys::profile(profile).to_vec());
        self.dropped_keys.push(*profile.as_bytes());
        Ok(())
    }

    fn purge_idempotency_mentioning(&mut self, needles: &[String]) -> Result<usize> {
        // Through the mentions index: a stored response is read only if it names one of the
        // needles (a scan of every response, under the write gate, made each erasure cost
        // the whole day's idempotency records).
        let mut gone = 0;
        if self
            .get(TreeName::Meta, keys::META_IDEMPOTENCY_MENTIONS)?
            .is_none()
        {
            // Responses stored before the index existed may not be in it yet: read them all.
            for (k, v) in self.range(TreeName::Idempotency, &[], None, false, usize::MAX)? {
                let record: IdempotentRecord = decode("idempotency record", &v)?;
                let mentions = needles
                    .iter()
                    .any(|n| record.response.windows(n.len()).any(|w| w == n.as_bytes()));
                if mentions && self.forget_idempotent(&k)? {
                    gone += 1;
                }
            }
            return Ok(gone);
        }
        for needle in needles {
            let Ok(u) = uuid::Uuid::try_parse(needle) else {
                return Err(Error::Corrupt(format!(
                    "purging idempotent responses: {needle:?} is not a UUID"
                )));
            };
            let prefix = u.as_bytes().to_vec();
            let (lo, hi) = prefix_bounds(&prefix);
            for (k, _) in self.range(
                TreeName::IdempotencyMentions,
                &lo,
                hi.as_deref(),
                false,
                usize::MAX,
            )? {
                let idem = k[16..].to_vec();
                if self.forget_idempotent(&idem)? {
                    gone += 1;
                }
                self.delete(TreeName::IdempotencyMentions, k);
            }
        }
        Ok(gone)
    }

    fn next_write_seq(&mut self) -> Result<u64> {
        self.write_seq += 1;
        Ok(self.write_seq)
    }

    fn savepoint(&mut self) {
        // An event is never joined across a savepoint, so a rollback never has to split one.
        self.last_event = None;
        self.undo = Some(Undo {
            entries: Vec::new(),
            change_seq: self.change_seq,
            write_seq: self.write_seq,
            dropped_keys: self.dropped_keys.len(),
        });
    }

    fn rollback_to_savepoint(&mut self) -> Result<()> {
        let undo = self.undo.take().ok_or_else(|| {
            Error::Unavailable("rollback without a savepoint (a bug in the caller)".into())
        })?;
        // Newest first, so a key written twice since the savepoint ends as it was before both.
        for (tree, key, old) in undo.entries.into_iter().rev() {
            match old {
                Some(v) => {
                    self.writes[tree.index()].insert(key, v);
                }
                None => {
                    self.writes[tree.index()].remove(&key);
                }
            }
        }
        self.change_seq = undo.change_seq;
        self.write_seq = undo.write_seq;
        self.dropped_keys.truncate(undo.dropped_keys);
        self.savepoint();
        Ok(())
    }

    fn put_import_position(&mut self, file: &[u8; 32], position: &[u8]) -> Result<()> {
        self.set(
            TreeName::Meta,
            keys::import_position(file),
            position.to_vec(),
        );
        Ok(())
    }

    /// A change of the same kind to the same profile (with the same related profiles) as the
    /// event this transaction emitted just before joins it: one event with the later version and
    /// both sets of paths. An import line records its consents and its interactions one by one
    /// (one event each before, 13.8 events a customer in the benchmark's data); a consumer could
    /// not see the versions in between anyway, as the transaction commits whole.
    fn emit(&mut self, change: NewChange, at: Timestamp) -> Result<u64> {
        if let Some(last) = self.last_event.as_mut().filter(|e| {
            e.profile == change.profile
                && e.kind == change.kind
                && e.related == change.related
                && e.version <= change.version
                && e.recorded_at == at
        }) {
            last.version = change.version;
            for path in change.paths {
                if !last.paths.contains(&path) {
                    last.paths.push(path);
                }
            }
            let sequence = last.sequence;
            let value = encode(&*last)?;
            self.set(TreeName::Changes, keys::change(sequence).to_vec(), value);
            return Ok(sequence);
        }
        self.change_seq += 1;
        let event = ChangeEvent {
            sequence: self.change_seq,
            kind: change.kind,
            profile: change.profile,
            version: change.version,
            paths: change.paths,
            related: change.related,
            recorded_at: at,
        };
        self.set(
            TreeName::Changes,
            keys::change(event.sequence).to_vec(),
            encode(&event)?,
        );
        let sequence = event.sequence;
        self.last_event = Some(event);
        Ok(sequence)
    }
}

/// Entries removed per prune transaction, so pruning never holds the writer for long.
const PRUNE_BATCH: usize = 1000;

impl Store for SledStore {
    fn write_gate(&self) -> &tokio::sync::Mutex<()> {
        &self.gate
    }

    fn on_commit(&self, hook: super::CommitHook) {
        self.hooks.write().push(hook);
    }

    fn stats(&self) -> super::StoreStats {
        super::StoreStats {
            size_on_disk: self.size_on_disk().unwrap_or(0),
            commits: self.writer.lock().commit,
            flushes: self.flushes(),
            flush_micros: self.group.flush_micros(),
        }
    }

    fn read(&self, f: &mut dyn FnMut(&dyn ReadView) -> Result<()>) -> Result<()> {
        let _shared = self.commit_lock.read();
        // Holding the shared side of the commit lock makes the committed trees a snapshot.
        f(self)
    }

    fn write(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> Result<()>) -> Result<Ticket> {
        self.write_pending(&mut |p| f(p))
    }

    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>> {
        let mut rx = self.group.subscribe();
        Box::pin(async move {
            let state = rx
                .wait_for(|d| d.commit >= ticket.0 || d.fault.is_some())
                .await
                .map_err(|_| Error::Unavailable("the flusher stopped".into()))?;
            match &state.fault {
                Some(f) if state.commit < ticket.0 => Err(Error::Unavailable(format!(
                    "the write could not be made durable: {f}"
                ))),
                _ => Ok(()),
            }
        })
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        let durable = self.group.subscribe().borrow().change_seq;
        if after >= durable {
            return Ok(Vec::new());
        }
        let lo = keys::change(after.saturating_add(1));
        let hi = keys::change(durable.saturating_add(1));
        let _shared = self.commit_lock.read();
        self.range(TreeName::Changes, &lo, Some(&hi), false, limit)?
            .iter()
            .map(|(_, v)| decode("change event", v))
            .collect()
    }

    fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.group.subscribe()
    }

    fn changes_floor(&self) -> Result<u64> {
        match self.get(TreeName::Meta, keys::META_CHANGES_FLOOR)? {
            Some(v) => decode_u64("changes_floor", &v),
            None => Ok(0),
        }
    }

    fn prune(&self, changes_before: Timestamp, idempotency_before: Timestamp) -> Result<usize> {
        let mut removed = 0;
        loop {
            let mut n = 0;
            self.write_pending(&mut |p| {
                n = 0;
                let floor = match p.get(TreeName::Meta, keys::META_CHANGES_FLOOR)? {
                    Some(v) => decode_u64("changes_floor", &v)?,
                    None => 0,
                };
                let mut new_floor = floor;
                let lo = keys::change(floor.saturating_add(1));
                for (k, v) in p.range(TreeName::Changes, &lo, None, false, PRUNE_BATCH)? {
                    let e: ChangeEvent = decode("change event", &v)?;
                    if e.recorded_at >= changes_before {
                        break;
                    }
                    p.delete(TreeName::Changes, k);
                    new_floor = e.sequence;
                    n += 1;
                }
                if new_floor != floor {
                    p.set(
                        TreeName::Meta,
                        keys::META_CHANGES_FLOOR.to_vec(),
                        new_floor.to_be_bytes().to_vec(),
                    );
                }
                for (k, _) in p.range(TreeName::IdempotencyExpiry, &[], None, false, PRUNE_BATCH)? {
                    let (at, idem) = keys::parse_idempotency_expiry(&k)?;
                    if at >= idempotency_before {
                        break;
                    }
                    let idem = idem.to_vec();
                    p.forget_idempotent(&idem)?;
                    p.delete(TreeName::IdempotencyExpiry, k);
                    n += 1;
                }
                Ok(())
            })?;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }

    fn close(&self) -> Result<()> {
        self.writer.lock().closed = true;
        self.group.stop();
        // After a storage fault nothing more is flushed: the commits that failed to apply or
        // flush were never acknowledged, and one that failed to apply may be half in sled.
        if let Some(fault) = &self.group.subscribe().borrow().fault {
            return Err(Error::Unavailable(format!(
                "the store hit a storage fault and its last commits were not made durable: {fault}"
            )));
        }
        self.db.flush().map_err(sled_err)?;
        let durable = self.group.subscribe().borrow().change_seq;
        self.marker.close(durable)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn open(dir: &std::path::Path) -> Result<SledStore> {
        SledStore::open(&StoreOptions {
            path: dir.to_path_buf(),
            cache_capacity_bytes: 8 << 20,
            master_key: crate::store::crypto::Key([7; 32]),
            min_free_mb: 0,
        })
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    /// With a commit delay, concurrent writers share flushes; every write is still made
    /// durable before its acknowledgement, and a lone writer's write is flushed too.
    #[test]
    fn a_commit_delay_makes_concurrent_writes_share_flushes() -> Result<()> {
        let dir = tempdir();
        let store = std::sync::Arc::new(open(dir.path())?);
        store.set_group_commit_delay(std::time::Duration::from_millis(20));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let now = Timestamp(1_000_000);
        let write_one = |store: std::sync::Arc<SledStore>| async move {
            let ticket = Store::write(&*store, &mut |tx| {
                tx.put_profile(&ProfileRecord::new(ProfileId::new_at(now), now))
            })?;
            store.durable(ticket).await
        };
        rt.block_on(write_one(store.clone()))?;
        let before = store.flushes();
        let writes = 200;
        rt.block_on(async {
            let tasks: Vec<_> = (0..writes)
                .map(|_| tokio::spawn(write_one(store.clone())))
                .collect();
            for t in tasks {
                t.await.map_err(|e| Error::Unavailable(e.to_string()))??;
            }
            Ok::<(), Error>(())
        })?;
        let flushes = store.flushes() - before;
        assert!(
            flushes * 4 <= writes,
            "{writes} concurrent writes took {flushes} flushes"
        );
        rt.block_on(write_one(store.clone()))?;
        Ok(())
    }

    #[test]
    fn erasure_deletes_the_data_key_and_every_value_sealed_with_it() -> Result<()> {
        use crate::domain::identity::ProfileKey;
        let dir = tempdir();
        let store = open(dir.path())?;
        let now = Timestamp(1_000_000);
        let (a, b) = (ProfileId::new_at(now), ProfileId::new_at(now));
        Store::write(&store, &mut |tx| {
            for id in [a, b] {
                tx.put_profile(&ProfileRecord::new(id, now))?;
                tx.put_preferences(id, &Preferences::default())?;
                tx.put_summary(id, &Summary::default())?;
            }
            Ok(())
        })?;
        let key_of = |p: ProfileId| Raw::get(&store, TreeName::DataKeys, p.as_bytes());
        assert!(key_of(a)?.is_some() && key_of(b)?.is_some());
        Store::write(&store, &mut |tx| {
            crate::domain::privacy::erase(tx, &ProfileKey::Id(a), now).map(|_| ())
        })?;
        assert!(key_of(a)?.is_none(), "the data key went with the records");
        assert!(key_of(b)?.is_some(), "another profile keeps its key");
        let (lo, hi) = prefix_bounds(a.as_bytes());
        for t in TreeName::ALL {
            if sealing(t) == Sealing::Profile {
                let left = Raw::range(&store, t, &lo, hi.as_deref(), false, 10)?;
                assert!(
                    left.is_empty(),
                    "{}: {} values of the erased profile",
                    t.name(),
                    left.len()
                );
            }
        }
        assert!(store.data_key(*a.as_bytes())?.is_none(), "nor is it cached");
        // Writing for an erased profile in the erasing transaction is refused whole.
        let refused = Store::write(&store, &mut |tx| {
            crate::domain::privacy::erase(tx, &ProfileKey::Id(b), now)?;
            tx.put_summary(b, &Summary::default())
        });
        assert!(refused.is_err());
        assert!(
            key_of(b)?.is_some(),
            "nothing of the refused transaction was written"
        );
        store.close()?;
        drop(store);
        // After a restart the erased profile reads as erased, the other as it was.
        let store = open(dir.path())?;
        assert!(Raw::get(&store, TreeName::Profiles, &keys::profile(a))?.is_none());
        assert!(Raw::get(&store, TreeName::Profiles, &keys::profile(b))?.is_some());
        Ok(())
    }

    #[test]
    fn erasure_purges_the_responses_that_mention_a_profile_through_the_index_and_without_it()
    -> Result<()> {
        let dir = tempdir();
        let store = open(dir.path())?;
        let now = Timestamp(1_000_000);
        let (a, b, c) = (
            ProfileId::new_at(now),
            ProfileId::new_at(now),
            ProfileId::new_at(now),
        );
        let put = |store: &SledStore| -> Result<()> {
            Store::write(store, &mut |tx| {
                tx.put_idempotent_response("s", "ab", now, format!("x{a}y{b}z").as_bytes())?;
                tx.put_idempotent_response("s", "c", now, format!("{c}").as_bytes())?;
                Ok(())
            })?;
            Ok(())
        };
        let mentions = |store: &SledStore| -> Result<usize> {
            Ok(Raw::range(store, TreeName::IdempotencyMentions, &[], None, false, 100)?.len())
        };
        let purge = |store: &SledStore, p: ProfileId| -> Result<usize> {
            let mut n = 0;
            Store::write(store, &mut |tx| {
                n = tx.purge_idempotency_mentioning(&[p.to_string()])?;
                Ok(())
            })?;
            Ok(n)
        };
        put(&store)?;
        assert_eq!(mentions(&store)?, 3, "a, b and c are indexed");
        assert_eq!(purge(&store, b)?, 1);
        assert!(store.idempotent_response("s", "ab")?.is_none(), "gone");
        assert!(store.idempotent_response("s", "c")?.is_some(), "kept");
        assert_eq!(mentions(&store)?, 1, "a's entry went with the response");
        assert_eq!(purge(&store, b)?, 0, "nothing left to purge");

        // A data directory from before the index: no flag, no entries. Erasure still finds
        // the responses (by reading them all), and the next open indexes them.
        put(&store)?;
        store.write_pending(&mut |p| {
            p.delete(TreeName::Meta, keys::META_IDEMPOTENCY_MENTIONS.to_vec());
            for (k, _) in p.range(TreeName::IdempotencyMentions, &[], None, false, 100)? {
                p.delete(TreeName::IdempotencyMentions, k);
            }
            Ok(())
        })?;
        assert_eq!(mentions(&store)?, 0);
        assert_eq!(purge(&store, a)?, 1, "found without the index");
        assert!(store.idempotent_response("s", "ab")?.is_none());
        put(&store)?;
        store.close()?;
        drop(store);
        let store = open(dir.path())?;
        assert!(Raw::get(&store, TreeName::Meta, keys::META_IDEMPOTENCY_MENTIONS)?.is_some());
        assert_eq!(mentions(&store)?, 3, "indexed at open");
        assert_eq!(purge(&store, c)?, 1);
        Ok(())
    }

    #[test]
    fn rollback_to_a_savepoint_takes_back_only_what_followed_it() -> Result<()> {
        let dir = tempdir();
        let store = open(dir.path())?;
        let now = Timestamp(1_000_000);
        let (a, b) = (ProfileId::new_at(now), ProfileId::new_at(now));
        let change = |p: ProfileId| NewChange {
            kind: crate::domain::profile::ChangeKind::ProfileCreated,
            profile: p,
            version: 1,
            paths: vec![],
            related: vec![],
        };
        let mut first = ProfileRecord::new(a, now);
        Store::write(&store, &mut |tx| {
            tx.savepoint();
            tx.put_profile(&first)?;
            tx.emit(change(a), now)?;
            tx.savepoint();
            first.version = 9;
            tx.put_profile(&first)?;
            tx.put_profile(&ProfileRecord::new(b, now))?;
            tx.emit(change(b), now)?;
            tx.next_write_seq()?;
            tx.rollback_to_savepoint()?;
            Ok(())
        })?;
        let (pa, pb) = (store.profile(a)?, store.profile(b)?);
        assert_eq!(pa.map(|p| p.version), Some(1), "a as before the savepoint");
        assert!(pb.is_none(), "b was rolled back");
        let changes = Raw::range(&store, TreeName::Changes, &[], None, false, 10)?;
        assert_eq!(changes.len(), 1, "one change event, no gap");
        let event: ChangeEvent = decode("change", &changes[0].1)?;
        assert_eq!((event.sequence, event.profile), (1, a));
        let w = store.writer.lock();
        assert_eq!((w.last_change_seq, w.last_write_seq), (1, 0));
        Ok(())
    }

    /// Every tree's entries, as the store reads them.
    fn contents(store: &SledStore) -> Result<Vec<Entries>> {
        TreeName::ALL
            .iter()
            .map(|t| Raw::range(store, *t, &[], None, false, usize::MAX))
            .collect()
    }

    /// A store with profiles, change events and an erasure, plus a record of the right shape
    /// in each other tree the shifted indices moved: something in every one of them.
    fn filled(dir: &std::path::Path) -> Result<Vec<Entries>> {
        use crate::domain::identity::ProfileKey;
        use crate::domain::profile::ChangeKind;
        let store = open(dir)?;
        let now = Timestamp(1_000_000);
        let ids: Vec<ProfileId> = (0..5).map(|_| ProfileId::new_at(now)).collect();
        Store::write(&store, &mut |tx| {
            for id in &ids {
                tx.put_profile(&ProfileRecord::new(*id, now))?;
                tx.put_preferences(*id, &Preferences::default())?;
                tx.put_summary(*id, &Summary::default())?;
                tx.emit(
                    NewChange {
                        kind: ChangeKind::ProfileCreated,
                        profile: *id,
                        version: 1,
                        paths: vec![],
                        related: vec![],
                    },
                    now,
                )?;
            }
            Ok(())
        })?;
        Store::write(&store, &mut |tx| {
            crate::domain::privacy::erase(tx, &ProfileKey::Id(ids[0]), now).map(|_| ())
        })?;
        let p = *ids[1].as_bytes();
        let long = |mut head: Vec<u8>, tail: &[u8]| {
            head.extend_from_slice(tail);
            head
        };
        store.write_pending(&mut |tx| {
            tx.set(
                TreeName::IdempotencyMentions,
                long(p.to_vec(), b"req-1"),
                vec![],
            );
            tx.set(
                TreeName::Consents,
                long(p.to_vec(), &7u64.to_be_bytes()),
                b"consent".to_vec(),
            );
            tx.set(
                TreeName::SentMessages,
                long(p.to_vec(), b"welcome"),
                b"sent".to_vec(),
            );
            tx.set(TreeName::SegmentTerms, p.to_vec(), b"terms".to_vec());
            tx.set(TreeName::SegmentIndex, long(b"g\0\0".to_vec(), &p), vec![]);
            tx.set(TreeName::InteractionIndex, long(vec![b'i'; 34], &p), vec![]);
            Ok(())
        })?;
        let before = contents(&store)?;
        for t in super::super::layout::moved() {
            assert!(
                !before[t.index()].is_empty(),
                "the fixture leaves {} empty",
                t.name()
            );
        }
        store.close()?;
        Ok(before)
    }

    /// Rewrites a directory as builds e69ea4f..the layout fix kept it: each moved tree's
    /// entries in the sled tree of its neighbour, no layout mark.
    fn shift(dir: &std::path::Path) -> Result<sled::Db> {
        let db = open_raw(dir)?;
        let mut moved: Vec<(TreeName, Vec<(sled::IVec, sled::IVec)>)> = Vec::new();
        for t in super::super::layout::moved() {
            let tree = db.open_tree(t.name()).map_err(sled_err)?;
            let entries = tree
                .iter()
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(sled_err)?;
            tree.clear().map_err(sled_err)?;
            moved.push((t, entries));
        }
        for (t, entries) in moved {
            let home = db
                .open_tree(super::super::layout::shifted_home(t).name())
                .map_err(sled_err)?;
            for (k, v) in entries {
                home.insert(k, v).map_err(sled_err)?;
            }
        }
        db.open_tree(TreeName::Meta.name())
            .and_then(|m| m.remove(keys::META_TREE_LAYOUT))
            .map_err(sled_err)?;
        db.flush().map_err(sled_err)?;
        Ok(db)
    }

    /// sled itself on a directory the store closed (its lock is let go a moment later).
    fn open_raw(dir: &std::path::Path) -> Result<sled::Db> {
        for _ in 0..250 {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(e)) if is_lock_held(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(sled_err(e)),
            }
        }
        Err(Error::Unavailable("the directory stayed locked".into()))
    }

    #[test]
    fn a_directory_with_the_shifted_tree_layout_is_moved_and_reads_as_before() -> Result<()> {
        let dir = tempdir();
        let before = filled(dir.path())?;
        drop(shift(dir.path())?);
        let store = open(dir.path())?;
        assert_eq!(contents(&store)?, before);
        // sled's names now say what the trees hold, and no copy is left.
        let names = store.db.tree_names();
        assert!(
            !names.iter().any(|n| n.starts_with(b"layout_migration_")),
            "copies left"
        );
        {
            let raw_changes = store.db.open_tree("changes").map_err(sled_err)?;
            assert!(
                raw_changes
                    .iter()
                    .keys()
                    .all(|k| k.map(|k| k.len() == 8).unwrap_or(false))
            );
        }
        store.close()?;
        drop(store);
        // Once marked, a directory is not looked at again and still reads the same.
        let store = open(dir.path())?;
        assert_eq!(contents(&store)?, before);
        Ok(())
    }

    #[test]
    fn a_layout_migration_cut_short_after_its_copies_is_finished_at_the_next_open() -> Result<()> {
        let dir = tempdir();
        let before = filled(dir.path())?;
        let db = shift(dir.path())?;
        // The state of a crash in the second step: complete copies and their mark, one tree
        // of its name already cleared, the others as the shifted build left them.
        for t in super::super::layout::moved() {
            let home = db
                .open_tree(super::super::layout::shifted_home(t).name())
                .map_err(sled_err)?;
            let tmp = db
                .open_tree(super::super::layout::tmp_name(t))
                .map_err(sled_err)?;
            for kv in home.iter() {
                let (k, v) = kv.map_err(sled_err)?;
                tmp.insert(k, v).map_err(sled_err)?;
            }
        }
        let meta = db.open_tree(TreeName::Meta.name()).map_err(sled_err)?;
        meta.insert(keys::META_LAYOUT_MIGRATION, &[1u8])
            .map_err(sled_err)?;
        // The refill had cleared the trees that held the change events and the data keys
        // (`changes` and `data_keys` take them back), and had put half the data keys in place:
        // only the copies and their mark still say where everything belongs.
        for t in [TreeName::Consents, TreeName::IdempotencyMentions] {
            db.open_tree(t.name())
                .and_then(|t| t.clear())
                .map_err(sled_err)?;
        }
        let keys_copy = db
            .open_tree(super::super::layout::tmp_name(TreeName::DataKeys))
            .map_err(sled_err)?;
        let data_keys = db.open_tree(TreeName::DataKeys.name()).map_err(sled_err)?;
        data_keys.clear().map_err(sled_err)?;
        for kv in keys_copy.iter().step_by(2) {
            let (k, v) = kv.map_err(sled_err)?;
            data_keys.insert(k, v).map_err(sled_err)?;
        }
        drop((keys_copy, data_keys));
        db.flush().map_err(sled_err)?;
        drop((meta, db));
        let store = open(dir.path())?;
        assert_eq!(contents(&store)?, before);
        Ok(())
    }

    #[test]
    fn a_directory_with_records_of_both_layouts_is_refused_with_what_to_do() -> Result<()> {
        let dir = tempdir();
        filled(dir.path())?;
        let db = open_raw(dir.path())?;
        // A change event where the shifted indices kept them, beside the named ones.
        db.open_tree(TreeName::Consents.name())
            .and_then(|t| t.insert(9u64.to_be_bytes(), &[1u8][..]))
            .map_err(sled_err)?;
        db.open_tree(TreeName::Meta.name())
            .and_then(|m| m.remove(keys::META_TREE_LAYOUT))
            .map_err(sled_err)?;
        db.flush().map_err(sled_err)?;
        drop(db);
        let err = open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("two tree layouts") && err.contains("restore a backup"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn an_unfinished_snapshot_left_by_a_kill_does_not_keep_the_store_from_opening() -> Result<()> {
        let dir = tempdir();
        let before = filled(dir.path())?;
        // What a kill during sled's snapshot write at open leaves: a partial
        // `snap.<lsn>.generating`, sorting after every finished snapshot.
        std::fs::write(
            dir.path().join("snap.FFFFFFFFFFFFFFF0.generating"),
            b"part of a snapshot",
        )
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        let store = open(dir.path())?;
        assert_eq!(contents(&store)?, before);
        assert!(!dir.path().join("snap.FFFFFFFFFFFFFFF0.generating").exists());
        Ok(())
    }

    #[test]
    fn refuses_a_newer_schema_and_accepts_the_current_one() -> Result<()> {
        // One open only: sled 0.34 does not support closing and reopening in one process.
        let dir = tempdir();
        let store = open(dir.path())?;
        let meta = store.tree(TreeName::Meta);
        let profiles = store.tree(TreeName::Profiles);
        check_schema(meta, profiles)?;
        meta.insert(keys::META_SCHEMA_VERSION, &99u64.to_be_bytes())
            .map_err(sled_err)?;
        let err = check_schema(meta, profiles)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("schema version 99"), "{err}");
        Ok(())
    }

    proptest! {
        /// The write set's range scans equal a plain ordered map with every layer applied in
        /// order: sled, the commits gathered in the overlay (not yet applied), the write set.
        #[test]
        fn pending_range_equals_a_map_with_the_writes_applied(
            committed in proptest::collection::btree_map(0u8..40, 0u8..5, 0..30),
            gathered in proptest::collection::vec((0u8..40, proptest::option::of(0u8..5)), 0..30),
            writes in proptest::collection::vec((0u8..40, proptest::option::of(0u8..5)), 0..30),
            lo in 0u8..40, span in 0u8..45, rev: bool, limit in 0usize..12,
        ) {
            let dir = tempdir();
            let store = open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let tree = store.tree(TreeName::Changes);
            for (k, v) in &committed {
                tree.insert([*k], &[*v]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut model: BTreeMap<u8, u8> = committed.clone();
            // Opening writes (the idempotency-mentions mark): apply it first, so the flusher
            // never clears the layer set up below.
            apply_overlay(&store.trees, &store.commit_lock, &store.data_keys).map_err(TestCaseError::fail)?;
            {
                // Gathered but not counted as a commit, so the flusher never applies it.
                let mut ov = store.commit_lock.write();
                for (k, v) in &gathered {
                    ov.plain[TreeName::Changes.index()].insert(vec![*k], v.map(|v| vec![v]));
                    match v {
                        Some(v) => { model.insert(*k, *v); }
                        None => { model.remove(k); }
                    }
                }
            }
            let mut p = Pending { store: &store, writes: vec![BTreeMap::new(); TreeName::ALL.len()], change_seq: 0, write_seq: 0, dropped_keys: Vec::new(), undo: None, last_event: None };
            for (k, v) in &writes {
                match v {
                    Some(v) => { p.set(TreeName::Changes, vec![*k], vec![*v]); model.insert(*k, *v); }
                    None => { p.delete(TreeName::Changes, vec![*k]); model.remove(k); }
                }
            }
            let hi = lo.saturating_add(span);
            let got = p.range(TreeName::Changes, &[lo], Some(&[hi]), rev, limit).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let in_range = model.range(lo..hi.max(lo)).map(|(k, v)| (vec![*k], vec![*v]));
            let want: Vec<(Vec<u8>, Vec<u8>)> = if rev { in_range.rev().take(limit).collect() } else { in_range.take(limit).collect() };
            prop_assert_eq!(got, want);
        }
    }
}
