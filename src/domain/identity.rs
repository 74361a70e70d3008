//! Identity resolution, linking and reversible merges (SPEC §2–§3).
//!
//! Resolve is split in two: [`decide`] works on any read view and says what must happen;
//! [`apply`] performs it inside a write transaction. The service first decides on a snapshot
//! and returns at once when nothing needs writing (the common "who is this?" lookup); otherwise
//! it decides again inside the serialized write transaction, so concurrent Resolve calls can
//! never give one identifier two live owners.

use std::collections::HashSet;

use super::identifier::Identifier;
use super::ids::{MergeId, ProfileId};
use super::policy::{IdentityPolicy, LinkRefusal, MergeRefusal};
use super::ports::{NewChange, ReadView, WriteTx, members, root_of, tree_identifiers};
use super::profile::{ChangeKind, IdentifierLink, MergeRecord, ProfileRecord, Unmerge};
use super::segments::reindex;
use super::time::Timestamp;
use crate::error::{Error, Result};

/// A profile named in a request: by id or by identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProfileKey {
    /// A profile id (merged-away ids name their tree).
    Id(ProfileId),
    /// Any linked identifier.
    Identifier(Identifier),
}

/// The live profile a key names, or NOT_FOUND.
pub fn find_root(view: &dyn ReadView, key: &ProfileKey) -> Result<ProfileRecord> {
    let found = match key {
        ProfileKey::Id(id) => root_of(view, *id)?,
        ProfileKey::Identifier(ident) => match view.identifier_link(ident)? {
            Some(link) => root_of(view, link.origin)?,
            None => None,
        },
    };
    if let (None, ProfileKey::Id(id)) = (&found, key) {
        if let Some(at) = view.erased(*id)? {
            let (secs, _) = at.to_parts();
            return Err(Error::Erased(format!(
                "profile {id} was erased (unix time {secs}); nothing about the customer is held any more"
            )));
        }
    }
    found.ok_or_else(|| match key {
        ProfileKey::Id(id) => Error::NotFound(format!("no profile with id {id}")),
        ProfileKey::Identifier(i) => Error::NotFound(format!(
            "no profile holds the {} identifier given",
            i.kind().config_name()
        )),
    })
}

/// What Resolve did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New profile.
    Created,
    /// One profile, nothing added.
    Matched,
    /// One profile, identifiers added.
    Linked,
    /// Several profiles merged.
    Merged,
    /// Several profiles, not merged.
    Conflict,
    /// Nothing found, nothing created.
    NoMatch,
}

/// Why an identifier was not linked / profiles not merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// Profile already has another customer number.
    CustomerNumberAlreadySet,
    /// Cap reached.
    CapReached,
    /// Matched profiles hold different customer numbers.
    CustomerNumberConflict,
    /// `allow_merge` was false.
    MergeNotAllowed,
    /// Owned by another profile.
    OwnedByOther,
}

/// Why an identifier was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// On the block list.
    Blocked,
    /// Repeated in the request.
    Duplicate,
}

/// An identifier that was not linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Which.
    pub identifier: Identifier,
    /// Why.
    pub reason: ConflictReason,
    /// Its owner, when another profile owns it.
    pub owner: Option<ProfileId>,
}

/// Resolve's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// What happened.
    pub outcome: Outcome,
    /// The resolved (or primary) profile.
    pub profile: Option<ProfileId>,
    /// Its version after the call.
    pub version: u64,
    /// Newly linked.
    pub linked: Vec<Identifier>,
    /// Not linked.
    pub conflicts: Vec<Conflict>,
    /// Ignored.
    pub ignored: Vec<(Identifier, IgnoreReason)>,
    /// Other candidates (CONFLICT) or absorbed profiles (MERGED).
    pub others: Vec<ProfileId>,
    /// Merges made.
    pub merges: Vec<MergeId>,
}

/// Resolve's input, already normalised.
#[derive(Debug, Clone)]
pub struct ResolveInput {
    /// In request order.
    pub identifiers: Vec<Identifier>,
    /// Create when nothing matches.
    pub create_if_missing: bool,
    /// Merge when several match.
    pub allow_merge: bool,
    /// Provenance.
    pub source: String,
}

/// What must happen, decided on a view.
#[derive(Debug, Clone)]
pub struct Decision {
    ignored: Vec<(Identifier, IgnoreReason)>,
    plan: Plan,
}

