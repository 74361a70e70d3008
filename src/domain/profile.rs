//! Stored profiles, merges and change events: the records the identity graph is made of.
//!
//! Nothing is destroyed by a merge (SPEC §3): every identifier link, attribute value and
//! interaction keeps the profile it was written to (its *origin*), and a live profile's view is
//! computed over its merge tree. Unmerge is then exact by construction: detach a subtree.

use serde::{Deserialize, Serialize};

use super::attributes::AttrMap;
use super::identifier::Identifier;
use super::ids::{MergeId, ProfileId};
use super::time::Timestamp;

/// One profile as stored: what was written to it, and its place in a merge tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// Its id.
    pub id: ProfileId,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change of the view rooted here.
    pub updated_at: Timestamp,
    /// +1 on every change while this profile is a root.
    pub version: u64,
    /// Set while this profile is absorbed into another (the parent in its merge tree).
    pub merged_into: Option<(MergeId, ProfileId)>,
    /// Active merges in which this profile absorbed another (the children).
    pub absorbed: Vec<(MergeId, ProfileId)>,
    /// Attribute values written to this profile.
    pub attributes: AttrMap,
}

impl ProfileRecord {
    /// A new live profile.
    pub fn new(id: ProfileId, now: Timestamp) -> Self {
        ProfileRecord {
            id,
            created_at: now,
            updated_at: now,
            version: 1,
            merged_into: None,
            absorbed: Vec::new(),
            attributes: AttrMap::new(),
        }
    }

    /// True while not absorbed by another profile.
    pub fn is_root(&self) -> bool {
        self.merged_into.is_none()
    }

    /// Order deciding the survivor of a merge: the oldest, ties by id.
    pub fn age_key(&self) -> (Timestamp, ProfileId) {
        (self.created_at, self.id)
    }
}

/// Where an identifier is linked: the profile it was written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierLink {
    /// The identifier.
    pub identifier: Identifier,
    /// The profile it was linked to (its origin; the live owner is that profile's root).
    pub origin: ProfileId,
    /// When.
    pub linked_at: Timestamp,
    /// Where it came from.
    pub source: String,
}

/// A merge of `absorbed` into `survivor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// Its id.
    pub id: MergeId,
    /// The profile that absorbed.
    pub survivor: ProfileId,
    /// The profile absorbed.
    pub absorbed: ProfileId,
    /// When.
    pub merged_at: Timestamp,
    /// Who or what merged.
    pub source: String,
    /// Why.
    pub reason: String,
    /// Identifiers that showed the two are one.
    pub triggers: Vec<Identifier>,
    /// Set once undone.
    pub unmerged: Option<Unmerge>,
    /// Global write order (orders the merge against writes in the same microsecond).
    pub write_seq: u64,
}

/// How a merge was undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmerge {
    /// When.
    pub at: Timestamp,
    /// Who.
    pub source: String,
    /// Why.
    pub reason: String,
}

/// What kind of change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A profile was created.
    ProfileCreated,
    /// Attributes changed.
    ProfileUpdated,
    /// Identifiers were linked or unlinked.
    IdentifiersChanged,
    /// Profiles merged.
    ProfilesMerged,
    /// A merge was undone.
    ProfilesUnmerged,
    /// An interaction was recorded.
    InteractionRecorded,
    /// Consent or preferences changed.
    ConsentChanged,
    /// The customer was erased.
    ProfileErased,
}

/// A durable change event (no personal values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Global sequence, assigned in the writing transaction.
    pub sequence: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The live profile that changed.
    pub profile: ProfileId,
    /// Its version after the change.
    pub version: u64,
    /// Changed paths.
    pub paths: Vec<String>,
    /// Other profiles involved.
    pub related: Vec<ProfileId>,
    /// When recorded.
    pub recorded_at: Timestamp,
}
