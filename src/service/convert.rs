//! proto <-> domain. Parsing happens once here, with the field path of every violation;
//! past this module the service works with domain types only.

use std::collections::HashSet;

use prost_types::Timestamp as PbTimestamp;

use super::pb;
use super::rules_convert as rules;
use crate::auth::layer::Visibility;
use crate::domain::attributes::{
    AttrMap, AttrPath, CoreField, HistoryEntry, Value, check_custom_value, valid_custom_key,
};
use crate::domain::identifier::{Identifier, IdentifierKind};
use crate::domain::identity::{ConflictReason, IgnoreReason, Outcome, ProfileKey, Resolution};
use crate::domain::ids::ProfileId;
use crate::domain::interaction::{
    CaseState, Channel, Direction, Interaction, Money, NewInteraction, RawInteraction,
};
use crate::domain::profile::{ChangeEvent, ChangeKind, IdentifierLink, MergeRecord};
use crate::domain::profiles::{Parts, ProfileView};
use crate::domain::time::Timestamp;
use crate::error::{Error, FieldViolation, Result};

/// Joins a field path.
pub fn path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Collects violations from several parses into one INVALID_ARGUMENT.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

/// Most field violations one error lists.
pub const MAX_VIOLATIONS: usize = 100;

impl Violations {
    /// Keeps the value, or the violations.
    pub fn check<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(Error::InvalidArgument(vs)) => {
                self.0.extend(vs);
                // A request of a million bad entries must not make a reply as large.
                if self.0.len() > MAX_VIOLATIONS {
                    self.0.truncate(MAX_VIOLATIONS);
                    self.0.push(FieldViolation {
                        field: String::new(),
                        description: format!(
                            "more violations not shown (the first {MAX_VIOLATIONS} are listed)"
                        ),
                    });
                }
                None
            }
            Err(other) => {
                self.0.push(FieldViolation {
                    field: String::new(),
                    description: other.to_string(),
                });
                None
            }
        }
    }

    /// Ok when nothing was violated.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

// ---- time -------------------------------------------------------------------------------

/// A wire timestamp into the domain; the error names `field`.
pub fn time_in(field: &str, t: &PbTimestamp) -> Result<Timestamp> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(
            field,
            "nanos must be between 0 and 999,999,999",
        ));
    }
    Timestamp::from_parts(t.seconds, t.nanos)
        .ok_or_else(|| Error::invalid(field, "timestamp out of range"))
}

/// A domain timestamp onto the wire.
pub fn time_out(t: Timestamp) -> PbTimestamp {
    let (seconds, nanos) = t.to_parts();
    PbTimestamp { seconds, nanos }
}

// ---- identifiers and profile references -----------------------------------------------------

fn kind_in(field: &str, raw: i32) -> Result<IdentifierKind> {
    use pb::IdentifierKind as K;
    match K::try_from(raw) {
        Ok(K::Email) => Ok(IdentifierKind::Email),
        Ok(K::Phone) => Ok(IdentifierKind::Phone),
        Ok(K::CustomerNumber) => Ok(IdentifierKind::CustomerNumber),
        Ok(K::LoyaltyCard) => Ok(IdentifierKind::LoyaltyCard),
        Ok(K::DeviceId) => Ok(IdentifierKind::DeviceId),
        Ok(K::External) => Ok(IdentifierKind::External),
        Ok(K::Unspecified) => Err(Error::invalid(
            path(field, "kind"),
            "the identifier kind is required (e.g. IDENTIFIER_KIND_EMAIL)",
        )),
        Err(_) => Err(Error::invalid(
            path(field, "kind"),
            format!("unknown identifier kind {raw}"),
        )),
    }
}

fn kind_out(k: IdentifierKind) -> pb::IdentifierKind {
    use pb::IdentifierKind as K;
    match k {
        IdentifierKind::Email => K::Email,
        IdentifierKind::Phone => K::Phone,
        IdentifierKind::CustomerNumber => K::CustomerNumber,
        IdentifierKind::LoyaltyCard => K::LoyaltyCard,
        IdentifierKind::DeviceId => K::DeviceId,
        IdentifierKind::External => K::External,
    }
}

