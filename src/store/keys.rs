//! Every key layout of the store, in one place. All integers are big-endian so that byte
//! order is numeric order; ids are the 16 raw bytes of their UUID (v7: time-ordered).
//!
//! | tree                    | key                                              | value                |
//! |-------------------------|--------------------------------------------------|----------------------|
//! | `meta`                  | ASCII name (`schema_version`, `last_change_seq`…) | u64 BE               |
//! | `meta`                  | `import_position/` ++ file fingerprint (32)       | import position (postcard, see `import`) |
//! | `profiles`              | profile id (16)                                  | `ProfileRecord`      |
//! | `identifier_to_profile` | HMAC of the identifier key (see [`identifier`])  | `IdentifierLink` (sealed) |
//! | `profile_identifiers`   | origin profile id (16) ++ HMAC of identifier key | `IdentifierLink` (sealed) |
//! | `merges`                | merge id (16)                                    | `MergeRecord`        |
//! | `profile_merges`        | profile id (16) ++ merge id (16)                 | empty                |
//! | `attribute_history`     | origin profile id (16) ++ write_seq (8)          | `HistoryEntry`       |
//! | `profile_interactions`  | origin profile id (16) ++ occurred_at (8, sign-flipped) ++ interaction id (16) | `Interaction` |
//! | `idempotency`           | scope ++ 0x00 ++ request id                      | `IdempotentResponse` |
//! | `idempotency_expiry`    | created_at (8, sign-flipped) ++ idempotency key  | empty                |
//! | `changes`               | sequence (8)                                     | `ChangeEvent`        |
//! | `consents`              | origin profile id (16) ++ write_seq (8)          | `ConsentRecord`      |
//! | `preferences`           | profile id (16)                                  | `Preferences`        |
//! | `summaries`             | profile id (16)                                  | `Summary`            |
//! | `sent_messages`         | origin profile id (16) ++ message key            | `Timestamp` (last sent) |
//! | `segment_terms`         | live profile id (16)                             | `Vec<IndexTerm>`     |
//! | `segment_index`         | term (attribute terms and range buckets as HMACs, see `sled_store::term_entries`) ++ live profile id (16) | empty |
//! | `erased`                | profile id (16)                                  | `Timestamp` (erased at) |
//! | `data_keys`             | profile id (16)                                  | data key sealed under the master key |
//! | `interaction_index`     | see [`interaction_index`]: type (+ attribute) ++ occurred_at ++ origin ++ id | empty |
//!
//! Values are encoded by `codec` (format version byte first) and, in the trees holding
//! personal data, sealed by `crypto` at commit. Keys that would hold personal values are keyed
//! hashes computed by the store from the plaintext layouts here.

use crate::domain::identifier::Identifier;
use crate::domain::ids::{InteractionId, MergeId, ProfileId};
use crate::domain::segments::{IndexTerm, IndexValue};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};

/// The trees, named by what they map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeName {
    /// Counters and the schema version.
    Meta,
    /// Profile id → profile record.
    Profiles,
    /// Identifier → its link (the profile it was written to).
    IdentifierToProfile,
    /// Profile → identifiers written to it.
    ProfileIdentifiers,
    /// Merge id → merge record.
    Merges,
    /// Profile → merges it took part in.
    ProfileMerges,
    /// Profile → attribute history in write order.
    AttributeHistory,
    /// Profile → interactions in occurred_at order.
    ProfileInteractions,
    /// Idempotency key → first response.
    Idempotency,
    /// Creation time → idempotency key, for expiry.
    IdempotencyExpiry,
    /// Sequence → change event.
    Changes,
    /// Profile → consent records in write order.
    Consents,
    /// Profile → its own preferences.
    Preferences,
    /// Profile → summary of its own interactions.
    Summaries,
    /// Profile ++ message key → when last sent.
    SentMessages,
    /// Live profile → the terms it is indexed under.
    SegmentTerms,
    /// Term ++ live profile → nothing (the segment index).
    SegmentIndex,
    /// Interaction type (+ attribute) ++ time ++ origin ++ id → nothing.
    InteractionIndex,
    /// Profile → when it was erased (the tombstone).
    Erased,
    /// Profile → its data key, wrapped under the master key.
    DataKeys,
    /// UUID mentioned in a stored response ++ idempotency key → nothing: what erasure
    /// purges, found without reading every stored response.
    IdempotencyMentions,
}

