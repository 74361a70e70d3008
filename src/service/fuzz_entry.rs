//! Fuzzing entry points for request conversion and page tokens (see fuzz/README.md). Each
//! decodes arbitrary bytes as one request message and runs the same conversion and validation
//! calls its handler makes before it touches the store; errors go through the one
//! `Error` → `Status` mapping and are rendered as HTTP headers, as a reply would be.

use prost::Message;
use tonic::Status;

use super::convert::{
    self, Violations, identifiers_in, profile_ref_in, read_mask_in, required_identifier, text_in,
};
use super::identity::{MAX_BATCH, MAX_RESOLVE_IDENTIFIERS};
use super::interaction::{ListPosition, MAX_FILTER_VALUES, MAX_INTERACTION_BATCH, entry_in};
use super::profile::page_size_in;
use super::{page_token, pb, rules_convert};
use crate::domain::attributes::AttrPath;
use crate::domain::ids::{MergeId, RequestId};
use crate::domain::interaction::{MAX_FUTURE_SECS, valid_department, valid_type};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// The clock the conversions see: fixed, so a run is reproducible.
pub const NOW: Timestamp = Timestamp(1_795_428_000_000_000);

/// Number of request kinds [`request`] picks from (by the first byte).
pub const REQUEST_KINDS: u8 = 22;

/// Outcome of one request conversion, for tests.
pub type Outcome = std::result::Result<(), Status>;