/// Parses one identifier at `field`.
pub fn identifier_in(field: &str, id: &pb::Identifier) -> Result<Identifier> {
    let kind = kind_in(field, id.kind)?;
    Identifier::parse(kind, &id.namespace, &id.value).map_err(|e| e.within(field))
}

/// A required identifier at `field`.
pub fn required_identifier(field: &str, id: Option<&pb::Identifier>) -> Result<Identifier> {
    match id {
        Some(id) => identifier_in(field, id),
        None => Err(Error::invalid(field, "an identifier is required")),
    }
}

/// Parses a list of `min..=max` identifiers at `field`, reporting every bad one.
pub fn identifiers_in(
    field: &str,
    ids: &[pb::Identifier],
    min: usize,
    max: usize,
) -> Result<Vec<Identifier>> {
    if ids.len() < min || ids.len() > max {
        return Err(Error::invalid(
            field,
            format!(
                "between {min} and {max} identifiers are required, got {}",
                ids.len()
            ),
        ));
    }
    let mut v = Violations::default();
    let parsed: Vec<Option<Identifier>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| v.check(identifier_in(&format!("{field}[{i}]"), id)))
        .collect();
    v.finish()?;
    Ok(parsed.into_iter().flatten().collect())
}

/// An identifier onto the wire.
pub fn identifier_out(id: &Identifier) -> pb::Identifier {
    pb::Identifier {
        kind: kind_out(id.kind()) as i32,
        value: id.value().to_string(),
        namespace: id.namespace().to_string(),
    }
}

/// A required profile id at `field`.
pub fn profile_id_in(field: &str, text: &str) -> Result<ProfileId> {
    if text.is_empty() {
        return Err(Error::invalid(field, "a profile id is required"));
    }
    ProfileId::parse(field, text)
}

/// A required profile reference at `field`.
pub fn profile_ref_in(field: &str, r: Option<&pb::ProfileRef>) -> Result<ProfileKey> {
    use pb::profile_ref::Ref;
    match r.and_then(|r| r.r#ref.as_ref()) {
        Some(Ref::ProfileId(id)) => Ok(ProfileKey::Id(profile_id_in(
            &path(field, "profile_id"),
            id,
        )?)),
        Some(Ref::Identifier(id)) => Ok(ProfileKey::Identifier(identifier_in(
            &path(field, "identifier"),
            id,
        )?)),
        None => Err(Error::invalid(
            field,
            "name the profile by profile_id or by identifier",
        )),
    }
}

/// A short free-text field (source, reason): at most `max` characters, no control characters.
pub fn text_in(field: &str, text: &str, max: usize, required: bool) -> Result<String> {
    let t = text.trim();
    if required && t.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if t.chars().count() > max {
        return Err(Error::invalid(field, format!("at most {max} characters")));
    }
    if t.chars().any(char::is_control) {
        return Err(Error::invalid(field, "control characters are not allowed"));
    }
    Ok(t.to_string())
}

// ---- resolve -------------------------------------------------------------------------------

/// Resolve's answer onto the wire.
pub fn resolution_out(r: &Resolution) -> pb::ResolveResponse {
    use pb::{ConflictReason as C, IgnoreReason as I, ResolveOutcome as O};
    pb::ResolveResponse {
        outcome: match r.outcome {
            Outcome::Created => O::Created,
            Outcome::Matched => O::Matched,
            Outcome::Linked => O::Linked,
            Outcome::Merged => O::Merged,
            Outcome::Conflict => O::Conflict,
            Outcome::NoMatch => O::NoMatch,
        } as i32,
        profile_id: r.profile.map(|p| p.to_string()).unwrap_or_default(),
        version: r.version,
        linked: r.linked.iter().map(identifier_out).collect(),
        conflicts: r
            .conflicts
            .iter()
            .map(|c| pb::IdentifierConflict {
                identifier: Some(identifier_out(&c.identifier)),
                reason: match c.reason {
                    ConflictReason::CustomerNumberAlreadySet => C::CustomerNumberAlreadySet,
                    ConflictReason::CapReached => C::IdentifierCapReached,
                    ConflictReason::CustomerNumberConflict => C::CustomerNumberConflict,
                    ConflictReason::MergeNotAllowed => C::MergeNotAllowed,
                    ConflictReason::OwnedByOther => C::OwnedByOtherProfile,
                } as i32,
                owner_profile_id: c.owner.map(|p| p.to_string()).unwrap_or_default(),
            })
            .collect(),
        ignored: r
            .ignored
            .iter()
            .map(|(id, why)| pb::IgnoredIdentifier {
                identifier: Some(identifier_out(id)),
                reason: match why {
                    IgnoreReason::Blocked => I::Blocked,
                    IgnoreReason::Duplicate => I::Duplicate,
                } as i32,
            })
            .collect(),
        other_profile_ids: r.others.iter().map(ToString::to_string).collect(),
        merge_ids: r.merges.iter().map(ToString::to_string).collect(),
    }
}

