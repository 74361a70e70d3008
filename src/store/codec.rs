//! The one place values are turned into bytes and back. Every stored value starts with a
//! format version byte; decoding refuses versions it does not know, so corrupt or newer data is
//! reported, never served. Encryption at rest will wrap the payload here.
//!
//! Formats: 1 = the layout of the first release; 2 = current (interactions carry a purpose,
//! merges a write sequence). A value in an older format is decoded through [`Stored::from_v1`],
//! so old data directories keep working without a rewrite.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::ids::{InteractionId, MergeId, ProfileId};
use crate::domain::interaction::{CaseState, Channel, Direction, Interaction, Money};
use crate::domain::profile::{MergeRecord, Unmerge};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// Format of the first release.
pub const FORMAT_V1: u8 = 1;
/// Format of values written by this build.
pub const FORMAT_V2: u8 = 2;

/// A value the store keeps. Types whose layout changed since format 1 decode the old layout.
pub trait Stored: Serialize + DeserializeOwned {
    /// Decodes a format-1 payload.
    fn from_v1(payload: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(payload)
    }
}

/// Encodes a value.
pub fn encode<T: Stored>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_V2];
    postcard::to_io(value, &mut out)
        .map_err(|e| Error::Unavailable(format!("cannot encode a value: {e}")))?;
    Ok(out)
}

/// Decodes a value; `what` names it in errors.
pub fn decode<T: Stored>(what: &str, bytes: &[u8]) -> Result<T> {
    let decoded = match bytes.split_first() {
        Some((&FORMAT_V2, payload)) => postcard::from_bytes(payload),
        Some((&FORMAT_V1, payload)) => T::from_v1(payload),
        Some((v, _)) => {
            return Err(Error::Corrupt(format!(
                "{what}: unknown format version {v}"
            )));
        }
        None => return Err(Error::Corrupt(format!("{what}: empty value"))),
    };
    decoded.map_err(|e| Error::Corrupt(format!("{what}: cannot decode: {e}")))
}

/// A u64 counter in `meta`.
pub fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{what}: not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

impl Stored for crate::domain::profile::ProfileRecord {}
impl Stored for crate::domain::profile::IdentifierLink {}
impl Stored for crate::domain::profile::ChangeEvent {}
impl Stored for crate::domain::attributes::HistoryEntry {}
impl Stored for crate::domain::consent::ConsentRecord {}
impl Stored for crate::domain::consent::Preferences {}
impl Stored for crate::domain::summary::Summary {}
impl Stored for Vec<crate::domain::segments::IndexTerm> {}
impl Stored for Timestamp {}

/// An interaction as format 1 stored it (no purpose).
#[derive(serde::Deserialize)]
struct InteractionV1 {
    id: InteractionId,
    origin: ProfileId,
    channel: Channel,
    direction: Direction,
    department: String,
    kind: String,
    message_key: Option<String>,
    case: Option<(String, CaseState)>,
    amount: Option<Money>,
    summary: String,
    attributes: std::collections::BTreeMap<String, String>,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
}

impl Stored for Interaction {
    fn from_v1(payload: &[u8]) -> postcard::Result<Self> {
        let v: InteractionV1 = postcard::from_bytes(payload)?;
        Ok(Interaction {
            id: v.id,
            origin: v.origin,
            channel: v.channel,
            direction: v.direction,
            department: v.department,
            kind: v.kind,
            message_key: v.message_key,
            case: v.case,
            amount: v.amount,
            summary: v.summary,
            attributes: v.attributes,
            occurred_at: v.occurred_at,
            recorded_at: v.recorded_at,
            purpose: None,
        })
    }
}

/// A merge as format 1 stored it (no write sequence).
#[derive(serde::Deserialize)]
struct MergeRecordV1 {
    id: MergeId,
    survivor: ProfileId,
    absorbed: ProfileId,
    merged_at: Timestamp,
    source: String,
    reason: String,
    triggers: Vec<crate::domain::identifier::Identifier>,
    unmerged: Option<Unmerge>,
}

impl Stored for MergeRecord {
    fn from_v1(payload: &[u8]) -> postcard::Result<Self> {
        let v: MergeRecordV1 = postcard::from_bytes(payload)?;
        Ok(MergeRecord {
            id: v.id,
            survivor: v.survivor,
            absorbed: v.absorbed,
            merged_at: v.merged_at,
            source: v.source,
            reason: v.reason,
            triggers: v.triggers,
            unmerged: v.unmerged,
            // Before any write of the same microsecond: what format 1 could not order.
            write_seq: 0,
        })
    }
}

/// Values with the same layout in every format, for tests.
#[cfg(test)]
impl Stored for (u64, String) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() -> Result<()> {
        let v = (7u64, "x".to_string());
        let bytes = encode(&v)?;
        assert_eq!(decode::<(u64, String)>("t", &bytes)?, v);
        assert!(decode::<(u64, String)>("t", &[]).is_err());
        assert!(decode::<(u64, String)>("t", &[9, 1, 2]).is_err());
        assert!(decode::<(u64, String)>("t", &bytes[..2]).is_err());
        Ok(())
    }

    #[test]
    fn format_1_interactions_and_merges_still_decode() -> Result<()> {
        use crate::domain::identifier::{Identifier, IdentifierKind};
        #[derive(Serialize)]
        struct OldInteraction<'a>(
            InteractionId,
            ProfileId,
            Channel,
            Direction,
            &'a str,
            &'a str,
            Option<String>,
            Option<(String, CaseState)>,
            Option<Money>,
            &'a str,
            std::collections::BTreeMap<String, String>,
            Timestamp,
            Timestamp,
        );
        let t = Timestamp(1_795_428_000_000_000);
        let id = InteractionId::new_at(t);
        let p = ProfileId::new_at(t);
        let mut bytes = vec![FORMAT_V1];
        bytes.extend(
            postcard::to_allocvec(&OldInteraction(
                id,
                p,
                Channel::Sms,
                Direction::Outbound,
                "marketing",
                "campaign_message",
                Some("spring".into()),
                None,
                None,
                "hello",
                Default::default(),
                t,
                t,
            ))
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        );
        let i: Interaction = decode("interaction", &bytes)?;
        assert_eq!((i.id, i.origin, i.purpose), (id, p, None));
        assert_eq!(i.message_key.as_deref(), Some("spring"));

        #[derive(Serialize)]
        struct OldMerge(
            MergeId,
            ProfileId,
            ProfileId,
            Timestamp,
            String,
            String,
            Vec<Identifier>,
            Option<Unmerge>,
        );
        let m = MergeId::new_at(t);
        let mut bytes = vec![FORMAT_V1];
        bytes.extend(
            postcard::to_allocvec(&OldMerge(
                m,
                p,
                p,
                t,
                "s".into(),
                "r".into(),
                vec![Identifier::parse(IdentifierKind::Email, "", "a@b.example")?],
                None,
            ))
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        );
        let back: MergeRecord = decode("merge", &bytes)?;
        assert_eq!((back.id, back.write_seq, back.triggers.len()), (m, 0, 1));
        Ok(())
    }
}
