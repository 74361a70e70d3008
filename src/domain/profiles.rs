//! Profile views over merge trees, attribute updates and attribute history (SPEC §4).

use super::attributes::{
    AttrMap, AttrPath, AttrValue, HistoryEntry, MAX_CUSTOM_ATTRIBUTES, Value, combine,
};
use super::consent::{ConsentState, Consents, Preferences, Purpose, preferences_of};
use super::identity::{ProfileKey, find_root};
use super::interaction::Channel;
use super::ports::{NewChange, ReadView, WriteTx, members, tree_identifiers};
use super::profile::{ChangeKind, IdentifierLink, ProfileRecord};
use super::rules::Rules;
use super::summary::{Summary, SummaryPolicy};
use super::time::Duration;
use super::time::Timestamp;
use super::tree::MergeTree;
use crate::error::{Error, Result};
use std::sync::Arc;

/// A live profile as its readers see it.
#[derive(Debug, Clone)]
pub struct ProfileView {
    /// The live (root) record.
    pub root: Arc<ProfileRecord>,
    /// Ids merged into it (every non-root member).
    pub merged_ids: Vec<super::ids::ProfileId>,
    /// Identifiers of the whole tree (empty unless asked for).
    pub identifiers: Arc<Vec<IdentifierLink>>,
    /// Winning attribute values of the whole tree (cleared values left out).
    pub attributes: Arc<AttrMap>,
    /// Consent in force per purpose × channel (empty unless asked for).
    pub consents: Vec<(Purpose, Channel, ConsentState)>,
    /// Preferences in force (unless not asked for or never set).
    pub preferences: Option<Preferences>,
    /// The summary, evaluated at the time of the read (when asked for).
    pub summary: Option<SummaryView>,
}

/// A summary with its scores evaluated at `as_of`.
#[derive(Debug, Clone)]
pub struct SummaryView {
    /// The combined summary of the tree.
    pub summary: Arc<Summary>,
    /// Engagement at `as_of`.
    pub engagement: f64,
    /// Contact pressure at `as_of`.
    pub pressure: f64,
    /// The time of the read.
    pub as_of: Timestamp,
    /// Half-life of engagement.
    pub engagement_half_life: Duration,
    /// Half-life of contact pressure.
    pub pressure_half_life: Duration,
}

/// Which optional parts of a profile to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Identifiers (an index scan per member).
    pub identifiers: bool,
    /// Consent in force.
    pub consents: bool,
    /// Preferences.
    pub preferences: bool,
    /// Summary.
    pub summary: bool,
}

impl Parts {
    /// Everything.
    pub const ALL: Parts = Parts {
        identifiers: true,
        consents: true,
        preferences: true,
        summary: true,
    };
}

/// The combined summary of a tree, evaluated at `now`.
pub fn summary_view(
    view: &dyn ReadView,
    members: &[ProfileRecord],
    policy: &SummaryPolicy,
    now: Timestamp,
) -> Result<SummaryView> {
    let s = super::summary::combined(view, members.iter().map(|m| m.id), policy)?;
    Ok(summary_at(Arc::new(s), policy, now))
}

/// Everything a read of a profile shows that does not depend on the time of the read: what
/// the view cache keeps (`domain::view_cache`). Consents are kept as records (which are in
/// force depends on the time) and the summary unevaluated (its scores decay).
#[derive(Debug, Clone)]
pub struct TreeSnapshot {
    /// The root record (shared with every view made from this).
    root: Arc<ProfileRecord>,
    /// Ids of every member of the merge tree, root first.
    members: Vec<super::ids::ProfileId>,
    /// Identifiers of the whole tree, in the order reads show them.
    identifiers: Arc<Vec<IdentifierLink>>,
    /// Winning attribute values of the whole tree (cleared values left out).
    attributes: Arc<AttrMap>,
    /// Every consent record of the tree.
    consents: Consents,
    /// Preferences in force, if ever set.
    preferences: Option<Preferences>,
    /// The combined summary of the tree.
    summary: Arc<Summary>,
    /// Encodings of what this shows that readers made and keep with it.
    memo: Memo,
}

/// Bytes a reader derived from a [`TreeSnapshot`] and keeps with it, by a key of its own
/// (what it was asked for): they live exactly as long as the snapshot, so the commit that drops
/// the snapshot from the view cache drops them too. At most [`Memo::ENTRIES`] are kept; a clone
/// starts empty.
#[derive(Default)]
pub struct Memo(parking_lot::Mutex<Vec<MemoEntry>>);

/// A key and the bytes kept under it.
type MemoEntry = (Box<[u8]>, Arc<[u8]>);

impl Memo {
    /// Keys kept per snapshot (readers that ask for other things make theirs every time).
    pub const ENTRIES: usize = 2;