/// A merge onto the wire.
pub fn merge_out(m: &MergeRecord) -> pb::Merge {
    pb::Merge {
        merge_id: m.id.to_string(),
        survivor_profile_id: m.survivor.to_string(),
        absorbed_profile_id: m.absorbed.to_string(),
        merged_at: Some(time_out(m.merged_at)),
        source: m.source.clone(),
        reason: m.reason.clone(),
        trigger_identifiers: m.triggers.iter().map(identifier_out).collect(),
        unmerged_at: m.unmerged.as_ref().map(|u| time_out(u.at)),
        unmerge_source: m
            .unmerged
            .as_ref()
            .map(|u| u.source.clone())
            .unwrap_or_default(),
        unmerge_reason: m
            .unmerged
            .as_ref()
            .map(|u| u.reason.clone())
            .unwrap_or_default(),
    }
}

// ---- profiles ------------------------------------------------------------------------------

/// Which parts of a profile a read returns: what the caller asked for, within what its
/// principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMask {
    /// What the principal may read.
    pub visible: Visibility,
    /// `identifiers`.
    pub identifiers: bool,
    /// `merged_ids`.
    pub merged_ids: bool,
    /// `consents`.
    pub consents: bool,
    /// `preferences`.
    pub preferences: bool,
    /// `summary`.
    pub summary: bool,
    /// `None` = every attribute; `Some(paths)` = only these attribute paths (`given_name`,
    /// `custom.tier`, or `custom` for every custom one).
    pub attributes: Option<HashSet<String>>,
}

const MASK_HELP: &str = "valid paths: identifiers, attributes, attributes.<field>, attributes.custom, attributes.custom.<key>, merged_ids, consents, preferences, summary";

/// Parses a read mask; empty = everything.
pub fn read_mask_in(field: &str, mask: Option<&prost_types::FieldMask>) -> Result<ReadMask> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Ok(ReadMask::all());
    }
    let mut out = ReadMask {
        visible: Visibility::all(),
        identifiers: false,
        merged_ids: false,
        consents: false,
        preferences: false,
        summary: false,
        attributes: Some(HashSet::new()),
    };
    let mut all_attributes = false;
    for p in paths {
        match p.as_str() {
            "identifiers" => out.identifiers = true,
            "merged_ids" => out.merged_ids = true,
            "consents" => out.consents = true,
            "preferences" => out.preferences = true,
            "summary" => out.summary = true,
            "attributes" => all_attributes = true,
            "profile_id" | "version" | "created_at" | "updated_at" => {}
            other => {
                let attr = other.strip_prefix("attributes.");
                let ok = match attr {
                    Some("custom") => true,
                    Some(a) => AttrPath::parse(a).is_some(),
                    None => false,
                };
                match (ok, attr, out.attributes.as_mut()) {
                    (true, Some(a), Some(set)) => {
                        set.insert(a.to_string());
                    }
                    _ => {
                        return Err(Error::invalid(
                            field,
                            format!("unknown path {other:?}; {MASK_HELP}"),
                        ));
                    }
                }
            }
        }
    }
    if all_attributes {
        out.attributes = None;
    }
    Ok(out)
}

