//! Which sled tree holds which of ours, checked once per data directory at open.
//!
//! Builds from e69ea4f to 11fad48 reached some trees through the wrong index (see
//! [`keys::SHIFTED_ORDER`]): every tree from `IdempotencyMentions` on was kept in the sled tree
//! named after its neighbour. Such a directory was consistent with itself, but a directory
//! written before e69ea4f and then opened by one of those builds answered DATA_LOSS ("no data
//! key for its profile"), and sled's names did not say what the trees held.
//!
//! At open a directory without a layout mark is classified by where two kinds of record lie
//! that no other tree has: change events (8-byte keys) and wrapped data keys (16-byte keys
//! with a long value). Named layout: it is marked and nothing moves. Shifted layout: each
//! moved tree is copied aside, a mark says so (durably), then each tree is refilled from its
//! copy and the layout is marked; a crash in the first step repeats it from the untouched
//! trees, a crash in the second repeats the second from the copies. A directory with both
//! layouts' records (an older directory written to by a shifted build) cannot be told apart
//! record by record: it is refused with what to do.

use std::path::Path;

use super::codec::decode_u64;
use super::keys::{self, SHIFTED_ORDER, TreeName};
use super::sled_store::{flush_and_sync, sled_err};
use crate::error::{Error, Result};

/// The layout this build reads and writes: every tree in the sled tree of its own name.
pub const TREE_LAYOUT: u64 = 2;

/// Entries per sled batch while copying a tree.
const COPY_BATCH: usize = 10_000;

/// What a directory's trees look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Every tree in the sled tree of its name (or nothing that tells: an empty directory).
    Named,
    /// Written by a build with the shifted indices.
    Shifted,
    /// Records of both layouts.
    Mixed,
    /// Records in the moved trees, none of a shape that tells the layouts apart.
    Unknown,
}

/// The sled tree `t`'s records are in under the shifted indices.
pub(super) fn shifted_home(t: TreeName) -> TreeName {
    let pos = SHIFTED_ORDER
        .iter()
        .position(|s| *s == t)
        .unwrap_or(t.index());
    TreeName::ALL[pos]
}

/// The trees that the shifted indices put somewhere else.
pub(super) fn moved() -> impl Iterator<Item = TreeName> {
    TreeName::ALL.into_iter().filter(|t| shifted_home(*t) != *t)
}

pub(super) fn tmp_name(t: TreeName) -> String {
    format!("layout_migration_{}", t.name())
}

/// What the records of one sled tree say about the layout: for each tree, a key (and value)
/// shape that only the named layout puts there and one that only the shifted layout does.
/// Every record is looked at (once per directory): the two layouts' records interleave in a
/// mixed directory, so the ends of a tree do not tell.
struct Signature {
    /// The sled tree (by its name).
    tree: TreeName,
    /// A record the tree of this name holds.
    named: fn(&[u8], &[u8]) -> bool,
    /// A record its neighbour holds (what the shifted indices put here).
    shifted: fn(&[u8], &[u8]) -> bool,
}

/// A wrapped data key is 73 bytes; an erasure tombstone about 10.
const WRAPPED_KEY_MIN: usize = 33;

const SIGNATURES: [Signature; 7] = [
    // Change events (sequence, 8 bytes) / mentions (UUID ++ idempotency key).
    Signature {
        tree: TreeName::Changes,
        named: |k, _| k.len() == 8,
        shifted: |k, _| k.len() > 16,
    },
    // Consents (profile ++ sequence, 24 bytes) / change events.
    Signature {
        tree: TreeName::Consents,
        named: |k, _| k.len() == 24,
        shifted: |k, _| k.len() == 8,
    },
    // Preferences (profile, 16) / consents (24).
    Signature {
        tree: TreeName::Preferences,
        named: |k, _| k.len() == 16,
        shifted: |k, _| k.len() == 24,
    },
    // Segment terms (profile, 16) / sent messages (profile ++ message key, longer).
    Signature {
        tree: TreeName::SegmentTerms,
        named: |k, _| k.len() == 16,
        shifted: |k, _| k.len() > 16,
    },
    // Tombstones (profile, 16) / interaction index entries (40 bytes and more).
    Signature {
        tree: TreeName::Erased,
        named: |k, _| k.len() == 16,
        shifted: |k, _| k.len() >= 40,
    },
    // Wrapped data keys / tombstones.
    Signature {
        tree: TreeName::DataKeys,
        named: |k, v| k.len() == 16 && v.len() >= WRAPPED_KEY_MIN,
        shifted: |k, v| k.len() == 16 && v.len() < WRAPPED_KEY_MIN,
    },
    // Mentions / wrapped data keys.
    Signature {
        tree: TreeName::IdempotencyMentions,
        named: |k, _| k.len() > 16,
        shifted: |k, _| k.len() == 16,
    },
];

/// Classifies the trees (`trees[i]` is the sled tree named `TreeName::ALL[i]`).
pub fn classify(trees: &[sled::Tree]) -> Result<Found> {
    let (mut named, mut shifted) = (false, false);
    for sig in &SIGNATURES {
        for kv in trees[sig.tree.index()].iter() {
            let (k, v) = kv.map_err(sled_err)?;
            named |= (sig.named)(&k, &v);
            shifted |= (sig.shifted)(&k, &v);
            if named && shifted {
                return Ok(Found::Mixed);
            }
        }
    }
    let anything_moved = moved().any(|t| !trees[t.index()].is_empty());
    Ok(match (named, shifted) {
        (true, true) => Found::Mixed,
        (false, true) => Found::Shifted,
        (true, false) => Found::Named,
        (false, false) if !anything_moved => Found::Named,
        (false, false) => Found::Unknown,
    })
}