impl TreeName {
    /// Every tree, in the order of their index in the store.
    pub const ALL: [TreeName; 21] = [
        TreeName::Meta,
        TreeName::Profiles,
        TreeName::IdentifierToProfile,
        TreeName::ProfileIdentifiers,
        TreeName::Merges,
        TreeName::ProfileMerges,
        TreeName::AttributeHistory,
        TreeName::ProfileInteractions,
        TreeName::Idempotency,
        TreeName::IdempotencyExpiry,
        TreeName::Changes,
        TreeName::Consents,
        TreeName::Preferences,
        TreeName::Summaries,
        TreeName::SentMessages,
        TreeName::SegmentTerms,
        TreeName::SegmentIndex,
        TreeName::InteractionIndex,
        TreeName::Erased,
        TreeName::DataKeys,
        TreeName::IdempotencyMentions,
    ];

    /// The sled tree name.
    pub fn name(self) -> &'static str {
        match self {
            TreeName::Meta => "meta",
            TreeName::Profiles => "profiles",
            TreeName::IdentifierToProfile => "identifier_to_profile",
            TreeName::ProfileIdentifiers => "profile_identifiers",
            TreeName::Merges => "merges",
            TreeName::ProfileMerges => "profile_merges",
            TreeName::AttributeHistory => "attribute_history",
            TreeName::ProfileInteractions => "profile_interactions",
            TreeName::Idempotency => "idempotency",
            TreeName::IdempotencyExpiry => "idempotency_expiry",
            TreeName::IdempotencyMentions => "idempotency_mentions",
            TreeName::Changes => "changes",
            TreeName::Consents => "consents",
            TreeName::Preferences => "preferences",
            TreeName::Summaries => "summaries",
            TreeName::SentMessages => "sent_messages",
            TreeName::SegmentTerms => "segment_terms",
            TreeName::SegmentIndex => "segment_index",
            TreeName::InteractionIndex => "interaction_index",
            TreeName::Erased => "erased",
            TreeName::DataKeys => "data_keys",
        }
    }

    /// Position in [`TreeName::ALL`]: the store opens its sled trees in that order and reaches
    /// each by this index, so the declaration order above must be the order of `ALL` (a unit
    /// test checks it).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The order of the trees' indices in builds from e69ea4f to 11fad48: there
/// `IdempotencyMentions` was declared after `IdempotencyExpiry` but opened last, so the index
/// of each tree from `IdempotencyMentions` on reached the sled tree named after the one
/// before it in [`TreeName::ALL`] (data keys were kept in the sled tree
/// `idempotency_mentions`, change events in `consents`, ...). Backups of those builds tag
/// records with these positions. `store::layout` moves such directories' contents to the
/// trees their names say.
pub const SHIFTED_ORDER: [TreeName; 21] = [
    TreeName::Meta,
    TreeName::Profiles,
    TreeName::IdentifierToProfile,
    TreeName::ProfileIdentifiers,
    TreeName::Merges,
    TreeName::ProfileMerges,
    TreeName::AttributeHistory,
    TreeName::ProfileInteractions,
    TreeName::Idempotency,
    TreeName::IdempotencyExpiry,
    TreeName::IdempotencyMentions,
    TreeName::Changes,
    TreeName::Consents,
    TreeName::Preferences,
    TreeName::Summaries,
    TreeName::SentMessages,
    TreeName::SegmentTerms,
    TreeName::SegmentIndex,
    TreeName::InteractionIndex,
    TreeName::Erased,
    TreeName::DataKeys,
];

/// Meta key: which layout the sled trees have (absent: not yet checked at open).
pub const META_TREE_LAYOUT: &[u8] = b"tree_layout";
/// Meta key: a layout migration copied every moved tree aside and is putting them back.
pub const META_LAYOUT_MIGRATION: &[u8] = b"tree_layout_migration";

/// Meta key: set once every stored idempotent response is in `IdempotencyMentions` (data
/// directories written before that tree existed are indexed once, at open).
pub const META_IDEMPOTENCY_MENTIONS: &[u8] = b"idempotency_mentions_v1";