impl ReadMask {
    /// Every field.
    pub fn all() -> ReadMask {
        ReadMask {
            visible: Visibility::all(),
            identifiers: true,
            merged_ids: true,
            consents: true,
            preferences: true,
            summary: true,
            attributes: None,
        }
    }

    /// Narrows the mask to what `visible` allows; fields outside it never leave the server,
    /// whatever was asked for.
    pub fn restrict(mut self, visible: &Visibility) -> ReadMask {
        self.identifiers &= visible.identity;
        self.merged_ids &= visible.identity;
        self.consents &= visible.consent;
        self.preferences &= visible.consent;
        self.summary &= visible.activity;
        self.visible = visible.clone();
        self
    }

    /// The optional parts of a profile this mask needs loaded.
    pub fn parts(&self) -> Parts {
        Parts {
            identifiers: self.identifiers,
            consents: self.consents,
            preferences: self.preferences,
            summary: self.summary,
        }
    }

    fn wants(&self, attr_path: &str) -> bool {
        if !self.visible.attribute(attr_path) {
            return false;
        }
        match &self.attributes {
            None => true,
            Some(set) => {
                set.contains(attr_path)
                    || (attr_path.starts_with("custom.") && set.contains("custom"))
            }
        }
    }
}

/// A value onto the wire.
pub fn value_out(v: &Value) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: Some(match v {
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Int(i) => Kind::IntValue(*i),
            Value::Double(d) => Kind::DoubleValue(*d),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Timestamp(t) => Kind::TimestampValue(time_out(*t)),
        }),
    }
}

/// A wire value into the domain.
pub fn value_in(field: &str, v: &pb::Value) -> Result<Value> {
    use pb::value::Kind;
    let value = match &v.kind {
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::IntValue(i)) => Value::Int(*i),
        Some(Kind::DoubleValue(d)) => Value::Double(*d),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::TimestampValue(t)) => Value::Timestamp(time_in(field, t)?),
        None => {
            return Err(Error::invalid(
                field,
                "a value needs one of string_value, int_value, double_value, bool_value, timestamp_value",
            ));
        }
    };
    check_custom_value(&value).map_err(|e| e.within(field))?;
    Ok(value)
}

fn gender_out(s: &str) -> pb::Gender {
    match s {
        "FEMALE" => pb::Gender::Female,
        "MALE" => pb::Gender::Male,
        "NON_BINARY" => pb::Gender::NonBinary,
        "OTHER" => pb::Gender::Other,
        "PREFER_NOT_TO_SAY" => pb::Gender::PreferNotToSay,
        _ => pb::Gender::Unspecified,
    }
}

fn attributes_out(
    attrs: &AttrMap,
    mask: &ReadMask,
) -> (
    pb::ProfileAttributes,
    std::collections::HashMap<String, pb::AttributeProvenance>,
) {
    let mut out = pb::ProfileAttributes::default();
    let mut prov = std::collections::HashMap::new();
    for (path, av) in attrs {
        let Some(value) = &av.value else { continue };
        if !mask.wants(path) {
            continue;
        }
        let text = match value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        match (AttrPath::parse(path), text) {
            (Some(AttrPath::Core(CoreField::GivenName)), t) => out.given_name = t,
            (Some(AttrPath::Core(CoreField::FamilyName)), t) => out.family_name = t,
            (Some(AttrPath::Core(CoreField::BirthDate)), t) => out.birth_date = t,
            (Some(AttrPath::Core(CoreField::Gender)), t) => {
                out.gender = gender_out(t.as_deref().unwrap_or_default()) as i32
            }
            (Some(AttrPath::Core(CoreField::City)), t) => out.city = t,
            (Some(AttrPath::Core(CoreField::Postcode)), t) => out.postcode = t,
            (Some(AttrPath::Core(CoreField::Country)), t) => out.country = t,
            (Some(AttrPath::Core(CoreField::Language)), t) => out.language = t,
            (Some(AttrPath::Custom(key)), _) => {
                out.custom.insert(key, value_out(value));
            }
            (None, _) => continue,
        }
        prov.insert(
            path.clone(),
            pb::AttributeProvenance {
                source: av.source.clone(),
                observed_at: Some(time_out(av.observed_at)),
                recorded_at: Some(time_out(av.recorded_at)),
            },
        );
    }
    (out, prov)
}