#[derive(Debug, Clone)]
enum Plan {
    NoMatch,
    Create {
        link: Vec<Identifier>,
        conflicts: Vec<Conflict>,
    },
    Existing {
        root: ProfileRecord,
        link: Vec<Identifier>,
        conflicts: Vec<Conflict>,
    },
    Merge {
        survivor: ProfileRecord,
        absorbed: Vec<(ProfileRecord, Vec<Identifier>)>,
        link: Vec<Identifier>,
        conflicts: Vec<Conflict>,
    },
    Conflict {
        primary: ProfileRecord,
        others: Vec<ProfileId>,
        conflicts: Vec<Conflict>,
    },
}

/// One matched live profile and the request identifiers that led to it.
struct Candidate {
    root: ProfileRecord,
    matched: Vec<Identifier>,
}

fn add_candidate(cands: &mut Vec<Candidate>, root: ProfileRecord, id: &Identifier) {
    match cands.iter_mut().find(|c| c.root.id == root.id) {
        Some(c) => c.matched.push(id.clone()),
        None => cands.push(Candidate {
            root,
            matched: vec![id.clone()],
        }),
    }
}

/// Filters `wanted` through the link policy, growing `held` as identifiers are accepted.
fn admit(
    policy: &IdentityPolicy,
    held: &mut Vec<Identifier>,
    wanted: Vec<Identifier>,
) -> (Vec<Identifier>, Vec<Conflict>) {
    let mut link = Vec::new();
    let mut conflicts = Vec::new();
    for id in wanted {
        let refs: Vec<&Identifier> = held.iter().collect();
        match policy.may_link(&refs, &id) {
            Ok(()) => {
                held.push(id.clone());
                link.push(id);
            }
            Err(r) => conflicts.push(Conflict {
                identifier: id,
                reason: match r {
                    LinkRefusal::UniqueTaken => ConflictReason::CustomerNumberAlreadySet,
                    LinkRefusal::CapReached => ConflictReason::CapReached,
                },
                owner: None,
            }),
        }
    }
    (link, conflicts)
}

fn held_by(view: &dyn ReadView, root: &ProfileRecord) -> Result<Vec<Identifier>> {
    let ms = members(view, root)?;
    Ok(tree_identifiers(view, &ms)?
        .into_iter()
        .map(|l| l.identifier)
        .collect())
}

/// Decides what Resolve must do, reading only.
pub fn decide(
    view: &dyn ReadView,
    input: &ResolveInput,
    policy: &IdentityPolicy,
) -> Result<Decision> {
    let mut ignored = Vec::new();
    let mut seen = HashSet::new();
    let mut usable = Vec::new();
    let mut blocked = Vec::new();
    for id in &input.identifiers {
        if !seen.insert(id.clone()) {
            ignored.push((id.clone(), IgnoreReason::Duplicate));
        } else if policy.is_blocked(id) {
            ignored.push((id.clone(), IgnoreReason::Blocked));
            blocked.push(id.clone());
        } else {
            usable.push(id.clone());
        }
    }

    let mut cands: Vec<Candidate> = Vec::new();
    let mut unowned = Vec::new();
    for id in &usable {
        match view.identifier_link(id)? {
            Some(link) => {
                let root = root_of(view, link.origin)?.ok_or_else(|| {
                    Error::Corrupt(format!("identifier links missing profile {}", link.origin))
                })?;
                add_candidate(&mut cands, root, id);
            }
            None => unowned.push(id.clone()),
        }
    }

    // Only blocked identifiers: a pure lookup that never links and never merges.
    if usable.is_empty() {
        for id in &blocked {
            if let Some(link) = view.identifier_link(id)? {
                if let Some(root) = root_of(view, link.origin)? {
                    add_candidate(&mut cands, root, id);
                }
            }
        }
        let plan = match cands.len() {
            0 => Plan::NoMatch,
            1 => Plan::Existing {
                root: cands.remove(0).root,
                link: vec![],
                conflicts: vec![],
            },
            _ => conflict_plan(cands, ConflictReason::OwnedByOther),
        };
        return Ok(Decision { ignored, plan });
    }

    let plan = match cands.len() {
        0 if input.create_if_missing => {
            let (link, conflicts) = admit(policy, &mut Vec::new(), unowned);
            Plan::Create { link, conflicts }
        }
        0 => Plan::NoMatch,
        1 => {
            let root = cands.remove(0).root;
            // A pure lookup (every identifier already held) admits nothing: reading the
            // tree's identifiers would be wasted, and it is most of a lookup's cost.
            let (link, conflicts) = if unowned.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let mut held = held_by(view, &root)?;
                admit(policy, &mut held, unowned)
            };
            Plan::Existing {
                root,
                link,
                conflicts,
            }
        }
        _ => {
            let mut held = Vec::new();
            for c in &cands {
                held.extend(held_by(view, &c.root)?);
            }
            let refs: Vec<&Identifier> = held.iter().collect();
            let refusal = if !input.allow_merge {
                Some(ConflictReason::MergeNotAllowed)
            } else {
                match policy.may_merge(&refs) {
                    Ok(()) => None,
                    Err(MergeRefusal::UniqueConflict) => {
                        Some(ConflictReason::CustomerNumberConflict)
                    }
                    Err(MergeRefusal::CapExceeded) => Some(ConflictReason::CapReached),
                }
            };
            match refusal {
                Some(reason) => conflict_plan(cands, reason),
                None => {
                    cands.sort_by_key(|c| c.root.age_key());
                    let survivor = cands.remove(0).root;
                    let (link, conflicts) = admit(policy, &mut held, unowned);
                    Plan::Merge {
                        survivor,
                        absorbed: cands.into_iter().map(|c| (c.root, c.matched)).collect(),
                        link,
                        conflicts,
                    }
                }
            }
        }
    };
    Ok(Decision { ignored, plan })
}

