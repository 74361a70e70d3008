//! Identity policies (SPEC §2): unique kinds, caps per kind, blocked values.

use std::collections::{BTreeMap, HashSet};

use super::identifier::{Identifier, IdentifierKind};

/// The configured identity policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Most identifiers of a kind per profile (EXTERNAL: per namespace). Absent = no cap.
    pub caps: BTreeMap<IdentifierKind, usize>,
    /// Kinds of which a profile holds at most one, and that never merge when different.
    pub unique: Vec<IdentifierKind>,
    /// Values used for lookup only: never linked, never a cause to merge.
    pub blocked: HashSet<Identifier>,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        IdentityPolicy {
            caps: BTreeMap::from([
                (IdentifierKind::Email, 10),
                (IdentifierKind::Phone, 10),
                (IdentifierKind::LoyaltyCard, 5),
                (IdentifierKind::DeviceId, 50),
                (IdentifierKind::External, 20),
            ]),
            unique: vec![IdentifierKind::CustomerNumber],
            blocked: HashSet::new(),
        }
    }
}

/// Why an identifier may not join a set of identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// The set already holds a different value of a unique kind.
    UniqueTaken,
    /// The set holds the cap for this kind (namespace).
    CapReached,
}

/// Why several identifier sets may not be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRefusal {
    /// Two different values of a unique kind (customer numbers).
    UniqueConflict,
    /// The union would exceed a cap.
    CapExceeded,
}

impl IdentityPolicy {
    /// Whether the value is blocked.
    pub fn is_blocked(&self, id: &Identifier) -> bool {
        self.blocked.contains(id)
    }

    fn cap_for(&self, kind: IdentifierKind) -> Option<usize> {
        self.caps.get(&kind).copied()
    }

    fn same_bucket(a: &Identifier, b: &Identifier) -> bool {
        a.kind() == b.kind()
            && (a.kind() != IdentifierKind::External || a.namespace() == b.namespace())
    }

    /// Whether `id` may be added to a profile currently holding `held`.
    pub fn may_link(&self, held: &[&Identifier], id: &Identifier) -> Result<(), LinkRefusal> {
        if self.unique.contains(&id.kind())
            && held.iter().any(|h| h.kind() == id.kind() && *h != id)
        {
            return Err(LinkRefusal::UniqueTaken);
        }
        if let Some(cap) = self.cap_for(id.kind()) {
            let n = held.iter().filter(|h| Self::same_bucket(h, id)).count();
            if n >= cap {
                return Err(LinkRefusal::CapReached);
            }
        }
        Ok(())
    }

    /// Whether profiles holding these identifier sets may become one.
    pub fn may_merge(&self, held: &[&Identifier]) -> Result<(), MergeRefusal> {
        for kind in &self.unique {
            let mut values: Vec<&str> = held
                .iter()
                .filter(|h| h.kind() == *kind)
                .map(|h| h.value())
                .collect();
            values.sort_unstable();
            values.dedup();
            if values.len() > 1 {
                return Err(MergeRefusal::UniqueConflict);
            }
        }
        let mut counts: BTreeMap<(IdentifierKind, &str), usize> = BTreeMap::new();
        for h in held {
            *counts.entry((h.kind(), h.namespace())).or_default() += 1;
        }
        for ((kind, _), n) in counts {
            if self.cap_for(kind).is_some_and(|cap| n > cap) {
                return Err(MergeRefusal::CapExceeded);
            }
        }
        Ok(())
    }
}
