//! The customer's rights (SPEC §10): erasure of everything held about a customer — the live
//! profile and every profile merged into it — leaving only tombstones without personal data.

use super::identity::{ProfileKey, find_root};
use super::ids::ProfileId;
use super::ports::{NewChange, WriteTx, members};
use super::profile::ChangeKind;
use super::time::Timestamp;
use crate::error::{Error, Result};

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The live profile named.
    pub profile: ProfileId,
    /// Every profile erased.
    pub erased: Vec<ProfileId>,
    /// True when it had been erased before (nothing was done).
    pub already: bool,
    /// When.
    pub at: Timestamp,
}

/// Erases the customer `key` names. Erasing an erased profile id again succeeds with
/// `already = true`.
pub fn erase(tx: &mut dyn WriteTx, key: &ProfileKey, now: Timestamp) -> Result<Erased> {
    let root = match find_root(tx, key) {
        Ok(r) => r,
        Err(Error::Erased(_)) => {
            let ProfileKey::Id(id) = key else {
                return Err(Error::NotFound(
                    "no profile holds the identifier given".into(),
                ));
            };
            let at = tx.erased(*id)?.unwrap_or(now);
            return Ok(Erased {
                profile: *id,
                erased: vec![*id],
                already: true,
                at,
            });
        }
        Err(e) => return Err(e),
    };
    let ms = members(tx, &root)?;
    let ids: Vec<ProfileId> = ms.iter().map(|m| m.id).collect();
    // Merge records keep who merged with whom (ids only); the identifiers that caused a merge
    // are personal data and go.
    for id in &ids {
        for mid in tx.merges_of(*id)? {
            if let Some(mut m) = tx.merge(mid)? {
                if !m.triggers.is_empty() {
                    m.triggers.clear();
                    tx.put_merge(&m)?;
                }
            }
        }
    }
    for id in &ids {
        tx.erase_profile(*id, now)?;
    }
    let needles: Vec<String> = ids.iter().map(ToString::to_string).collect();
    tx.purge_idempotency_mentioning(&needles)?;
    tx.emit(
        NewChange {
            kind: ChangeKind::ProfileErased,
            profile: root.id,
            version: root.version + 1,
            paths: vec![],
            related: ids.iter().skip(1).copied().collect(),
        },
        now,
    )?;
    Ok(Erased {
        profile: root.id,
        erased: ids,
        already: false,
        at: now,
    })
}
