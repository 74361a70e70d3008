//! Storage: the only module that imports sled. The service layer sees the [`Store`] trait;
//! the rules see the `domain::ports` traits. The store holds no business rules.

pub mod codec;
pub mod crypto;
mod dir_sync;
pub use dir_sync::{sync_dir, write_durably};
mod group_commit;
pub mod keys;
mod layout;
mod mark;
mod sled_store;
mod space;
#[doc(hidden)]
pub(crate) use sled_store::decode_idempotent_record;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

pub use group_commit::Durable;
pub use sled_store::{SledStore, StoreOptions};

use crate::domain::ports::{ReadView, WriteTx};
use crate::domain::profile::ChangeEvent;
use crate::domain::time::Timestamp;
pub use crate::domain::view_cache::Touched;
use crate::error::{Error, Result};

/// Identifies a committed write; wait on it with [`Store::durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The storage the service runs on. sled is the single-node implementation; a distributed
/// backend implements the same trait.
pub trait Store: Send + Sync + 'static {
    /// Runs `f` over a consistent snapshot of committed data.
    fn read(&self, f: &mut dyn FnMut(&dyn ReadView) -> Result<()>) -> Result<()>;
    /// The one write path: runs `f` against a transaction that sees its own writes, then
    /// commits everything it wrote atomically (all trees at once), or nothing if `f` fails.
    /// Writers are serialized. Returns a ticket to wait for durability with.
    fn write(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> Result<()>) -> Result<Ticket>;
    /// Resolves once every commit up to `ticket` is on stable storage.
    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>>;
    /// Durable change events with a sequence above `after`, at most `limit`, in order.
    fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeEvent>>;
    /// Follows durability: the last durable commit and change sequence.
    fn watch_durable(&self) -> watch::Receiver<Durable>;
    /// Every change with a sequence above this is retained.
    fn changes_floor(&self) -> Result<u64>;
    /// Deletes change events recorded before `changes_before` and idempotency records created
    /// before `idempotency_before`; returns how many entries went.
    fn prune(&self, changes_before: Timestamp, idempotency_before: Timestamp) -> Result<usize>;
    /// Makes everything durable and stops background work. Further writes fail.
    fn close(&self) -> Result<()>;
    /// Figures for metrics.
    fn stats(&self) -> StoreStats;
    /// Writers queue here asynchronously before [`Store::write`], so a writer waiting its
    /// turn never blocks a runtime thread (readers, metrics and health keep being served).
    fn write_gate(&self) -> &tokio::sync::Mutex<()>;
    /// Calls `hook` inside every later commit, before any reader can see it, with what the
    /// commit wrote (caches of loaded profiles drop what it changed). Not called for a commit
    /// that wrote nothing. The hook must not read or write the store.
    fn on_commit(&self, hook: CommitHook);
}

/// See [`Store::on_commit`].
pub type CommitHook = Box<dyn Fn(Touched<'_>) + Send + Sync>;

/// Store figures for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Bytes on disk.
    pub size_on_disk: u64,
    /// Write transactions committed since start.
    pub commits: u64,
    /// Flushes (fsyncs) since start: commits / flushes = writes per fsync.
    pub flushes: u64,
    /// Time spent in flushes since start, microseconds.
    pub flush_micros: u64,
}

impl dyn Store {
    /// [`Store::read`] returning a value.
    pub fn read_with<T>(&self, f: impl FnOnce(&dyn ReadView) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.read(&mut |view| {
            let f = f
                .take()
                .ok_or_else(|| Error::Unavailable("read callback ran twice".into()))?;
            out = Some(f(view)?);
            Ok(())
        })?;
        out.ok_or_else(|| Error::Unavailable("read callback did not run".into()))
    }

    /// [`Store::write`] returning a value, then waiting until it is durable.
    pub async fn write_with<T>(&self, f: impl FnOnce(&mut dyn WriteTx) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        let ticket = {
            let _turn = self.write_gate().lock().await;
            self.write(&mut |tx| {
                let f = f
                    .take()
                    .ok_or_else(|| Error::Unavailable("write callback ran twice".into()))?;
                out = Some(f(tx)?);
                Ok(())
            })?
        };
        // Waiting for durability outside the gate lets the next writers join this flush.
        self.durable(ticket).await?;
        out.ok_or_else(|| Error::Unavailable("write callback did not run".into()))
    }
}

#[cfg(test)]
mod consent_tests;
#[cfg(test)]
mod model_tests;
