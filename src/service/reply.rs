//! GetProfile's reply and BatchGetProfiles' results, which the server sends partly from bytes
//! it encoded before.
//!
//! Building and encoding the profile message was about a third of the server's time per
//! GetProfile (perf at 10,000 profiles, every read a view-cache hit). Most of a profile does not
//! depend on the time of the read, only the consents in force and the summary's scores do. So
//! the rest ([`convert::profile_stable_out`]) is encoded once per cached snapshot and read mask
//! and kept in the snapshot's [`Memo`](crate::domain::profiles::Memo), which a commit to the
//! profile drops with the snapshot; each read encodes only the time-dependent part
//! ([`convert::profile_fresh_out`]) and sends it after the kept bytes. Protobuf decodes two
//! encodings of a message written one after the other as their merge (a repeated field's
//! elements add up, an embedded message's occurrences merge), so every client decodes exactly
//! what [`convert::profile_out`] builds; the tests below and in `tests/api` check that.
//!
//! `build.rs` maps `customer_profile.v1.GetProfileResponse` to [`GetProfileResponse`] and
//! `customer_profile.v1.ProfileResult` to [`ProfileResult`] here (prost's `extern_path`): for
//! clients they are the generated messages (a public `profile`, a public `result` oneof), for
//! the server they can also carry those bytes.

use std::sync::Arc;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use super::convert::{self, ReadMask};
use super::pb;
use crate::domain::profiles::{ProfileView, TreeSnapshot};

/// `GetProfileResponse { Profile profile = 1; }`.
#[derive(Clone, Default, PartialEq, Debug)]
pub struct GetProfileResponse {
    /// The profile. A server reply made by [`GetProfileResponse::from_snapshot`] leaves it `None`
    /// and sends its encoding instead; a decoded reply always has it.
    pub profile: Option<pb::Profile>,
    encoded: Option<Encoded>,
}

/// A profile's encoding in two pieces, sent one after the other.
#[derive(Clone, PartialEq, Debug)]
struct Encoded {
    profile_id: String,
    stable: Arc<[u8]>,
    fresh: Vec<u8>,
}

impl Encoded {
    /// `view`'s encoding: the part that does not depend on the time of the read from (or put
    /// into) `snapshot`'s memo under `mask`'s key, the rest encoded now.
    fn from_snapshot(snapshot: &TreeSnapshot, view: &ProfileView, mask: &ReadMask) -> Encoded {
        let stable = snapshot.memo().get_or_make(&memo_key(mask), || {
            convert::profile_stable_out(view, mask)
                .encode_to_vec()
                .into()
        });
        let fresh = convert::profile_fresh_out(view, mask).encode_to_vec();
        Encoded {
            profile_id: view.root.id.to_string(),
            stable,
            fresh,
        }
    }

    fn len(&self) -> usize {
        self.stable.len() + self.fresh.len()
    }

    /// The profile as field `tag` of the enclosing message.
    fn encode_as(&self, tag: u32, buf: &mut impl BufMut) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(self.len() as u64, buf);
        buf.put_slice(&self.stable);
        buf.put_slice(&self.fresh);
    }

    fn encoded_len_as(&self, tag: u32) -> usize {
        key_len(tag) + encoded_len_varint(self.len() as u64) + self.len()
    }
}

const PROFILE_TAG: u32 = 1;

impl GetProfileResponse {
    /// A reply with the message built now.
    pub fn new(profile: pb::Profile) -> GetProfileResponse {
        GetProfileResponse {
            profile: Some(profile),
            encoded: None,
        }
    }

    /// A reply for `view`, made from `snapshot` (the snapshot `view` was made from): the part
    /// that does not depend on the time of the read is taken from (or put into) the snapshot's
    /// memo under `mask`'s key.
    pub fn from_snapshot(
        snapshot: &TreeSnapshot,
        view: &ProfileView,
        mask: &ReadMask,
    ) -> GetProfileResponse {
        GetProfileResponse {
            profile: None,
            encoded: Some(Encoded::from_snapshot(snapshot, view, mask)),
        }
    }

    /// The id of the profile the reply shows, if any.
    pub fn profile_id(&self) -> Option<&str> {
        match (&self.profile, &self.encoded) {
            (Some(p), _) => Some(&p.profile_id),
            (None, Some(e)) => Some(&e.profile_id),
            (None, None) => None,
        }
    }
}