fn copy(from: &sled::Tree, to: &sled::Tree) -> Result<u64> {
    let mut batch = sled::Batch::default();
    let (mut n, mut in_batch) = (0u64, 0usize);
    for kv in from.iter() {
        let (k, v) = kv.map_err(sled_err)?;
        batch.insert(k, v);
        n += 1;
        in_batch += 1;
        if in_batch == COPY_BATCH {
            to.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err)?;
            in_batch = 0;
        }
    }
    to.apply_batch(batch).map_err(sled_err)?;
    Ok(n)
}

/// Makes sure every tree is in the sled tree of its name before the store is used: checks a
/// directory once, moves the trees of a directory written with the shifted indices, and
/// refuses one with records of both layouts. `trees[i]` is the sled tree named
/// `TreeName::ALL[i]`.
pub fn ensure(db: &sled::Db, trees: &[sled::Tree], dir: &Path) -> Result<()> {
    let meta = &trees[TreeName::Meta.index()];
    if let Some(v) = meta.get(keys::META_TREE_LAYOUT).map_err(sled_err)? {
        let layout = decode_u64("tree_layout", &v)?;
        if layout > TREE_LAYOUT {
            return Err(Error::Unavailable(format!(
                "the data directory {} has tree layout {layout}, newer than this build's {TREE_LAYOUT}; run a newer release",
                dir.display()
            )));
        }
        if layout == TREE_LAYOUT {
            return drop_copies(db);
        }
    }
    if meta
        .get(keys::META_LAYOUT_MIGRATION)
        .map_err(sled_err)?
        .is_none()
    {
        match classify(trees)? {
            Found::Named => {
                meta.insert(keys::META_TREE_LAYOUT, &TREE_LAYOUT.to_be_bytes())
                    .map_err(sled_err)?;
                forbid_older_builds(meta)?;
                return flush_and_sync(db, dir);
            }
            Found::Unknown => {
                return Err(Error::Corrupt(format!(
                    "the data directory {} has no mark of its tree layout and its records do not show which it is; restore a backup or re-import the data",
                    dir.display()
                )));
            }
            Found::Mixed => {
                return Err(Error::Corrupt(format!(
                    "the data directory {} holds records of two tree layouts: it was written by a build from before e69ea4f and then by one from e69ea4f to 11fad48, which kept some trees under their neighbours' names. Such a directory cannot be sorted out record by record; restore a backup taken before the upgrade to the e69ea4f build (or re-import the data)",
                    dir.display()
                )));
            }
            Found::Shifted => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the data directory was written by a build that kept trees under their neighbours' names (e69ea4f to 11fad48); moving them"
                );
                for t in moved() {
                    let tmp = db.open_tree(tmp_name(t)).map_err(sled_err)?;
                    tmp.clear().map_err(sled_err)?;
                    copy(&trees[shifted_home(t).index()], &tmp)?;
                }
                flush_and_sync(db, dir)?;
                // Before any tree of its name is touched: a build with the shifted indices
                // must not open the directory any more.
                forbid_older_builds(meta)?;
                meta.insert(keys::META_LAYOUT_MIGRATION, &[1u8])
                    .map_err(sled_err)?;
                flush_and_sync(db, dir)?;
            }
        }
    }
    // Every moved tree has a complete copy: refill each tree of its name from it.
    let mut moved_records = 0u64;
    for t in moved() {
        let tmp = db.open_tree(tmp_name(t)).map_err(sled_err)?;
        let dest = &trees[t.index()];
        dest.clear().map_err(sled_err)?;
        moved_records += copy(&tmp, dest)?;
    }
    flush_and_sync(db, dir)?;
    meta.insert(keys::META_TREE_LAYOUT, &TREE_LAYOUT.to_be_bytes())
        .map_err(sled_err)?;
    meta.remove(keys::META_LAYOUT_MIGRATION).map_err(sled_err)?;
    flush_and_sync(db, dir)?;
    tracing::warn!(records = moved_records, "tree layout fixed");
    drop_copies(db)
}

/// Raises the schema version to this build's: builds before it (the shifted ones among them)
/// refuse a newer schema at open, so none of them writes shifted records into a directory
/// this build has checked or is moving.
fn forbid_older_builds(meta: &sled::Tree) -> Result<()> {
    let current = super::sled_store::SCHEMA_VERSION.to_be_bytes();
    meta.insert(keys::META_SCHEMA_VERSION, &current)
        .map_err(sled_err)?;
    Ok(())
}

/// Drops the copies a finished migration left (a crash after its mark, before the drop).
fn drop_copies(db: &sled::Db) -> Result<()> {
    let names = db.tree_names();
    for t in moved() {
        let name = tmp_name(t);
        if names.iter().any(|n| n.as_ref() == name.as_bytes()) {
            db.drop_tree(name.as_bytes()).map_err(sled_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tree_index_is_its_position_in_all() {
        for (i, t) in TreeName::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "{} is declared out of ALL's order", t.name());
        }
    }

    #[test]
    fn the_shifted_order_moves_exactly_the_trees_from_idempotency_mentions_on() {
        let moved: Vec<&str> = moved().map(TreeName::name).collect();
        assert_eq!(moved.len(), 11, "{moved:?}");
        assert_eq!(
            shifted_home(TreeName::DataKeys),
            TreeName::IdempotencyMentions
        );
        assert_eq!(shifted_home(TreeName::Changes), TreeName::Consents);
        assert_eq!(
            shifted_home(TreeName::IdempotencyMentions),
            TreeName::Changes
        );
        assert_eq!(shifted_home(TreeName::Profiles), TreeName::Profiles);
    }
}