fn linked_out(l: &IdentifierLink) -> pb::LinkedIdentifier {
    pb::LinkedIdentifier {
        identifier: Some(identifier_out(&l.identifier)),
        linked_at: Some(time_out(l.linked_at)),
        source: l.source.clone(),
        origin_profile_id: l.origin.to_string(),
    }
}

/// A profile view onto the wire: [`profile_stable_out`] with [`profile_fresh_out`] merged in.
pub fn profile_out(v: &ProfileView, mask: &ReadMask) -> pb::Profile {
    let mut p = profile_stable_out(v, mask);
    let fresh = profile_fresh_out(v, mask);
    p.consents = fresh.consents;
    if let (Some(s), Some(f)) = (p.summary.as_mut(), fresh.summary) {
        s.engagement = f.engagement;
        s.contact_pressure = f.contact_pressure;
    }
    p
}

/// What [`profile_out`] shows that depends only on the stored data (and the mask), not on the
/// time of the read: everything but the consents in force and the summary's scores.
pub fn profile_stable_out(v: &ProfileView, mask: &ReadMask) -> pb::Profile {
    let (attributes, attribute_provenance) = attributes_out(&v.attributes, mask);
    pb::Profile {
        profile_id: v.root.id.to_string(),
        version: v.root.version,
        created_at: Some(time_out(v.root.created_at)),
        updated_at: Some(time_out(v.root.updated_at)),
        identifiers: if mask.identifiers {
            v.identifiers.iter().map(linked_out).collect()
        } else {
            Vec::new()
        },
        attributes: Some(attributes),
        attribute_provenance,
        merged_ids: if mask.merged_ids {
            v.merged_ids.iter().map(ToString::to_string).collect()
        } else {
            Vec::new()
        },
        consents: Vec::new(),
        preferences: if mask.preferences {
            Some(rules::preferences_out(v.preferences.as_ref()))
        } else {
            None
        },
        summary: if mask.summary {
            v.summary.as_ref().map(|s| {
                let mut out = rules::summary_out(s);
                out.engagement = None;
                out.contact_pressure = None;
                if !mask.visible.finance {
                    out.lifetime_spend.clear();
                }
                out
            })
        } else {
            None
        },
    }
}

/// What [`profile_out`] shows that depends on the time of the read: the consents in force
/// and the summary's scores (every other field left at its default, so its encoding appended to
/// [`profile_stable_out`]'s decodes as the whole profile).
pub fn profile_fresh_out(v: &ProfileView, mask: &ReadMask) -> pb::Profile {
    pb::Profile {
        consents: if mask.consents {
            v.consents
                .iter()
                .map(|(p, c, s)| rules::effective_out(*p, *c, s))
                .collect()
        } else {
            Vec::new()
        },
        summary: if mask.summary {
            v.summary.as_ref().map(rules::summary_scores_out)
        } else {
            None
        },
        ..pb::Profile::default()
    }
}