impl Message for GetProfileResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(e) = &self.encoded {
            e.encode_as(PROFILE_TAG, buf);
        } else if let Some(p) = &self.profile {
            prost::encoding::message::encode(PROFILE_TAG, p, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == PROFILE_TAG {
            let p = self.profile.get_or_insert_with(pb::Profile::default);
            prost::encoding::message::merge(wire_type, p, buf, ctx).map_err(|mut e| {
                e.push("GetProfileResponse", "profile");
                e
            })
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(e) = &self.encoded {
            e.encoded_len_as(PROFILE_TAG)
        } else if let Some(p) = &self.profile {
            prost::encoding::message::encoded_len(PROFILE_TAG, p)
        } else {
            0
        }
    }

    fn clear(&mut self) {
        self.profile = None;
        self.encoded = None;
    }
}

/// `ProfileResult { oneof result { Profile profile = 1; ProfileError error = 2; } }`, one key's
/// result in BatchGetProfiles' reply. Like [`GetProfileResponse`], a server result made by
/// [`ProfileResult::from_snapshot`] sends the profile partly from kept bytes (building and
/// encoding the messages was about 60 % of a 100-profile batch by perf); a decoded result always
/// has `result`.
#[derive(Clone, Default, PartialEq, Debug)]
pub struct ProfileResult {
    /// Exactly one is set (in a decoded result; a kept-bytes server result leaves it `None`).
    pub result: Option<profile_result::Result>,
    encoded: Option<Encoded>,
}

/// [`ProfileResult`]'s oneof.
pub mod profile_result {
    use super::pb;

    /// Exactly one is set. The same shape as prost's generated oneof (clients match on it), so
    /// the profile is not boxed.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, Debug)]
    pub enum Result {
        /// The profile.
        Profile(pb::Profile),
        /// Why this key has no profile.
        Error(pb::ProfileError),
    }
}

const RESULT_PROFILE_TAG: u32 = 1;
const RESULT_ERROR_TAG: u32 = 2;

impl ProfileResult {
    /// A result with its message built now.
    pub fn new(result: profile_result::Result) -> ProfileResult {
        ProfileResult {
            result: Some(result),
            encoded: None,
        }
    }

    /// The result for `view`, made from `snapshot` as [`GetProfileResponse::from_snapshot`] does.
    pub fn from_snapshot(
        snapshot: &TreeSnapshot,
        view: &ProfileView,
        mask: &ReadMask,
    ) -> ProfileResult {
        ProfileResult {
            result: None,
            encoded: Some(Encoded::from_snapshot(snapshot, view, mask)),
        }
    }

    /// The id of the profile the result shows, if it shows one.
    pub fn profile_id(&self) -> Option<&str> {
        match (&self.result, &self.encoded) {
            (Some(profile_result::Result::Profile(p)), _) => Some(&p.profile_id),
            (None, Some(e)) => Some(&e.profile_id),
            _ => None,
        }
    }
}

impl Message for ProfileResult {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(e) = &self.encoded {
            e.encode_as(RESULT_PROFILE_TAG, buf);
            return;
        }
        match &self.result {
            Some(profile_result::Result::Profile(p)) => {
                prost::encoding::message::encode(RESULT_PROFILE_TAG, p, buf)
            }
            Some(profile_result::Result::Error(e)) => {
                prost::encoding::message::encode(RESULT_ERROR_TAG, e, buf)
            }
            None => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let named = |mut e: prost::DecodeError, field: &'static str| {
            e.push("ProfileResult", field);
            e
        };
        match tag {
            // A oneof member seen again merges into the one set; another member replaces it.
            RESULT_PROFILE_TAG => {
                if !matches!(self.result, Some(profile_result::Result::Profile(_))) {
                    self.result = Some(profile_result::Result::Profile(pb::Profile::default()));
                }
                match &mut self.result {
                    Some(profile_result::Result::Profile(p)) => {
                        prost::encoding::message::merge(wire_type, p, buf, ctx)
                            .map_err(|e| named(e, "profile"))
                    }
                    _ => Ok(()),
                }
            }
            RESULT_ERROR_TAG => {
                if !matches!(self.result, Some(profile_result::Result::Error(_))) {
                    self.result = Some(profile_result::Result::Error(pb::ProfileError::default()));
                }
                match &mut self.result {
                    Some(profile_result::Result::Error(e)) => {
                        prost::encoding::message::merge(wire_type, e, buf, ctx)
                            .map_err(|e| named(e, "error"))
                    }
                    _ => Ok(()),
                }
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(e) = &self.encoded {
            return e.encoded_len_as(RESULT_PROFILE_TAG);
        }
        match &self.result {
            Some(profile_result::Result::Profile(p)) => {
                prost::encoding::message::encoded_len(RESULT_PROFILE_TAG, p)
            }
            Some(profile_result::Result::Error(e)) => {
                prost::encoding::message::encoded_len(RESULT_ERROR_TAG, e)
            }
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.result = None;
        self.encoded = None;
    }
}

/// Everything in `mask` that changes what [`convert::profile_stable_out`] shows, as bytes:
/// two masks have the same key exactly when they are equal.
fn memo_key(mask: &ReadMask) -> Vec<u8> {
    let v = &mask.visible;
    let flags = [
        mask.identifiers,
        mask.merged_ids,
        mask.consents,
        mask.preferences,
        mask.summary,
        v.identity,
        v.profile,
        v.consent,
        v.activity,
        v.finance,
        mask.attributes.is_some(),
    ];
    let mut key: Vec<u8> = flags.iter().map(|f| u8::from(*f)).collect();
    let text = |s: &str, key: &mut Vec<u8>| {
        encode_varint(s.len() as u64, key);
        key.extend_from_slice(s.as_bytes());
    };
    encode_varint(v.attribute_groups.len() as u64, &mut key);
    for (pattern, readable) in &v.attribute_groups {
        text(pattern, &mut key);
        key.push(u8::from(*readable));
    }
    if let Some(paths) = &mask.attributes {
        let mut paths: Vec<&String> = paths.iter().collect();
        paths.sort();
        for p in paths {
            text(p, &mut key);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use crate::auth::layer::Visibility;

    fn mask(f: impl FnOnce(&mut ReadMask)) -> ReadMask {
        let mut m = ReadMask::all();
        f(&mut m);
        m
    }

    #[test]
    fn memo_keys_differ_exactly_when_masks_do() {
        let masks = [
            ReadMask::all(),
            mask(|m| m.identifiers = false),
            mask(|m| m.summary = false),
            mask(|m| m.visible.finance = false),
            mask(|m| m.visible.attribute_groups = vec![("custom.vip".into(), false)]),
            mask(|m| m.visible.attribute_groups = vec![("custom.vip".into(), true)]),
            mask(|m| m.attributes = Some(HashSet::from(["city".to_string()]))),
            mask(|m| m.attributes = Some(HashSet::from(["cit".to_string(), "y".to_string()]))),
            mask(|m| m.attributes = Some(HashSet::from(["city".to_string(), "given_name".into()]))),
            mask(|m| m.visible = Visibility::all()),
        ];
        for (i, a) in masks.iter().enumerate() {
            for (j, b) in masks.iter().enumerate() {
                assert_eq!(
                    memo_key(a) == memo_key(b),
                    a == b,
                    "masks {i} and {j}: {a:?} / {b:?}"
                );
            }
        }
        let two =
            mask(|m| m.attributes = Some(HashSet::from(["given_name".to_string(), "city".into()])));
        assert_eq!(memo_key(&masks[8]), memo_key(&two), "order of a set");
    }

    #[test]
    fn a_reply_with_no_profile_encodes_to_nothing_and_decodes_back() {
        let r = GetProfileResponse::default();
        assert!(r.encode_to_vec().is_empty());
        assert_eq!(GetProfileResponse::decode(&[][..]).ok(), Some(r));
    }

    #[test]
    fn a_decoded_reply_has_the_profile_and_skips_unknown_fields() {
        let p = pb::Profile {
            profile_id: "p1".into(),
            version: 3,
            ..pb::Profile::default()
        };
        let mut bytes = GetProfileResponse::new(p.clone()).encode_to_vec();
        // field 9, varint 1: a field from a later version of the contract
        bytes.extend_from_slice(&[9 << 3, 1]);
        let back = GetProfileResponse::decode(bytes.as_slice()).ok();
        assert_eq!(back.as_ref().and_then(|r| r.profile.clone()), Some(p));
        assert_eq!(
            back.and_then(|r| r.profile_id().map(str::to_string)),
            Some("p1".into())
        );
    }

    #[test]
    fn a_built_result_decodes_back_and_a_later_oneof_member_replaces_the_earlier() {
        let p = pb::Profile {
            profile_id: "p1".into(),
            version: 2,
            ..pb::Profile::default()
        };
        let e = pb::ProfileError {
            code: 5,
            message: "no profile".into(),
        };
        for r in [
            ProfileResult::new(profile_result::Result::Profile(p.clone())),
            ProfileResult::new(profile_result::Result::Error(e.clone())),
            ProfileResult::default(),
        ] {
            let bytes = r.encode_to_vec();
            assert_eq!(bytes.len(), r.encoded_len());
            assert_eq!(ProfileResult::decode(bytes.as_slice()).ok(), Some(r));
        }
        let mut both =
            ProfileResult::new(profile_result::Result::Profile(p.clone())).encode_to_vec();
        both.extend(ProfileResult::new(profile_result::Result::Error(e.clone())).encode_to_vec());
        // field 9, varint 1: a field from a later version of the contract
        both.extend_from_slice(&[9 << 3, 1]);
        let back = ProfileResult::decode(both.as_slice()).ok();
        assert_eq!(
            back.and_then(|r| r.result),
            Some(profile_result::Result::Error(e))
        );
        // Two occurrences of the profile merge (how the kept and fresh parts arrive).
        let more = pb::Profile {
            merged_ids: vec!["p0".into()],
            ..pb::Profile::default()
        };
        let mut parts =
            ProfileResult::new(profile_result::Result::Profile(p.clone())).encode_to_vec();
        parts.extend(ProfileResult::new(profile_result::Result::Profile(more)).encode_to_vec());
        let merged = ProfileResult::decode(parts.as_slice())
            .ok()
            .and_then(|r| r.result);
        assert_eq!(
            merged,
            Some(profile_result::Result::Profile(pb::Profile {
                merged_ids: vec!["p0".into()],
                ..p
            }))
        );
    }
}