    /// The bytes kept under `key`, or those `make` returns (kept while there is room).
    pub fn get_or_make(&self, key: &[u8], make: impl FnOnce() -> Arc<[u8]>) -> Arc<[u8]> {
        if let Some((_, v)) = self.0.lock().iter().find(|(k, _)| **k == *key) {
            return v.clone();
        }
        // Made without the lock: two readers may both make it; the first one is kept.
        let made = make();
        let mut kept = self.0.lock();
        if let Some((_, v)) = kept.iter().find(|(k, _)| **k == *key) {
            return v.clone();
        }
        if kept.len() < Self::ENTRIES {
            kept.push((key.into(), made.clone()));
        }
        made
    }

    /// Keys kept.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for Memo {
    fn clone(&self) -> Memo {
        Memo::default()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("entries", &self.len())
            .finish()
    }
}

impl TreeSnapshot {
    /// Loads every part of the profile `key` names.
    pub fn load(view: &dyn ReadView, key: &ProfileKey, rules: &Rules) -> Result<TreeSnapshot> {
        let root = find_root(view, key)?;
        let members = members(view, &root)?;
        let tree = MergeTree::load(view, &root)?;
        let preferences = preferences_of(view, &tree)?;
        let consents = Consents::load(view, tree)?;
        let summary = super::summary::combined(view, members.iter().map(|m| m.id), &rules.summary)?;
        let identifiers = shown_identifiers(view, &members)?;
        let attributes = live_attributes(&members);
        Ok(TreeSnapshot {
            members: members.iter().map(|m| m.id).collect(),
            root: Arc::new(root),
            identifiers: Arc::new(identifiers),
            attributes: Arc::new(attributes),
            consents,
            preferences,
            summary: Arc::new(summary),
            memo: Memo::default(),
        })
    }

    /// The live (root) record.
    pub fn root(&self) -> &ProfileRecord {
        &self.root
    }

    /// What readers derived from this snapshot and keep with it.
    pub fn memo(&self) -> &Memo {
        &self.memo
    }

    /// Ids of every member, root first: a write to any of them changes what this shows.
    pub fn member_ids(&self) -> impl Iterator<Item = super::ids::ProfileId> + '_ {
        self.members.iter().copied()
    }

    /// The view at `now` with the optional `parts` asked for: what [`view_profile`] returns
    /// over the same data.
    pub fn view(&self, parts: Parts, rules: &Rules, now: Timestamp) -> ProfileView {
        let policy = &rules.summary;
        ProfileView {
            root: self.root.clone(),
            merged_ids: self.members.iter().skip(1).copied().collect(),
            identifiers: if parts.identifiers {
                self.identifiers.clone()
            } else {
                Arc::default()
            },
            attributes: self.attributes.clone(),
            consents: if parts.consents {
                self.consents.effective(now)
            } else {
                Vec::new()
            },
            preferences: if parts.preferences {
                self.preferences.clone()
            } else {
                None
            },
            summary: parts
                .summary
                .then(|| summary_at(self.summary.clone(), policy, now)),
        }
    }
}

/// Identifiers of every member, in the order reads show them (oldest link first).
fn shown_identifiers(
    view: &dyn ReadView,
    members: &[ProfileRecord],
) -> Result<Vec<IdentifierLink>> {
    let mut ids = tree_identifiers(view, members)?;
    ids.sort_by(|a, b| (a.linked_at, &a.identifier).cmp(&(b.linked_at, &b.identifier)));
    Ok(ids)
}

/// The winning attribute values of the members, cleared values left out.
fn live_attributes(members: &[ProfileRecord]) -> AttrMap {
    let mut attributes = combine(members.iter().map(|m| &m.attributes));
    attributes.retain(|_, v| v.value.is_some());
    attributes
}

/// A combined summary with its scores evaluated at `now`.
fn summary_at(s: Arc<Summary>, policy: &SummaryPolicy, now: Timestamp) -> SummaryView {
    SummaryView {
        engagement: s.engagement.at(now, policy.engagement_half_life),
        pressure: s.pressure.at(now, policy.pressure_half_life),
        summary: s,
        as_of: now,
        engagement_half_life: policy.engagement_half_life,
        pressure_half_life: policy.pressure_half_life,
    }
}

/// Reads the view of the profile `key` names, loading the optional `parts` asked for.
pub fn view_profile(
    view: &dyn ReadView,
    key: &ProfileKey,
    parts: Parts,
    rules: &Rules,
    now: Timestamp,
) -> Result<ProfileView> {
    let root = find_root(view, key)?;
    let ms = members(view, &root)?;
    let (consents, preferences) = if parts.consents || parts.preferences {
        let tree = MergeTree::load(view, &root)?;
        let preferences = if parts.preferences {
            preferences_of(view, &tree)?
        } else {
            None
        };
        let consents = if parts.consents {
            Consents::load(view, tree)?.effective(now)
        } else {
            Vec::new()
        };
        (consents, preferences)
    } else {
        (Vec::new(), None)
    };
    let summary = if parts.summary {
        Some(summary_view(view, &ms, &rules.summary, now)?)
    } else {
        None
    };
    let identifiers = if parts.identifiers {
        shown_identifiers(view, &ms)?
    } else {
        Vec::new()
    };
    let attributes = live_attributes(&ms);
    Ok(ProfileView {
        merged_ids: ms.iter().skip(1).map(|m| m.id).collect(),
        root: Arc::new(root),
        identifiers: Arc::new(identifiers),
        attributes: Arc::new(attributes),
        consents,
        preferences,
        summary,
    })
}

