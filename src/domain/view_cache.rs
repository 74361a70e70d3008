//! Loaded profiles kept between reads: a GetProfile that hits reads no stored value.
//!
//! An entry is the [`TreeSnapshot`] a lookup id leads to, whatever part of the tree that id is.
//! The store tells the cache, inside every commit and before any reader can see the commit,
//! which profiles it wrote ([`ViewCache::invalidate`]); every entry whose tree has one of them
//! as a member goes. Readers insert only inside the read that loaded the snapshot (the store's
//! snapshot lock is held then), so an entry can never outlive a commit that changed it: the
//! commit either came before the read (the read saw it) or after the insert (it removed it).
//!
//! Bounded by a number of entries; the oldest inserted goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::identity::ProfileKey;
use super::ids::ProfileId;
use super::ports::ReadView;
use super::profiles::{Parts, ProfileView, TreeSnapshot};
use super::rules::Rules;
use super::time::Timestamp;
use crate::error::Result;

/// What a commit wrote, as far as loaded profiles are concerned.
#[derive(Debug, Clone, Copy)]
pub enum Touched<'a> {
    /// Values of these profiles (and nothing that a profile read shows besides).
    Profiles(&'a [ProfileId]),
    /// Something the cache cannot attribute to profiles (merge records): drop everything.
    Everything,
}

struct Entry {
    snapshot: Arc<TreeSnapshot>,
    /// Tells a queued insertion of this id from a later one.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ProfileId, Entry>,
    /// Member id → the lookup ids whose entries hold a tree with that member.
    by_member: HashMap<ProfileId, Vec<ProfileId>>,
    /// Insertion order (lookup id, generation); stale pairs are skipped.
    order: VecDeque<(ProfileId, u64)>,
    generation: u64,
}

impl Inner {
    fn remove(&mut self, id: ProfileId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        for m in e.snapshot.member_ids() {
            if let Some(ids) = self.by_member.get_mut(&m) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_member.remove(&m);
                }
            }
        }
    }
}

/// The cache. `capacity` 0 keeps nothing.
pub struct ViewCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ViewCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl ViewCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> ViewCache {
        ViewCache {
            capacity,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The snapshot `id` leads to, if kept.
    pub fn get(&self, id: ProfileId) -> Option<Arc<TreeSnapshot>> {
        if self.capacity == 0 {
            return None;
        }
        let found = self
            .inner
            .lock()
            .entries
            .get(&id)
            .map(|e| e.snapshot.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `snapshot` as what `id` leads to. Call only inside the read that loaded it.
    pub fn insert(&self, id: ProfileId, snapshot: Arc<TreeSnapshot>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        inner.remove(id);
        inner.generation += 1;
        let generation = inner.generation;
        for m in snapshot.member_ids() {
            inner.by_member.entry(m).or_default().push(id);
        }
        inner.entries.insert(
            id,
            Entry {
                snapshot,
                generation,
            },
        );
        inner.order.push_back((id, generation));
        while inner.entries.len() > self.capacity {
            let Some((old, g)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&old).is_some_and(|e| e.generation == g) {
                inner.remove(old);
            }
        }
        // Removals leave their pairs queued; drop them once they outnumber the live ones.
        if inner.order.len() > 2 * self.capacity + 64 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(id, g)| entries.get(id).is_some_and(|e| e.generation == *g));
        }
    }

    /// Drops every entry a commit that wrote `touched` may have changed.
    pub fn invalidate(&self, touched: Touched<'_>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        match touched {
            Touched::Everything => *inner = Inner::default(),
            Touched::Profiles(ids) => {
                for m in ids {
                    if let Some(lookups) = inner.by_member.get(m).cloned() {
                        for id in lookups {
                            inner.remove(id);
                        }
                    }
                }
            }
        }
    }

    /// The view at `now` of the profile `key` names, with the optional `parts` asked for, and
    /// the snapshot it was made from: the kept snapshot, or one loaded (every part) and kept.
    /// With the cache off, the view is loaded as before the cache existed, only the parts asked
    /// for, and there is no snapshot. Readers keep what they derive from the snapshot in its
    /// [`Memo`](super::profiles::Memo). Call it inside a read.
    pub fn view_and_snapshot(
        &self,
        view: &dyn ReadView,
        key: &ProfileKey,
        parts: Parts,
        rules: &Rules,
        now: Timestamp,
    ) -> Result<(ProfileView, Option<Arc<TreeSnapshot>>)> {
        if self.capacity == 0 {
            return Ok((
                super::profiles::view_profile(view, key, parts, rules, now)?,
                None,
            ));
        }
        let snapshot = self.snapshot(view, key, rules)?;
        Ok((snapshot.view(parts, rules, now), Some(snapshot)))
    }

    /// The snapshot of the profile `key` names: kept, or loaded from `view` and kept. Call it
    /// inside a read (`view` is that read's).
    pub fn snapshot(
        &self,
        view: &dyn ReadView,
        key: &ProfileKey,
        rules: &Rules,
    ) -> Result<Arc<TreeSnapshot>> {
        let id = match key {
            ProfileKey::Id(id) => Some(*id),
            ProfileKey::Identifier(ident) => view.identifier_link(ident)?.map(|l| l.origin),
        };
        if let Some(s) = id.and_then(|id| self.get(id)) {
            return Ok(s);
        }
        let s = Arc::new(TreeSnapshot::load(view, key, rules)?);
        if let Some(id) = id {
            self.insert(id, s.clone());
        }
        Ok(s)
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered from the cache since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that had to load since start.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}