/// The primary match is the owner of the strongest identifier (first in request order on ties).
fn conflict_plan(mut cands: Vec<Candidate>, reason: ConflictReason) -> Plan {
    let strongest = |c: &Candidate| {
        c.matched
            .iter()
            .map(|i| i.kind().strength())
            .max()
            .unwrap_or(0)
    };
    let mut best = 0;
    for (i, c) in cands.iter().enumerate() {
        if strongest(c) > strongest(&cands[best]) {
            best = i;
        }
    }
    let primary = cands.remove(best);
    let conflicts = cands
        .iter()
        .flat_map(|c| {
            c.matched.iter().map(|id| Conflict {
                identifier: id.clone(),
                reason,
                owner: Some(c.root.id),
            })
        })
        .collect();
    Plan::Conflict {
        primary: primary.root,
        others: cands.iter().map(|c| c.root.id).collect(),
        conflicts,
    }
}

impl Decision {
    /// The answer when nothing needs writing (lookups, conflicts); `None` when a write is due.
    pub fn without_writes(&self) -> Option<Resolution> {
        let base = |outcome, root: Option<&ProfileRecord>| Resolution {
            outcome,
            profile: root.map(|r| r.id),
            version: root.map_or(0, |r| r.version),
            linked: vec![],
            conflicts: vec![],
            ignored: self.ignored.clone(),
            others: vec![],
            merges: vec![],
        };
        match &self.plan {
            Plan::NoMatch => Some(base(Outcome::NoMatch, None)),
            Plan::Existing {
                root,
                link,
                conflicts,
            } if link.is_empty() => Some(Resolution {
                conflicts: conflicts.clone(),
                ..base(Outcome::Matched, Some(root))
            }),
            Plan::Conflict {
                primary,
                others,
                conflicts,
            } => Some(Resolution {
                conflicts: conflicts.clone(),
                others: others.clone(),
                ..base(Outcome::Conflict, Some(primary))
            }),
            Plan::Create { link, .. } if link.is_empty() => Some(base(Outcome::NoMatch, None)),
            _ => None,
        }
    }
}

fn link_all(
    tx: &mut dyn WriteTx,
    origin: ProfileId,
    ids: &[Identifier],
    source: &str,
    now: Timestamp,
) -> Result<()> {
    for id in ids {
        tx.put_link(&IdentifierLink {
            identifier: id.clone(),
            origin,
            linked_at: now,
            source: source.to_string(),
        })?;
    }
    Ok(())
}