/// One attribute to set (`Some`) or clear (`None`).
pub type AttrChange = (AttrPath, Option<Value>);

/// What an update did.
#[derive(Debug, Clone)]
pub struct Updated {
    /// Paths whose visible value changed.
    pub applied: Vec<String>,
    /// Paths kept in history only (an observation at least as new was stored).
    pub superseded: Vec<String>,
}

/// UpdateProfile: "recent supersedes older", across the whole merge tree.
#[allow(clippy::too_many_arguments)]
pub fn update_profile(
    tx: &mut dyn WriteTx,
    key: &ProfileKey,
    changes: Vec<AttrChange>,
    source: &str,
    observed_at: Timestamp,
    expected_version: Option<u64>,
    now: Timestamp,
) -> Result<Updated> {
    let mut root = find_root(tx, key)?;
    if let Some(v) = expected_version {
        if v != root.version {
            return Err(Error::Aborted(format!(
                "profile {} is at version {}, not the expected {v}; read it again and retry",
                root.id, root.version
            )));
        }
    }
    let ms = members(tx, &root)?;
    let mut current = combine(ms.iter().map(|m| &m.attributes));
    let mut applied = Vec::new();
    let mut superseded = Vec::new();
    for (path, value) in changes {
        let path = path.to_path();
        let write = AttrValue {
            value,
            source: source.to_string(),
            observed_at,
            recorded_at: now,
            write_seq: tx.next_write_seq()?,
        };
        let old = current.get(&path).and_then(|c| c.value.clone());
        let wins = current.get(&path).is_none_or(|c| write.supersedes(c));
        // The root keeps its own newest observation even when another member's wins now, so
        // that undoing that member's merge shows what the root alone would show.
        if root
            .attributes
            .get(&path)
            .is_none_or(|c| write.supersedes(c))
        {
            root.attributes.insert(path.clone(), write.clone());
        }
        tx.put_history(&HistoryEntry {
            path: path.clone(),
            old,
            new: write.value.clone(),
            source: source.to_string(),
            observed_at,
            recorded_at: now,
            applied: wins,
            origin: root.id,
            write_seq: write.write_seq,
        })?;
        if wins {
            current.insert(path.clone(), write);
            applied.push(path);
        } else {
            superseded.push(path);
        }
    }
    let customs = current
        .iter()
        .filter(|(p, v)| p.starts_with("custom.") && v.value.is_some())
        .count();
    if customs > MAX_CUSTOM_ATTRIBUTES {
        return Err(Error::invalid(
            "attributes.custom",
            format!(
                "a profile holds at most {MAX_CUSTOM_ATTRIBUTES} custom attributes; this update would make {customs}"
            ),
        ));
    }
    if !applied.is_empty() {
        root.version += 1;
        root.updated_at = now;
    }
    tx.put_profile(&root)?;
    if !applied.is_empty() {
        tx.emit(
            NewChange {
                kind: ChangeKind::ProfileUpdated,
                profile: root.id,
                version: root.version,
                paths: applied.iter().map(|p| format!("attributes.{p}")).collect(),
                related: vec![],
            },
            now,
        )?;
    }
    if !applied.is_empty() {
        super::segments::reindex(tx, &[root.id])?;
    }
    Ok(Updated {
        applied,
        superseded,
    })
}

/// A page of attribute history: entries oldest first and the write_seq to continue after.
pub fn history_page(
    view: &dyn ReadView,
    key: &ProfileKey,
    path: Option<&str>,
    after: u64,
    page_size: usize,
) -> Result<(Vec<HistoryEntry>, Option<u64>)> {
    let root = find_root(view, key)?;
    let ms = members(view, &root)?;
    let mut out: Vec<HistoryEntry> = Vec::new();
    for m in &ms {
        let mut cursor = after;
        // Read past entries of other paths until this member has a full page of matches.
        loop {
            let chunk = view.history(m.id, cursor, page_size + 1)?;
            let done = chunk.len() < page_size + 1;
            let mut taken = 0;
            for e in chunk {
                cursor = e.write_seq;
                if path.is_none_or(|p| p == e.path) {
                    out.push(e);
                    taken += 1;
                }
            }
            if done || taken > page_size {
                break;
            }
        }
    }
    out.sort_by_key(|e| e.write_seq);
    let more = out.len() > page_size;
    out.truncate(page_size);
    let next = if more {
        out.last().map(|e| e.write_seq)
    } else {
        None
    };
    Ok((out, next))
}