/// UpdateProfile's mask and values into attribute changes.
pub fn attribute_changes_in(
    attrs: Option<&pb::ProfileAttributes>,
    mask: Option<&prost_types::FieldMask>,
    today: Timestamp,
) -> Result<Vec<(AttrPath, Option<Value>)>> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "name the attributes to set or clear, e.g. attributes.city",
        ));
    }
    let empty = pb::ProfileAttributes::default();
    let a = attrs.unwrap_or(&empty);
    let mut v = Violations::default();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in paths.iter().enumerate() {
        let Some(attr) = p.strip_prefix("attributes.").and_then(AttrPath::parse) else {
            v.check::<()>(Err(Error::invalid(
                format!("update_mask.paths[{i}]"),
                format!("unknown path {p:?}; use attributes.<field> (given_name, family_name, birth_date, gender, city, postcode, country, language) or attributes.custom.<key>"),
            )));
            continue;
        };
        if !seen.insert(attr.clone()) {
            continue;
        }
        let field = format!("attributes.{}", attr.to_path());
        let value: Result<Option<Value>> = match &attr {
            AttrPath::Core(f) => {
                let raw: Option<String> = match f {
                    CoreField::GivenName => a.given_name.clone(),
                    CoreField::FamilyName => a.family_name.clone(),
                    CoreField::BirthDate => a.birth_date.clone(),
                    CoreField::City => a.city.clone(),
                    CoreField::Postcode => a.postcode.clone(),
                    CoreField::Country => a.country.clone(),
                    CoreField::Language => a.language.clone(),
                    CoreField::Gender => match pb::Gender::try_from(a.gender) {
                        Ok(pb::Gender::Unspecified) => None,
                        Ok(g) => g.as_str_name().strip_prefix("GENDER_").map(str::to_string),
                        Err(_) => {
                            v.check::<()>(Err(Error::invalid(
                                &field,
                                format!("unknown gender {}", a.gender),
                            )));
                            continue;
                        }
                    },
                };
                match raw {
                    Some(r) if !r.trim().is_empty() => f
                        .check(&r, today)
                        .map(|s| Some(Value::String(s)))
                        .map_err(|e| e.within(&field)),
                    _ => Ok(None),
                }
            }
            AttrPath::Custom(key) => match a.custom.get(key) {
                Some(val) => value_in(&field, val).map(Some),
                None => Ok(None),
            },
        };
        if let Some(val) = v.check(value) {
            out.push((attr, val));
        }
    }
    for key in a.custom.keys() {
        if !valid_custom_key(key) {
            v.check::<()>(Err(Error::invalid(
                format!("attributes.custom[{key:?}]"),
                "keys are 1 to 64 characters from [a-z0-9_], starting with a letter",
            )));
        }
    }
    v.finish()?;
    Ok(out)
}

/// A history entry onto the wire.
pub fn history_out(h: &HistoryEntry) -> pb::AttributeChange {
    pb::AttributeChange {
        path: h.path.clone(),
        old_value: h.old.as_ref().map(value_out),
        new_value: h.new.as_ref().map(value_out),
        source: h.source.clone(),
        observed_at: Some(time_out(h.observed_at)),
        recorded_at: Some(time_out(h.recorded_at)),
        applied: h.applied,
        origin_profile_id: h.origin.to_string(),
    }
}

/// A change event onto the wire.
pub fn change_out(e: &ChangeEvent) -> pb::ChangeEvent {
    use pb::ChangeKind as K;
    pb::ChangeEvent {
        sequence: e.sequence,
        kind: match e.kind {
            ChangeKind::ProfileCreated => K::ProfileCreated,
            ChangeKind::ProfileUpdated => K::ProfileUpdated,
            ChangeKind::IdentifiersChanged => K::IdentifiersChanged,
            ChangeKind::ProfilesMerged => K::ProfilesMerged,
            ChangeKind::ProfilesUnmerged => K::ProfilesUnmerged,
            ChangeKind::InteractionRecorded => K::InteractionRecorded,
            ChangeKind::ConsentChanged => K::ConsentChanged,
            ChangeKind::ProfileErased => K::ProfileErased,
        } as i32,
        profile_id: e.profile.to_string(),
        version: e.version,
        changed_paths: e.paths.clone(),
        related_profile_ids: e.related.iter().map(ToString::to_string).collect(),
        recorded_at: Some(time_out(e.recorded_at)),
    }
}

// ---- interactions --------------------------------------------------------------------------

/// A wire channel into the domain (error text for unspecified/unknown).
pub fn channel_in(raw: i32) -> std::result::Result<Channel, String> {
    use pb::Channel as C;
    Ok(match C::try_from(raw) {
        Ok(C::Email) => Channel::Email,
        Ok(C::Sms) => Channel::Sms,
        Ok(C::PhoneCall) => Channel::PhoneCall,
        Ok(C::Web) => Channel::Web,
        Ok(C::App) => Channel::App,
        Ok(C::Store) => Channel::Store,
        Ok(C::Post) => Channel::Post,
        Ok(C::Push) => Channel::Push,
        Ok(C::Chat) => Channel::Chat,
        Ok(C::Social) => Channel::Social,
        Ok(C::Unspecified) => return Err("the channel is required (e.g. CHANNEL_EMAIL)".into()),
        Err(_) => return Err(format!("unknown channel {raw}")),
    })
}