/// Decodes `data[1..]` as the request kind chosen by `data[0]` and validates it.
/// `None` when the bytes are not a message of that kind (prost refused them).
pub fn request(data: &[u8]) -> Option<Outcome> {
    let (&which, bytes) = data.split_first()?;
    let r = match which % REQUEST_KINDS {
        0 => resolve(&pb::ResolveRequest::decode(bytes).ok()?),
        1 => identifiers_in(
            "identifiers",
            &pb::LookupProfileIdsRequest::decode(bytes).ok()?.identifiers,
            1,
            MAX_BATCH,
        )
        .map(drop),
        2 => {
            let req = pb::LinkIdentifierRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(required_identifier("identifier", req.identifier.as_ref()));
            v.check(text_in("source", &req.source, 64, false));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        3 => {
            let req = pb::UnlinkIdentifierRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(required_identifier("identifier", req.identifier.as_ref()));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        4 => merge(&pb::MergeProfilesRequest::decode(bytes).ok()?),
        5 => {
            let req = pb::UnmergeProfilesRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(if req.merge_id.is_empty() {
                Err(Error::invalid("merge_id", "required"))
            } else {
                MergeId::parse("merge_id", &req.merge_id).map(drop)
            });
            v.check(text_in("reason", &req.reason, 256, false));
            v.check(text_in("source", &req.source, 64, false));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        6 => profile_ref_in(
            "profile",
            pb::ListMergesRequest::decode(bytes).ok()?.profile.as_ref(),
        )
        .map(drop),
        7 => {
            let req = pb::GetProfileRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(read_mask_in("read_mask", req.read_mask.as_ref()));
            v.finish()
        }
        8 => batch_get(&pb::BatchGetProfilesRequest::decode(bytes).ok()?),
        9 => update(&pb::UpdateProfileRequest::decode(bytes).ok()?),
        10 => history(&pb::GetProfileHistoryRequest::decode(bytes).ok()?),
        11 => search(&pb::SearchProfilesRequest::decode(bytes).ok()?),
        12 => rules_convert::filter_in(
            "filter",
            pb::CountProfilesRequest::decode(bytes)
                .ok()?
                .filter
                .as_ref(),
        )
        .map(drop),
        13 => entry_in("", &pb::RecordInteractionRequest::decode(bytes).ok()?, NOW).map(drop),
        14 => record_batch(&pb::RecordInteractionsRequest::decode(bytes).ok()?),
        15 => list_interactions(&pb::ListInteractionsRequest::decode(bytes).ok()?),
        16 => {
            let req = pb::RecordConsentRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(rules_convert::new_consent_in(
                "consent",
                req.consent.as_ref(),
            ));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        17 => {
            let req = pb::SetPreferencesRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(rules_convert::preferences_in(
                "preferences",
                req.preferences.as_ref(),
            ));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        18 => {
            let req = pb::CheckContactRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(rules_convert::contact_check_in(&req));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        19 => {
            let req = pb::EraseCustomerRequest::decode(bytes).ok()?;
            let mut v = Violations::default();
            v.check(profile_ref_in("profile", req.profile.as_ref()));
            v.check(text_in("reason", &req.reason, 256, true));
            v.check(RequestId::parse_optional("request_id", &req.request_id));
            v.finish()
        }
        20 => profile_ref_in(
            "profile",
            pb::ExportCustomerRequest::decode(bytes)
                .ok()?
                .profile
                .as_ref(),
        )
        .map(drop),
        _ => profile_ref_in(
            "profile",
            pb::GetConsentsRequest::decode(bytes).ok()?.profile.as_ref(),
        )
        .map(drop),
    };
    Some(r.map_err(|e| {
        let status = Status::from(e);
        // What the reply carries: the status rendered into trailers.
        let _ = status.clone().into_http::<()>();
        status
    }))
}

fn resolve(req: &pb::ResolveRequest) -> Result<()> {
    let mut v = Violations::default();
    v.check(identifiers_in(
        "identifiers",
        &req.identifiers,
        1,
        MAX_RESOLVE_IDENTIFIERS,
    ));
    v.check(text_in("source", &req.source, 64, false));
    v.check(RequestId::parse_optional("request_id", &req.request_id));
    v.finish()
}

fn merge(req: &pb::MergeProfilesRequest) -> Result<()> {
    let mut v = Violations::default();
    if req.profiles.len() < 2 || req.profiles.len() > MAX_RESOLVE_IDENTIFIERS {
        v.check::<()>(Err(Error::invalid("profiles", "count")));
    }
    for (i, p) in req.profiles.iter().enumerate() {
        v.check(profile_ref_in(&format!("profiles[{i}]"), Some(p)));
    }
    v.check(text_in("reason", &req.reason, 256, false));
    v.check(text_in("source", &req.source, 64, false));
    v.check(RequestId::parse_optional("request_id", &req.request_id));
    v.finish()
}

fn batch_get(req: &pb::BatchGetProfilesRequest) -> Result<()> {
    if req.profiles.is_empty() || req.profiles.len() > MAX_BATCH {
        return Err(Error::invalid("profiles", "count"));
    }
    read_mask_in("read_mask", req.read_mask.as_ref())?;
    for (i, p) in req.profiles.iter().enumerate() {
        // The handler answers per entry; a bad entry does not fail the batch.
        let _ = profile_ref_in(&format!("profiles[{i}]"), Some(p));
    }
    Ok(())
}

fn update(req: &pb::UpdateProfileRequest) -> Result<()> {
    let mut v = Violations::default();
    v.check(profile_ref_in("profile", req.profile.as_ref()));
    v.check(convert::attribute_changes_in(
        req.attributes.as_ref(),
        req.update_mask.as_ref(),
        NOW,
    ));
    v.check(text_in("source", &req.source, 64, true));
    v.check(match &req.observed_at {
        None => Ok(NOW),
        Some(t) => convert::time_in("observed_at", t).and_then(|t| {
            if t > NOW.plus_secs(MAX_FUTURE_SECS) {
                Err(Error::invalid("observed_at", "in the future"))
            } else {
                Ok(t)
            }
        }),
    });
    v.check(RequestId::parse_optional("request_id", &req.request_id));
    v.finish()
}

fn history(req: &pb::GetProfileHistoryRequest) -> Result<()> {
    let mut v = Violations::default();
    let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
    if !req.path.is_empty() && AttrPath::parse(&req.path).is_none() {
        v.check::<()>(Err(Error::invalid("path", "unknown attribute path")));
    }
    v.check(page_size_in(req.page_size, 100, 1000));
    v.finish()?;
    let fp = page_token::fingerprint(&[
        b"history",
        format!("{key:?}").as_bytes(),
        req.path.as_bytes(),
    ]);
    page_token::decode::<u64>(&req.page_token, fp).map(drop)
}

fn search(req: &pb::SearchProfilesRequest) -> Result<()> {
    let mut v = Violations::default();
    let filter = v.check(rules_convert::filter_in("filter", req.filter.as_ref()));
    v.check(read_mask_in("read_mask", req.read_mask.as_ref()));
    v.check(page_size_in(req.page_size, 50, 1000));
    v.finish()?;
    let fp = page_token::fingerprint(&[b"search", format!("{filter:?}").as_bytes()]);
    page_token::decode::<[u8; 16]>(&req.page_token, fp).map(drop)
}

fn record_batch(req: &pb::RecordInteractionsRequest) -> Result<()> {
    if req.requests.is_empty() || req.requests.len() > MAX_INTERACTION_BATCH {
        return Err(Error::invalid("requests", "count"));
    }
    let mut v = Violations::default();
    for (i, r) in req.requests.iter().enumerate() {
        v.check(entry_in(&format!("requests[{i}]"), r, NOW));
    }
    v.finish()
}

fn list_interactions(req: &pb::ListInteractionsRequest) -> Result<()> {
    let mut v = Violations::default();
    v.check(profile_ref_in("profile", req.profile.as_ref()));
    for (i, c) in req.channels.iter().enumerate() {
        v.check(convert::channel_in(*c).map_err(|e| Error::invalid(format!("channels[{i}]"), e)));
    }
    v.check(convert::direction_in(req.direction, true).map_err(|e| Error::invalid("direction", e)));
    if let Some(t) = &req.occurred_after {
        v.check(convert::time_in("occurred_after", t));
    }
    if let Some(t) = &req.occurred_before {
        v.check(convert::time_in("occurred_before", t));
    }
    v.check(page_size_in(req.page_size, 50, 500));
    for (i, d) in req.departments.iter().enumerate().take(MAX_FILTER_VALUES) {
        if !valid_department(d) {
            v.check::<()>(Err(Error::invalid(format!("departments[{i}]"), "bad")));
        }
    }
    for (i, t) in req.types.iter().enumerate().take(MAX_FILTER_VALUES) {
        if !valid_type(t) {
            v.check::<()>(Err(Error::invalid(format!("types[{i}]"), "bad")));
        }
    }
    v.finish()?;
    page_token::decode::<ListPosition>(&req.page_token, 0).map(drop)
}

/// Page tokens: `data[0]` picks the position type; with its low bit clear the rest is taken as
/// the token text, otherwise as the position bytes of a token with the right version and
/// fingerprint. A token that decodes must encode to one that decodes to the same position and
/// is refused for any other query. `Err` says which property broke.
pub fn page_token(data: &[u8]) -> std::result::Result<(), String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(());
    };
    let fp = 0x5eed_u64;
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        use base64::Engine;
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&fp.to_be_bytes());
        bytes.extend_from_slice(rest);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    match (mode >> 1) % 3 {
        0 => round_trip::<u64>(&token, fp),
        1 => round_trip::<[u8; 16]>(&token, fp),
        _ => round_trip::<ListPosition>(&token, fp),
    }
}

fn round_trip<T>(token: &str, fp: u64) -> std::result::Result<(), String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let pos = match page_token::decode::<T>(token, fp) {
        Ok(Some(pos)) => pos,
        Ok(None) => return Ok(()),
        Err(Error::InvalidArgument(v)) if v.iter().all(|f| f.field == "page_token") => {
            return Ok(());
        }
        Err(e) => return Err(format!("a bad token gave {e:?}")),
    };
    let again = page_token::encode(&pos, fp);
    let back = page_token::decode::<T>(&again, fp).map_err(|e| format!("{e}"))?;
    if back.as_ref() != Some(&pos) {
        return Err(format!(
            "page token did not round-trip: {pos:?} -> {back:?}"
        ));
    }
    if page_token::decode::<T>(&again, fp ^ 1).is_ok() {
        return Err("page token accepted for another query".into());
    }
    Ok(())
}