/// Performs a decision made inside the same write transaction.
pub fn apply(
    tx: &mut dyn WriteTx,
    decision: Decision,
    source: &str,
    now: Timestamp,
) -> Result<Resolution> {
    if let Some(r) = decision.without_writes() {
        return Ok(r);
    }
    let ignored = decision.ignored;
    match decision.plan {
        Plan::Create { link, conflicts } => {
            let p = ProfileRecord::new(ProfileId::new_at(now), now);
            tx.put_profile(&p)?;
            link_all(tx, p.id, &link, source, now)?;
            tx.emit(
                NewChange {
                    kind: ChangeKind::ProfileCreated,
                    profile: p.id,
                    version: p.version,
                    paths: vec!["identifiers".into()],
                    related: vec![],
                },
                now,
            )?;
            reindex(tx, &[p.id])?;
            Ok(Resolution {
                outcome: Outcome::Created,
                profile: Some(p.id),
                version: p.version,
                linked: link,
                conflicts,
                ignored,
                others: vec![],
                merges: vec![],
            })
        }
        Plan::Existing {
            mut root,
            link,
            conflicts,
        } => {
            link_all(tx, root.id, &link, source, now)?;
            root.version += 1;
            root.updated_at = now;
            tx.put_profile(&root)?;
            tx.emit(
                NewChange {
                    kind: ChangeKind::IdentifiersChanged,
                    profile: root.id,
                    version: root.version,
                    paths: vec!["identifiers".into()],
                    related: vec![],
                },
                now,
            )?;
            reindex(tx, &[root.id])?;
            Ok(Resolution {
                outcome: Outcome::Linked,
                profile: Some(root.id),
                version: root.version,
                linked: link,
                conflicts,
                ignored,
                others: vec![],
                merges: vec![],
            })
        }
        Plan::Merge {
            survivor,
            absorbed,
            link,
            conflicts,
        } => {
            let absorbed_ids: Vec<ProfileId> = absorbed.iter().map(|(p, _)| p.id).collect();
            let merges = merge_into(
                tx,
                survivor,
                absorbed,
                &format!("resolve:{source}"),
                "identifiers shared in Resolve",
                now,
                |tx, survivor| link_all(tx, survivor, &link, source, now),
            )?;
            Ok(Resolution {
                outcome: Outcome::Merged,
                profile: Some(merges.survivor),
                version: merges.version,
                linked: link,
                conflicts,
                ignored,
                others: absorbed_ids,
                merges: merges.merges.iter().map(|m| m.id).collect(),
            })
        }
        // Handled by without_writes above.
        Plan::NoMatch | Plan::Conflict { .. } => Err(Error::Corrupt(
            "resolve plan without writes reached apply".into(),
        )),
    }
}

/// The result of merging profiles.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The survivor.
    pub survivor: ProfileId,
    /// Its version after.
    pub version: u64,
    /// One record per absorbed profile.
    pub merges: Vec<MergeRecord>,
}

fn merge_into(
    tx: &mut dyn WriteTx,
    mut survivor: ProfileRecord,
    absorbed: Vec<(ProfileRecord, Vec<Identifier>)>,
    source: &str,
    reason: &str,
    now: Timestamp,
    also: impl FnOnce(&mut dyn WriteTx, ProfileId) -> Result<()>,
) -> Result<Merged> {
    let mut records = Vec::new();
    for (mut a, triggers) in absorbed {
        let m = MergeRecord {
            id: MergeId::new_at(now),
            survivor: survivor.id,
            absorbed: a.id,
            merged_at: now,
            source: source.to_string(),
            reason: reason.to_string(),
            triggers,
            unmerged: None,
            write_seq: tx.next_write_seq()?,
        };
        a.merged_into = Some((m.id, survivor.id));
        a.updated_at = now;
        survivor.absorbed.push((m.id, a.id));
        tx.put_profile(&a)?;
        tx.put_merge(&m)?;
        records.push(m);
    }
    also(tx, survivor.id)?;
    survivor.version += 1;
    survivor.updated_at = now;
    tx.put_profile(&survivor)?;
    for m in &records {
        tx.emit(
            NewChange {
                kind: ChangeKind::ProfilesMerged,
                profile: survivor.id,
                version: survivor.version,
                paths: vec![
                    "identifiers".into(),
                    "attributes".into(),
                    "interactions".into(),
                    "merged_ids".into(),
                ],
                related: vec![m.absorbed],
            },
            now,
        )?;
    }
    let mut touched = vec![survivor.id];
    touched.extend(records.iter().map(|m| m.absorbed));
    reindex(tx, &touched)?;
    Ok(Merged {
        survivor: survivor.id,
        version: survivor.version,
        merges: records,
    })
}