/// A domain channel onto the wire.
pub fn channel_out(c: Channel) -> pb::Channel {
    use pb::Channel as C;
    match c {
        Channel::Email => C::Email,
        Channel::Sms => C::Sms,
        Channel::PhoneCall => C::PhoneCall,
        Channel::Web => C::Web,
        Channel::App => C::App,
        Channel::Store => C::Store,
        Channel::Post => C::Post,
        Channel::Push => C::Push,
        Channel::Chat => C::Chat,
        Channel::Social => C::Social,
    }
}

/// A wire direction into the domain; `Ok(None)` for unspecified when `optional`.
pub fn direction_in(raw: i32, optional: bool) -> std::result::Result<Option<Direction>, String> {
    match pb::Direction::try_from(raw) {
        Ok(pb::Direction::Inbound) => Ok(Some(Direction::Inbound)),
        Ok(pb::Direction::Outbound) => Ok(Some(Direction::Outbound)),
        Ok(pb::Direction::Unspecified) if optional => Ok(None),
        Ok(pb::Direction::Unspecified) => {
            Err("the direction is required (DIRECTION_INBOUND or DIRECTION_OUTBOUND)".into())
        }
        Err(_) => Err(format!("unknown direction {raw}")),
    }
}

/// Parses the interaction of a RecordInteraction request at `field`.
pub fn new_interaction_in(
    field: &str,
    i: Option<&pb::Interaction>,
    now: Timestamp,
) -> Result<NewInteraction> {
    let Some(i) = i else {
        return Err(Error::invalid(field, "the interaction is required"));
    };
    let occurred_at = match &i.occurred_at {
        Some(t) => Some(time_in(&path(field, "occurred_at"), t)?),
        None => None,
    };
    let case_state = match pb::CaseState::try_from(i.case_state) {
        Ok(pb::CaseState::Unspecified) => Ok(None),
        Ok(pb::CaseState::Open) => Ok(Some(CaseState::Open)),
        Ok(pb::CaseState::Closed) => Ok(Some(CaseState::Closed)),
        Err(_) => Err(format!("unknown case state {}", i.case_state)),
    };
    let raw = RawInteraction {
        channel: channel_in(i.channel),
        direction: direction_in(i.direction, false)
            .and_then(|d| d.ok_or_else(|| "the direction is required".to_string())),
        department: &i.department,
        kind: &i.r#type,
        message_key: &i.message_key,
        case_id: &i.case_id,
        case_state,
        amount: i.amount.as_ref().map(|m| Money {
            currency: m.currency_code.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        summary: &i.summary,
        attributes: &i.attributes,
        occurred_at,
        purpose: rules::purpose_in(i.purpose, true),
    };
    NewInteraction::check(raw, now).map_err(|e| e.within(field))
}

/// An interaction onto the wire; `profile` is the live profile it is shown under.
pub fn interaction_out(i: &Interaction, profile: ProfileId) -> pb::Interaction {
    pb::Interaction {
        interaction_id: i.id.to_string(),
        profile_id: profile.to_string(),
        channel: channel_out(i.channel) as i32,
        direction: match i.direction {
            Direction::Inbound => pb::Direction::Inbound,
            Direction::Outbound => pb::Direction::Outbound,
        } as i32,
        department: i.department.clone(),
        r#type: i.kind.clone(),
        message_key: i.message_key.clone().unwrap_or_default(),
        case_id: i.case.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        case_state: match i.case.as_ref().map(|c| c.1) {
            None => pb::CaseState::Unspecified,
            Some(CaseState::Open) => pb::CaseState::Open,
            Some(CaseState::Closed) => pb::CaseState::Closed,
        } as i32,
        amount: i.amount.as_ref().map(|m| pb::Money {
            currency_code: m.currency.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        summary: i.summary.clone(),
        attributes: i
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        occurred_at: Some(time_out(i.occurred_at)),
        recorded_at: Some(time_out(i.recorded_at)),
        purpose: i
            .purpose
            .map_or(pb::Purpose::Unspecified, rules::purpose_out) as i32,
    }
}