/// The UUIDs a stored response mentions, in their text form (`8-4-4-4-12` hex digits), as
/// bytes, without repeats: profile ids among them.
pub fn mentioned_uuids(response: &[u8]) -> Vec<[u8; 16]> {
    const LEN: usize = 36;
    let mut out: Vec<[u8; 16]> = Vec::new();
    if response.len() < LEN {
        return out;
    }
    for i in 0..=response.len() - LEN {
        let w = &response[i..i + LEN];
        if w[8] != b'-' || w[13] != b'-' || w[18] != b'-' || w[23] != b'-' {
            continue;
        }
        let Ok(text) = std::str::from_utf8(w) else {
            continue;
        };
        if let Ok(u) = uuid::Uuid::try_parse(text) {
            let b = *u.as_bytes();
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    out
}

/// uuid ++ idempotency key.
pub fn idempotency_mention(uuid: &[u8; 16], idem: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + idem.len());
    k.extend_from_slice(uuid);
    k.extend_from_slice(idem);
    k
}

/// Meta key: schema version of the data directory.
pub const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Meta key: last change sequence assigned.
pub const META_LAST_CHANGE_SEQ: &[u8] = b"last_change_seq";
/// Meta key: last global write sequence assigned.
pub const META_LAST_WRITE_SEQ: &[u8] = b"last_write_seq";
/// Meta key: a value identifying the master key the directory was written with.
pub const META_MASTER_KEY_CHECK: &[u8] = b"master_key_check";
/// Meta key: every change with a sequence above this is retained.
pub const META_CHANGES_FLOOR: &[u8] = b"changes_floor";

/// Meta key: where the bulk import of a file (by its fingerprint) stopped.
pub fn import_position(file: &[u8; 32]) -> Vec<u8> {
    [b"import_position/".as_slice(), file].concat()
}

/// Timestamps in keys: the sign bit flipped so negative times sort first.
pub fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from(bytes: [u8; 8]) -> Timestamp {
    Timestamp((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// Profile id.
pub fn profile(id: ProfileId) -> [u8; 16] {
    *id.as_bytes()
}

/// Identifier key: kind code (1) ++ namespace ++ 0x00 ++ value. The namespace alphabet
/// (`[a-z0-9_]`) has no 0x00, so the separator is unambiguous.
pub fn identifier(id: &Identifier) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.namespace().len() + id.value().len());
    k.push(id.kind().code());
    k.extend_from_slice(id.namespace().as_bytes());
    k.push(0);
    k.extend_from_slice(id.value().as_bytes());
    k
}

/// Merge id.
pub fn merge(id: MergeId) -> [u8; 16] {
    *id.as_bytes()
}

/// Profile id ++ merge id.
pub fn profile_merge(profile: ProfileId, merge: MergeId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(profile.as_bytes());
    k[16..].copy_from_slice(merge.as_bytes());
    k
}

/// The merge id at the end of a `profile_merges` key.
pub fn merge_of_profile_merge(key: &[u8]) -> Result<MergeId> {
    let bytes: [u8; 16] = key
        .get(16..32)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt("malformed profile_merges key".into()))?;
    Ok(MergeId::from_bytes(bytes))
}

/// Profile id ++ write_seq.
pub fn history(profile: ProfileId, write_seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(profile.as_bytes());
    k[16..].copy_from_slice(&write_seq.to_be_bytes());
    k
}

/// Profile id ++ occurred_at ++ interaction id: a profile's interactions in time order.
pub fn interaction(profile: ProfileId, occurred_at: Timestamp, id: InteractionId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(profile.as_bytes());
    k[16..24].copy_from_slice(&time_bytes(occurred_at));
    k[24..].copy_from_slice(id.as_bytes());
    k
}

/// Scope ++ 0x00 ++ request id.
pub fn idempotency(scope: &str, request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 1 + request_id.len());
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// created_at ++ idempotency key.
pub fn idempotency_expiry(at: Timestamp, idem_key: &[u8]) -> Vec<u8> {
    let mut k = time_bytes(at).to_vec();
    k.extend_from_slice(idem_key);
    k
}

/// The time and idempotency key of an expiry key.
pub fn parse_idempotency_expiry(key: &[u8]) -> Result<(Timestamp, &[u8])> {
    let t: [u8; 8] = key
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::Corrupt("malformed idempotency_expiry key".into()))?;
    Ok((time_from(t), &key[8..]))
}