/// MergeProfiles: merges the live profiles named by `keys` into the oldest.
pub fn merge_profiles(
    tx: &mut dyn WriteTx,
    keys: &[ProfileKey],
    policy: &IdentityPolicy,
    source: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Merged> {
    let mut roots: Vec<ProfileRecord> = Vec::new();
    for key in keys {
        let root = find_root(tx, key)?;
        if !roots.iter().any(|r| r.id == root.id) {
            roots.push(root);
        }
    }
    if roots.len() < 2 {
        return Err(Error::precondition(
            "ALREADY_MERGED",
            "the profiles named are already one profile; nothing to merge",
        ));
    }
    let mut held = Vec::new();
    for r in &roots {
        held.extend(held_by(tx, r)?);
    }
    let refs: Vec<&Identifier> = held.iter().collect();
    match policy.may_merge(&refs) {
        Ok(()) => {}
        Err(MergeRefusal::UniqueConflict) => {
            return Err(Error::precondition(
                "CUSTOMER_NUMBER_CONFLICT",
                "the profiles hold different customer numbers; unlink one first if they really are one customer",
            ));
        }
        Err(MergeRefusal::CapExceeded) => {
            return Err(Error::precondition(
                "IDENTIFIER_CAP_REACHED",
                "together the profiles would hold more identifiers of one kind than the configured cap; unlink some first",
            ));
        }
    }
    roots.sort_by_key(|r| r.age_key());
    let survivor = roots.remove(0);
    let absorbed = roots.into_iter().map(|r| (r, Vec::new())).collect();
    merge_into(tx, survivor, absorbed, source, reason, now, |_, _| Ok(()))
}

/// The result of an unmerge.
#[derive(Debug, Clone)]
pub struct Unmerged {
    /// The merge, now undone.
    pub merge: MergeRecord,
    /// Live profile holding the survivor, and its version.
    pub survivor_root: (ProfileId, u64),
    /// The restored profile and its version.
    pub restored: (ProfileId, u64),
}

/// UnmergeProfiles: detaches the absorbed profile's subtree from the survivor.
pub fn unmerge(
    tx: &mut dyn WriteTx,
    merge_id: MergeId,
    source: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Unmerged> {
    let mut m = tx
        .merge(merge_id)?
        .ok_or_else(|| Error::NotFound(format!("no merge with id {merge_id}")))?;
    if m.unmerged.is_some() {
        return Err(Error::precondition(
            "ALREADY_UNMERGED",
            format!("merge {merge_id} was already undone"),
        ));
    }
    // An erased customer's merges stay listed (ids only) but there is nothing left to split.
    for id in [m.survivor, m.absorbed] {
        if let (None, Some(at)) = (tx.profile(id)?, tx.erased(id)?) {
            let (secs, _) = at.to_parts();
            return Err(Error::Erased(format!(
                "merge {merge_id} joined profiles of a customer erased at unix time {secs}; there is nothing left to unmerge"
            )));
        }
    }
    let mut survivor = tx
        .profile(m.survivor)?
        .ok_or_else(|| Error::Corrupt(format!("merge {merge_id} names missing survivor")))?;
    let mut absorbed = tx.profile(m.absorbed)?.ok_or_else(|| {
        Error::Corrupt(format!("merge {merge_id} names missing absorbed profile"))
    })?;
    if absorbed.merged_into != Some((m.id, survivor.id)) {
        return Err(Error::Corrupt(format!(
            "merge {merge_id} is active but its profiles disagree"
        )));
    }
    survivor.absorbed.retain(|(id, _)| *id != m.id);
    tx.put_profile(&survivor)?;
    let mut root = root_of(tx, survivor.id)?
        .ok_or_else(|| Error::Corrupt("survivor vanished during unmerge".into()))?;
    root.version += 1;
    root.updated_at = now;
    tx.put_profile(&root)?;
    absorbed.merged_into = None;
    // Versions stay monotonic for every id: readers of the absorbed id saw the root's versions.
    absorbed.version = absorbed.version.max(root.version) + 1;
    absorbed.updated_at = now;
    tx.put_profile(&absorbed)?;
    m.unmerged = Some(Unmerge {
        at: now,
        source: source.to_string(),
        reason: reason.to_string(),
    });
    tx.put_merge(&m)?;
    let paths = vec![
        "identifiers".to_string(),
        "attributes".to_string(),
        "interactions".to_string(),
        "merged_ids".to_string(),
    ];
    for (profile, version, other) in [
        (root.id, root.version, absorbed.id),
        (absorbed.id, absorbed.version, root.id),
    ] {
        tx.emit(
            NewChange {
                kind: ChangeKind::ProfilesUnmerged,
                profile,
                version,
                paths: paths.clone(),
                related: vec![other],
            },
            now,
        )?;
    }
    reindex(tx, &[root.id, absorbed.id, m.survivor])?;
    Ok(Unmerged {
        merge: m,
        survivor_root: (root.id, root.version),
        restored: (absorbed.id, absorbed.version),
    })
}

/// LinkIdentifier. Returns (root id, version, whether anything changed).
pub fn link(
    tx: &mut dyn WriteTx,
    key: &ProfileKey,
    id: &Identifier,
    policy: &IdentityPolicy,
    source: &str,
    now: Timestamp,
) -> Result<(ProfileId, u64, bool)> {
    let mut root = find_root(tx, key)?;
    if policy.is_blocked(id) {
        return Err(Error::precondition(
            "IDENTIFIER_BLOCKED",
            "this value is on the block list for its kind (a shared or test value) and is never linked",
        ));
    }
    if let Some(existing) = tx.identifier_link(id)? {
        let owner = root_of(tx, existing.origin)?.map(|r| r.id);
        if owner == Some(root.id) {
            return Ok((root.id, root.version, false));
        }
        return Err(Error::precondition(
            "IDENTIFIER_OWNED_BY_OTHER_PROFILE",
            "another profile holds this identifier; merge the profiles or unlink it there first",
        ));
    }
    let held = held_by(tx, &root)?;
    let refs: Vec<&Identifier> = held.iter().collect();
    match policy.may_link(&refs, id) {
        Ok(()) => {}
        Err(LinkRefusal::UniqueTaken) => {
            return Err(Error::precondition(
                "CUSTOMER_NUMBER_ALREADY_SET",
                "the profile already holds a customer number; a profile holds at most one",
            ));
        }
        Err(LinkRefusal::CapReached) => {
            return Err(Error::precondition(
                "IDENTIFIER_CAP_REACHED",
                format!(
                    "the profile already holds the maximum number of {} identifiers",
                    id.kind().config_name()
                ),
            ));
        }
    }
    link_all(tx, root.id, std::slice::from_ref(id), source, now)?;
    root.version += 1;
    root.updated_at = now;
    tx.put_profile(&root)?;
    tx.emit(
        NewChange {
            kind: ChangeKind::IdentifiersChanged,
            profile: root.id,
            version: root.version,
            paths: vec!["identifiers".into()],
            related: vec![],
        },
        now,
    )?;
    reindex(tx, &[root.id])?;
    Ok((root.id, root.version, true))
}

/// UnlinkIdentifier. Returns (root id, version).
pub fn unlink(
    tx: &mut dyn WriteTx,
    key: &ProfileKey,
    id: &Identifier,
    now: Timestamp,
) -> Result<(ProfileId, u64)> {
    let mut root = find_root(tx, key)?;
    let link = tx.identifier_link(id)?;
    let held_here = match &link {
        Some(l) => root_of(tx, l.origin)?.map(|r| r.id) == Some(root.id),
        None => false,
    };
    let link = match (link, held_here) {
        (Some(l), true) => l,
        _ => {
            return Err(Error::NotFound(format!(
                "profile {} does not hold the {} identifier given",
                root.id,
                id.kind().config_name()
            )));
        }
    };
    tx.remove_link(&link)?;
    root.version += 1;
    root.updated_at = now;
    tx.put_profile(&root)?;
    tx.emit(
        NewChange {
            kind: ChangeKind::IdentifiersChanged,
            profile: root.id,
            version: root.version,
            paths: vec!["identifiers".into()],
            related: vec![],
        },
        now,
    )?;
    reindex(tx, &[root.id])?;
    Ok((root.id, root.version))
}

/// Every merge touching the tree of `root`, oldest first.
pub fn list_merges(view: &dyn ReadView, root: &ProfileRecord) -> Result<Vec<MergeRecord>> {
    let mut ids = Vec::new();
    for m in members(view, root)? {
        for id in view.merges_of(m.id)? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        if let Some(m) = view.merge(id)? {
            out.push(m);
        }
    }
    out.sort_by_key(|m| (m.merged_at, m.id));
    Ok(out)
}
