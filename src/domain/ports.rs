//! What the domain needs from storage, as traits: the store implements them, the rules use
//! them. Reads see a consistent snapshot; a write transaction also sees its own writes.

use super::attributes::HistoryEntry;
use super::consent::{ConsentRecord, Preferences};
use super::identifier::Identifier;
use super::ids::{MergeId, ProfileId};
use super::interaction::{Interaction, InteractionCursor};
use super::profile::{ChangeKind, IdentifierLink, MergeRecord, ProfileRecord};
use super::segments::{IndexQuery, IndexTerm};
use super::summary::Summary;
use super::time::Timestamp;
use crate::error::Result;

/// Typed reads.
pub trait ReadView {
    /// A profile record by id (merged-away profiles included).
    fn profile(&self, id: ProfileId) -> Result<Option<ProfileRecord>>;
    /// Where an identifier is linked, if anywhere.
    fn identifier_link(&self, id: &Identifier) -> Result<Option<IdentifierLink>>;
    /// Identifiers whose origin is `profile` (not its merge tree).
    fn own_identifiers(&self, profile: ProfileId) -> Result<Vec<IdentifierLink>>;
    /// A merge record.
    fn merge(&self, id: MergeId) -> Result<Option<MergeRecord>>;
    /// Every merge (active or undone) in which `profile` took part.
    fn merges_of(&self, profile: ProfileId) -> Result<Vec<MergeId>>;
    /// History entries written to `profile` with `write_seq > after`, oldest first.
    fn history(&self, profile: ProfileId, after: u64, limit: usize) -> Result<Vec<HistoryEntry>>;
    /// Up to `limit` interactions written to `profile`, newest first, strictly older than
    /// `before` when given.
    fn interactions(
        &self,
        profile: ProfileId,
        before: Option<InteractionCursor>,
        limit: usize,
    ) -> Result<Vec<Interaction>>;
    /// A stored idempotent response.
    fn idempotent_response(&self, scope: &str, request_id: &str) -> Result<Option<Vec<u8>>>;
    /// Consent records written to `profile` (not its tree), in write order.
    fn consents(&self, profile: ProfileId) -> Result<Vec<ConsentRecord>>;
    /// The preferences last set on `profile` itself.
    fn preferences(&self, profile: ProfileId) -> Result<Option<Preferences>>;
    /// The summary of the interactions written to `profile` itself.
    fn summary(&self, profile: ProfileId) -> Result<Option<Summary>>;
    /// When an outbound interaction with `message_key` written to `profile` last occurred.
    fn message_sent(&self, profile: ProfileId, message_key: &str) -> Result<Option<Timestamp>>;
    /// The terms `profile` is indexed under.
    fn index_terms(&self, profile: ProfileId) -> Result<Vec<IndexTerm>>;
    /// Up to `limit` live profiles indexed under terms matching `q` (for a range: a superset,
    /// by bucket), or `None` when the index cannot answer `q` (a range over free text).
    fn index_scan(&self, q: &IndexQuery, limit: usize) -> Result<Option<Vec<ProfileId>>>;
    /// Up to `limit` live profiles indexed under exactly `term` whose ids are above `after`, in
    /// id order: a posting list read a chunk at a time.
    fn term_postings(
        &self,
        term: &IndexTerm,
        after: Option<ProfileId>,
        limit: usize,
    ) -> Result<Vec<ProfileId>>;
    /// Origin profiles of up to `limit` interactions of type `kind` (with attribute
    /// `attr.0 = attr.1`) that occurred at or after `since`, oldest first (repeats possible).
    fn interactions_indexed(
        &self,
        kind: &str,
        attr: Option<(&str, &str)>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<ProfileId>>;
    /// When `profile` was erased, if it was.
    fn erased(&self, profile: ProfileId) -> Result<Option<Timestamp>>;
    /// Up to `limit` profile records (any, merged-away included) with ids above `after`.
    fn profiles_after(&self, after: Option<ProfileId>, limit: usize) -> Result<Vec<ProfileRecord>>;
    /// Where the bulk import of the file with fingerprint `file` stopped (opaque to the store).
    fn import_position(&self, file: &[u8; 32]) -> Result<Option<Vec<u8>>>;
}

/// A change event before the store gives it its sequence number.
#[derive(Debug, Clone)]
pub struct NewChange {
    /// Kind.
    pub kind: ChangeKind,
    /// Live profile.
    pub profile: ProfileId,
    /// Version after.
    pub version: u64,
    /// Paths.
    pub paths: Vec<String>,
    /// Related profiles.
    pub related: Vec<ProfileId>,
}

/// Typed writes, all part of one atomic transaction.
pub trait WriteTx: ReadView {
    /// Inserts or replaces a profile record.
    fn put_profile(&mut self, p: &ProfileRecord) -> Result<()>;
    /// Links an identifier (both directions of the index).
    fn put_link(&mut self, link: &IdentifierLink) -> Result<()>;
    /// Removes an identifier link.
    fn remove_link(&mut self, link: &IdentifierLink) -> Result<()>;
    /// Inserts or replaces a merge record (and indexes it under both profiles).
    fn put_merge(&mut self, m: &MergeRecord) -> Result<()>;
    /// Appends a history entry.
    fn put_history(&mut self, h: &HistoryEntry) -> Result<()>;
    /// Stores an interaction.
    fn put_interaction(&mut self, i: &Interaction) -> Result<()>;
    /// Stores an idempotent response.
    fn put_idempotent_response(
        &mut self,
        scope: &str,
        request_id: &str,
        at: Timestamp,
        response: &[u8],
    ) -> Result<()>;
    /// Appends a consent record.
    fn put_consent(&mut self, c: &ConsentRecord) -> Result<()>;
    /// Replaces the preferences set on `profile`.
    fn put_preferences(&mut self, profile: ProfileId, p: &Preferences) -> Result<()>;
    /// Replaces the summary of `profile`'s own interactions.
    fn put_summary(&mut self, profile: ProfileId, s: &Summary) -> Result<()>;
    /// Records when `message_key` was last sent, on `profile`.
    fn put_message_sent(
        &mut self,
        profile: ProfileId,
        message_key: &str,
        at: Timestamp,
    ) -> Result<()>;
    /// Replaces `profile`'s index terms `old` (as stored) with `new`.
    fn set_index_terms(
        &mut self,
        profile: ProfileId,
        old: &[IndexTerm],
        new: &[IndexTerm],
    ) -> Result<()>;
    /// Deletes everything written to `profile` (its record, identifier links, history,
    /// interactions and their index entries, consents, preferences, summary, sent messages,
    /// index terms) and leaves a tombstone with the time.
    fn erase_profile(&mut self, profile: ProfileId, at: Timestamp) -> Result<()>;
    /// Deletes stored idempotent responses that mention any of `needles`; returns how many.
    fn purge_idempotency_mentioning(&mut self, needles: &[String]) -> Result<usize>;
    /// Next value of the global write counter (attribute tie-breaks, history order).
    fn next_write_seq(&mut self) -> Result<u64>;
    /// Appends a change event, or joins it to the one this transaction emitted just before when
    /// that one is of the same kind, for the same profile and related profiles (one event with
    /// the later version and both sets of paths); returns its sequence.
    fn emit(&mut self, change: NewChange, at: Timestamp) -> Result<u64>;
    /// Marks the write set as it is now: [`WriteTx::rollback_to_savepoint`] returns to it.
    /// One savepoint at a time (a new one replaces the last); bulk import sets one per line so
    /// a rejected line leaves its batch's writes intact.
    fn savepoint(&mut self);
    /// Undoes every write (and sequence number taken) since the savepoint, which stays set.
    fn rollback_to_savepoint(&mut self) -> Result<()>;
    /// Records where the bulk import of the file with fingerprint `file` stopped, in the same
    /// transaction as the lines it imported.
    fn put_import_position(&mut self, file: &[u8; 32], position: &[u8]) -> Result<()>;
}

/// Follows `merged_into` links to the live profile. `None` if `id` is unknown.
pub fn root_of(view: &dyn ReadView, id: ProfileId) -> Result<Option<ProfileRecord>> {
    let mut cur = match view.profile(id)? {
        Some(p) => p,
        None => return Ok(None),
    };
    // A merge tree is a tree: at most one step per profile; the bound guards against corruption.
    for _ in 0..100_000 {
        match cur.merged_into {
            None => return Ok(Some(cur)),
            Some((_, parent)) => {
                cur = view.profile(parent)?.ok_or_else(|| {
                    crate::error::Error::Corrupt(format!(
                        "profile {} points to missing parent {parent}",
                        cur.id
                    ))
                })?;
            }
        }
    }
    Err(crate::error::Error::Corrupt(format!(
        "merge chain from {id} does not end"
    )))
}

/// Every profile of the tree rooted at `root`, root first.
pub fn members(view: &dyn ReadView, root: &ProfileRecord) -> Result<Vec<ProfileRecord>> {
    let mut out = vec![root.clone()];
    let mut i = 0;
    while i < out.len() {
        let children: Vec<ProfileId> = out[i].absorbed.iter().map(|(_, p)| *p).collect();
        for child in children {
            let rec = view.profile(child)?.ok_or_else(|| {
                crate::error::Error::Corrupt(format!("merge tree names missing profile {child}"))
            })?;
            out.push(rec);
        }
        i += 1;
        if out.len() > 1_000_000 {
            return Err(crate::error::Error::Corrupt("merge tree too large".into()));
        }
    }
    Ok(out)
}

/// Identifier links of every profile in `members`.
pub fn tree_identifiers(
    view: &dyn ReadView,
    members: &[ProfileRecord],
) -> Result<Vec<IdentifierLink>> {
    let mut out = Vec::new();
    for m in members {
        out.extend(view.own_identifiers(m.id)?);
    }
    Ok(out)
}