/// Change sequence.
pub fn change(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Profile id ++ write_seq (consent records).
pub fn consent(profile: ProfileId, write_seq: u64) -> [u8; 24] {
    history(profile, write_seq)
}

/// Profile id ++ message key.
pub fn sent_message(profile: ProfileId, message_key: &str) -> Vec<u8> {
    let mut k = profile.as_bytes().to_vec();
    k.extend_from_slice(message_key.as_bytes());
    k
}

/// Text in an order-preserving, prefix-free form: 0x00 escaped as 0x00 0xFF, ended by
/// 0x00 0x01. "abc" < "abc\0" < "abcd" holds for the encodings too.
fn escaped(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn index_value(out: &mut Vec<u8>, v: &IndexValue) {
    out.push(v.tag());
    match v {
        IndexValue::Text(s) => escaped(out, s),
        IndexValue::Int(i) => out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes()),
        IndexValue::Double(d) => {
            // IEEE 754 bits ordered: flip all bits of negatives, the sign bit of positives.
            let bits = d.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        IndexValue::Bool(b) => out.push(u8::from(*b)),
        IndexValue::Time(t) => out.extend_from_slice(&time_bytes(*t)),
    }
}

fn attr_prefix(path: &str) -> Vec<u8> {
    let mut k = vec![b'a'];
    k.extend_from_slice(path.as_bytes());
    k.push(0);
    k
}

/// A segment index term: `a` path 0x00 type-tag value | `k` kind | `g` purpose channel.
/// Every term encoding is prefix-free, so `term ++ profile id` keys of one term are exactly
/// the keys starting with the term.
pub fn index_term(t: &IndexTerm) -> Vec<u8> {
    match t {
        IndexTerm::Attr { path, value } => {
            let mut k = attr_prefix(path);
            index_value(&mut k, value);
            k
        }
        IndexTerm::Kind(kind) => vec![b'k', kind.code()],
        IndexTerm::Grant(p, c) => vec![b'g', *p as u8, *c as u8],
    }
}

/// The bucket of a value for range scans over hashed index terms (ordered like the values):
/// dates (`YYYY-MM-DD` text) and times by year, numbers by sign and number of digits,
/// booleans by value. `None`: other text, which range filters check without the index.
pub fn bucket_of(v: &IndexValue) -> Option<i64> {
    fn magnitude(i: i64) -> i64 {
        let digits = i64::from(i.unsigned_abs().checked_ilog10().map_or(0, |d| d + 1));
        i.signum() * digits
    }
    let year = |y: i64| y.clamp(1899, 2201);
    match v {
        IndexValue::Text(t) => {
            let b = t.as_bytes();
            let date = b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
            if date {
                t[..4].parse::<i64>().ok().map(year)
            } else {
                None
            }
        }
        IndexValue::Int(i) => Some(magnitude(*i)),
        IndexValue::Double(d) => Some(magnitude(d.floor().clamp(-9.0e18, 9.0e18) as i64)),
        IndexValue::Bool(b) => Some(i64::from(*b)),
        IndexValue::Time(t) => {
            let days = t.0.div_euclid(86_400_000_000);
            Some(year(crate::domain::time::civil_from_days(days).0))
        }
    }
}

/// The buckets a range of values of one type covers, or `None` when it cannot be enumerated
/// (text other than dates).
pub fn buckets_between(
    lower: Option<&IndexValue>,
    upper: Option<&IndexValue>,
) -> Option<std::ops::RangeInclusive<i64>> {
    let sample = lower.or(upper)?;
    let (min, max) = match sample {
        IndexValue::Text(_) | IndexValue::Time(_) => (1899, 2201),
        IndexValue::Int(_) | IndexValue::Double(_) => (-19, 19),
        IndexValue::Bool(_) => (0, 1),
    };
    let lo = match lower {
        Some(v) => bucket_of(v)?,
        None => min,
    };
    let hi = match upper {
        Some(v) => bucket_of(v)?,
        None => max,
    };
    Some(lo..=hi)
}

/// The plaintext of a bucket term (hashed by the store): path 0x00 type-tag bucket.
pub fn bucket_term(path: &str, tag: u8, bucket: i64) -> Vec<u8> {
    let mut k = attr_prefix(path);
    k.push(tag);
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

/// The profile id at the end of a segment index key.
pub fn profile_of_index_entry(key: &[u8]) -> Result<ProfileId> {
    let start = key
        .len()
        .checked_sub(16)
        .ok_or_else(|| Error::Corrupt("malformed segment index key".into()))?;
    let bytes: [u8; 16] = key[start..]
        .try_into()
        .map_err(|_| Error::Corrupt("malformed segment index key".into()))?;
    Ok(ProfileId::from_bytes(bytes))
}

/// The prefix of interaction index keys for a type (`t` type 0x00) or a type and attribute
/// (`a` type 0x00 key 0x00 escaped value).
pub fn interaction_index_prefix(kind: &str, attr: Option<(&str, &str)>) -> Vec<u8> {
    match attr {
        None => {
            let mut k = vec![b't'];
            k.extend_from_slice(kind.as_bytes());
            k.push(0);
            k
        }
        Some((key, value)) => {
            let mut k = vec![b'a'];
            k.extend_from_slice(kind.as_bytes());
            k.push(0);
            k.extend_from_slice(key.as_bytes());
            k.push(0);
            escaped(&mut k, value);
            k
        }
    }
}

/// Prefix ++ occurred_at ++ origin ++ interaction id.
pub fn interaction_index(
    prefix: &[u8],
    occurred_at: Timestamp,
    origin: ProfileId,
    id: InteractionId,
) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&time_bytes(occurred_at));
    k.extend_from_slice(origin.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// The origin profile of an interaction index key.
pub fn origin_of_interaction_index(key: &[u8]) -> Result<ProfileId> {
    let end = key
        .len()
        .checked_sub(16)
        .ok_or_else(|| Error::Corrupt("malformed interaction index key".into()))?;
    profile_of_index_entry(&key[..end])
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentioned_uuids_finds_each_uuid_once_and_nothing_else() {
        let a = "0192f3a4-5b6c-7d8e-9f00-112233445566";
        let b = "0192F3A4-5B6C-7D8E-9F00-112233445577";
        let text = format!("{a}:{b}/{a} 0192f3a4-5b6c-7d8e-9f00-11223344556 x-{a}");
        let found = mentioned_uuids(text.as_bytes());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(mentioned_uuids(b"too short"), Vec::<[u8; 16]>::new());
        assert_eq!(
            mentioned_uuids(b"zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"),
            Vec::<[u8; 16]>::new()
        );
    }

    #[test]
    fn time_order_is_byte_order() {
        let ts = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ts.windows(2) {
            assert!(time_bytes(Timestamp(w[0])) < time_bytes(Timestamp(w[1])));
            assert_eq!(time_from(time_bytes(Timestamp(w[0]))), Timestamp(w[0]));
        }
    }

    #[test]
    fn index_value_order_is_byte_order() {
        let values = [
            IndexValue::Double(f64::MIN),
            IndexValue::Double(-2.5),
            IndexValue::Double(-0.0),
            IndexValue::Double(0.0),
            IndexValue::Double(1e-300),
            IndexValue::Double(3.0),
            IndexValue::Double(f64::MAX),
        ];
        let enc = |v: &IndexValue| {
            let mut out = Vec::new();
            index_value(&mut out, v);
            out
        };
        for w in values.windows(2) {
            assert!(enc(&w[0]) <= enc(&w[1]), "{:?} {:?}", w[0], w[1]);
        }
        let texts = ["", "a", "a\0", "a\0b", "ab", "b"];
        for w in texts.windows(2) {
            let a = enc(&IndexValue::Text(w[0].into()));
            let b = enc(&IndexValue::Text(w[1].into()));
            assert!(a < b, "{:?} {:?}", w[0], w[1]);
            assert!(!b.starts_with(&a), "prefix-free");
        }
        for w in [i64::MIN, -1, 0, 1, i64::MAX].windows(2) {
            assert!(enc(&IndexValue::Int(w[0])) < enc(&IndexValue::Int(w[1])));
        }
    }

    #[test]
    fn buckets_follow_value_order() {
        let ints = [i64::MIN, -1000, -5, 0, 7, 99, 100, i64::MAX];
        for w in ints.windows(2) {
            assert!(bucket_of(&IndexValue::Int(w[0])) <= bucket_of(&IndexValue::Int(w[1])));
        }
        let dates = ["1850-01-01", "1980-05-12", "1980-12-31", "2001-01-01"];
        for w in dates.windows(2) {
            assert!(
                bucket_of(&IndexValue::Text(w[0].into()))
                    <= bucket_of(&IndexValue::Text(w[1].into()))
            );
        }
        assert_eq!(bucket_of(&IndexValue::Text("manchester".into())), None);
        assert_eq!(
            buckets_between(Some(&IndexValue::Text("1980-01-01".into())), None),
            Some(1980..=2201)
        );
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
