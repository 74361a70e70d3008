//! proto <-> domain for consent, preferences, contact checks, summaries and segment filters.

use super::convert::{Violations, channel_in, channel_out, path, text_in, time_in, time_out};
use super::pb;
use crate::domain::attributes::{AttrPath, CoreField};
use crate::domain::consent::{
    ConsentRecord, ConsentState, Decision, NewConsent, Preferences, Purpose,
};
use crate::domain::contact::{ContactCheck, ContactDecision, ContactPurpose, DenyReason};
use crate::domain::identifier::IdentifierKind;
use crate::domain::interaction::{Channel, valid_department, valid_type};
use crate::domain::profiles::SummaryView;
use crate::domain::segments::{AttrTest, Clause, Filter, IndexValue, ScoreKind};
use crate::domain::summary::{Latest, money_parts};
use crate::domain::time::{Duration, Timestamp};
use crate::error::{Error, Result};

/// A wire purpose; `Ok(None)` for unspecified when `optional`.
pub fn purpose_in(raw: i32, optional: bool) -> std::result::Result<Option<Purpose>, String> {
    use pb::Purpose as P;
    match P::try_from(raw) {
        Ok(P::Marketing) => Ok(Some(Purpose::Marketing)),
        Ok(P::Profiling) => Ok(Some(Purpose::Profiling)),
        Ok(P::ThirdPartySharing) => Ok(Some(Purpose::ThirdPartySharing)),
        Ok(P::Service) => Ok(Some(Purpose::Service)),
        Ok(P::Unspecified) if optional => Ok(None),
        Ok(P::Unspecified) => Err(
            "the purpose is required (PURPOSE_MARKETING, PURPOSE_PROFILING, PURPOSE_THIRD_PARTY_SHARING or PURPOSE_SERVICE)"
                .into(),
        ),
        Err(_) => Err(format!("unknown purpose {raw}")),
    }
}

/// A purpose onto the wire.
pub fn purpose_out(p: Purpose) -> pb::Purpose {
    match p {
        Purpose::Marketing => pb::Purpose::Marketing,
        Purpose::Profiling => pb::Purpose::Profiling,
        Purpose::ThirdPartySharing => pb::Purpose::ThirdPartySharing,
        Purpose::Service => pb::Purpose::Service,
    }
}

fn required_purpose(field: &str, raw: i32) -> Result<Purpose> {
    purpose_in(raw, false)
        .and_then(|p| p.ok_or_else(|| "the purpose is required".to_string()))
        .map_err(|e| Error::invalid(field, e))
}

fn required_channel(field: &str, raw: i32) -> Result<Channel> {
    channel_in(raw).map_err(|e| Error::invalid(field, e))
}

fn optional_channel(field: &str, raw: i32) -> Result<Option<Channel>> {
    if raw == pb::Channel::Unspecified as i32 {
        return Ok(None);
    }
    required_channel(field, raw).map(Some)
}

/// A consent record onto the wire.
pub fn consent_out(r: &ConsentRecord) -> pb::ConsentRecord {
    pb::ConsentRecord {
        consent_id: r.id.to_string(),
        purpose: purpose_out(r.purpose) as i32,
        channel: r.channel.map_or(pb::Channel::Unspecified, channel_out) as i32,
        decision: match r.decision {
            Decision::Granted => pb::ConsentDecision::Granted,
            Decision::Denied => pb::ConsentDecision::Denied,
        } as i32,
        source: r.source.clone(),
        expires_at: r.expires_at.map(time_out),
        recorded_at: Some(time_out(r.recorded_at)),
        origin_profile_id: r.origin.to_string(),
    }
}

/// RecordConsent's record, parsed (paths under `field`).
pub fn new_consent_in(field: &str, c: Option<&pb::ConsentRecord>) -> Result<NewConsent> {
    let Some(c) = c else {
        return Err(Error::invalid(field, "the consent record is required"));
    };
    let p = |f: &str| path(field, f);
    let mut v = Violations::default();
    let purpose = v.check(required_purpose(&p("purpose"), c.purpose));
    let channel = v.check(optional_channel(&p("channel"), c.channel));
    let decision = v.check(match pb::ConsentDecision::try_from(c.decision) {
        Ok(pb::ConsentDecision::Granted) => Ok(Decision::Granted),
        Ok(pb::ConsentDecision::Denied) => Ok(Decision::Denied),
        Ok(pb::ConsentDecision::Unspecified) => Err(Error::invalid(
            p("decision"),
            "the decision is required (CONSENT_DECISION_GRANTED or CONSENT_DECISION_DENIED)",
        )),
        Err(_) => Err(Error::invalid(
            p("decision"),
            format!("unknown decision {}", c.decision),
        )),
    });
    let source = v.check(text_in(&p("source"), &c.source, 128, true));
    let expires_at = match &c.expires_at {
        Some(t) => v.check(time_in(&p("expires_at"), t)),
        None => None,
    };
    v.finish()?;
    match (purpose, channel, decision, source) {
        (Some(purpose), Some(channel), Some(decision), Some(source)) => Ok(NewConsent {
            purpose,
            channel,
            decision,
            source,
            expires_at,
        }),
        _ => Err(Error::invalid(field, "incomplete")),
    }
}

/// The state of a purpose × channel onto the wire.
pub fn effective_out(p: Purpose, c: Channel, s: &ConsentState) -> pb::EffectiveConsent {
    let (state, expires_at, id, since) = match s {
        ConsentState::None => (pb::ConsentState::None, None, String::new(), None),
        ConsentState::Granted {
            record,
            expires_at,
            since,
        } => (
            pb::ConsentState::Granted,
            Some(time_out(*expires_at)),
            record.to_string(),
            Some(time_out(*since)),
        ),
        ConsentState::Denied { record, since } => (
            pb::ConsentState::Denied,
            None,
            record.to_string(),
            Some(time_out(*since)),
        ),
        ConsentState::DeniedByMergeConflict { since } => (
            pb::ConsentState::DeniedByMergeConflict,
            None,
            String::new(),
            Some(time_out(*since)),
        ),
    };
    pb::EffectiveConsent {
        purpose: purpose_out(p) as i32,
        channel: channel_out(c) as i32,
        state: state as i32,
        expires_at,
        consent_id: id,
        since,
    }
}

/// Preferences onto the wire (empty when never set).
pub fn preferences_out(p: Option<&Preferences>) -> pb::Preferences {
    match p {
        None => pb::Preferences::default(),
        Some(p) => pb::Preferences {
            preferred_channels: p.preferred.iter().map(|c| channel_out(*c) as i32).collect(),
            opted_out_channels: p.opted_out.iter().map(|c| channel_out(*c) as i32).collect(),
            language: p.language.clone(),
            updated_at: Some(time_out(p.updated_at)),
        },
    }
}

fn channel_list(field: &str, raw: &[i32], v: &mut Violations) -> Vec<Channel> {
    let mut out: Vec<Channel> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(c) = v.check(required_channel(&f, *c)) {
            if out.contains(&c) {
                v.check::<()>(Err(Error::invalid(f, "listed twice")));
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// SetPreferences' preferences, parsed.
pub fn preferences_in(field: &str, p: Option<&pb::Preferences>) -> Result<Preferences> {
    let Some(p) = p else {
        return Err(Error::invalid(field, "the preferences are required"));
    };
    let mut v = Violations::default();
    let preferred = channel_list(
        &path(field, "preferred_channels"),
        &p.preferred_channels,
        &mut v,
    );
    let opted_out = channel_list(
        &path(field, "opted_out_channels"),
        &p.opted_out_channels,
        &mut v,
    );
    for (i, c) in opted_out.iter().enumerate() {
        if preferred.contains(c) {
            v.check::<()>(Err(Error::invalid(
                format!("{}[{i}]", path(field, "opted_out_channels")),
                "a channel cannot be both preferred and opted out",
            )));
        }
    }
    let language = if p.language.is_empty() {
        Some(String::new())
    } else {
        v.check(
            CoreField::Language
                .check(&p.language, Timestamp(0))
                .map_err(|e| e.within(&path(field, "language"))),
        )
    };
    v.finish()?;
    Ok(Preferences {
        preferred,
        opted_out,
        language: language.unwrap_or_default(),
        updated_at: Timestamp(0),
        write_seq: 0,
    })
}

fn latest_out(l: &Latest) -> pb::InteractionRef {
    pb::InteractionRef {
        interaction_id: l.id.to_string(),
        occurred_at: Some(time_out(l.occurred_at)),
        channel: channel_out(l.channel) as i32,
        department: l.department.clone(),
        r#type: l.kind.clone(),
        direction: match l.direction {
            crate::domain::interaction::Direction::Inbound => pb::Direction::Inbound,
            crate::domain::interaction::Direction::Outbound => pb::Direction::Outbound,
        } as i32,
    }
}

/// The part of a summary that depends on the time of the read, its scores (every other field
/// left at its default).
pub fn summary_scores_out(v: &SummaryView) -> pb::ProfileSummary {
    let score = |value: f64, hl: Duration| pb::Score {
        value,
        as_of: Some(time_out(v.as_of)),
        half_life_seconds: hl.0 / Timestamp::MICROS_PER_SEC,
    };
    pb::ProfileSummary {
        engagement: Some(score(v.engagement, v.engagement_half_life)),
        contact_pressure: Some(score(v.pressure, v.pressure_half_life)),
        ..pb::ProfileSummary::default()
    }
}

/// A summary onto the wire.
pub fn summary_out(v: &SummaryView) -> pb::ProfileSummary {
    let s = &v.summary;
    let channels = Channel::ALL
        .iter()
        .filter_map(|c| {
            let i = s.last_inbound.get(c);
            let o = s.last_outbound.get(c);
            (i.is_some() || o.is_some()).then(|| pb::ChannelActivity {
                channel: channel_out(*c) as i32,
                last_inbound_at: i.map(|l| time_out(l.occurred_at)),
                last_outbound_at: o.map(|l| time_out(l.occurred_at)),
            })
        })
        .collect();
    let scores = summary_scores_out(v);
    pb::ProfileSummary {
        channels,
        departments: s
            .departments
            .iter()
            .map(|(d, l)| pb::DepartmentActivity {
                department: d.clone(),
                last: Some(latest_out(l)),
            })
            .collect(),
        open_cases: s
            .open_cases()
            .into_iter()
            .map(|(id, c)| pb::OpenCase {
                case_id: id.clone(),
                r#type: c.first.kind.clone(),
                opened_at: Some(time_out(c.first.occurred_at)),
                last_activity_at: Some(time_out(c.last.occurred_at)),
                department: c.first.department.clone(),
            })
            .collect(),
        moments: s
            .moments
            .iter()
            .map(|(t, l)| pb::Moment {
                r#type: t.clone(),
                last: Some(latest_out(l)),
            })
            .collect(),
        engagement: scores.engagement,
        contact_pressure: scores.contact_pressure,
        lifetime_spend: s
            .spend
            .iter()
            .map(|(cur, total)| {
                let (units, nanos) = money_parts(*total);
                pb::Money {
                    currency_code: cur.clone(),
                    units,
                    nanos,
                }
            })
            .collect(),
        interaction_count: s.count,
        last_interaction_at: s.last.as_ref().map(|l| time_out(l.occurred_at)),
    }
}

/// CheckContact's request, parsed.
pub fn contact_check_in(r: &pb::CheckContactRequest) -> Result<ContactCheck> {
    let mut v = Violations::default();
    let channel = v.check(required_channel("channel", r.channel));
    let purpose = v.check(match purpose_in(r.purpose, true) {
        Ok(Some(Purpose::Marketing)) => Ok(ContactPurpose::Marketing),
        Ok(Some(Purpose::Service)) => Ok(ContactPurpose::Service),
        Ok(_) => Err(Error::invalid(
            "purpose",
            "a contact is for PURPOSE_MARKETING or PURPOSE_SERVICE",
        )),
        Err(e) => Err(Error::invalid("purpose", e)),
    });
    let message_key = if r.message_key.is_empty() {
        if r.reserve {
            v.check::<()>(Err(Error::invalid(
                "message_key",
                "required with reserve = true (the campaign/message identity, so it is never sent twice)",
            )));
        }
        None
    } else if r.message_key.len() > 128 || r.message_key.chars().any(char::is_control) {
        v.check::<()>(Err(Error::invalid(
            "message_key",
            "at most 128 characters, no control characters",
        )));
        None
    } else {
        Some(r.message_key.clone())
    };
    if !r.department.is_empty() && !valid_department(&r.department) {
        v.check::<()>(Err(Error::invalid(
            "department",
            format!("1 to 64 characters from [a-z0-9_], got {:?}", r.department),
        )));
    }
    if !r.r#type.is_empty() && !valid_type(&r.r#type) {
        v.check::<()>(Err(Error::invalid(
            "type",
            format!("1 to 64 characters from [a-z0-9_.], got {:?}", r.r#type),
        )));
    }
    v.finish()?;
    let (Some(channel), Some(purpose)) = (channel, purpose) else {
        return Err(Error::invalid("", "incomplete"));
    };
    let or = |given: &str, m: &str, s: &str| {
        if !given.is_empty() {
            given.to_string()
        } else if purpose == ContactPurpose::Marketing {
            m.to_string()
        } else {
            s.to_string()
        }
    };
    Ok(ContactCheck {
        channel,
        purpose,
        message_key,
        department: or(&r.department, "marketing", "customer_service"),
        kind: or(&r.r#type, "campaign_message", "service_message"),
    })
}

/// A contact decision onto the wire (without the reserved interaction and version).
pub fn decision_out(d: &ContactDecision) -> pb::CheckContactResponse {
    pb::CheckContactResponse {
        allowed: d.allowed(),
        reasons: d
            .reasons
            .iter()
            .map(|(r, _)| {
                (match r {
                    DenyReason::Consent => pb::DenyReason::Consent,
                    DenyReason::ChannelOptedOut => pb::DenyReason::ChannelOptedOut,
                    DenyReason::DuplicateMessage => pb::DenyReason::DuplicateMessage,
                    DenyReason::FrequencyCap => pb::DenyReason::FrequencyCap,
                    DenyReason::OpenCase => pb::DenyReason::OpenCase,
                }) as i32
            })
            .collect(),
        explanations: d.reasons.iter().map(|(_, e)| e.clone()).collect(),
        next_allowed_at: d.next_allowed_at.map(time_out),
        suggested_channel: d.suggested.map_or(pb::Channel::Unspecified, channel_out) as i32,
        reserved: None,
        version: 0,
        profile_id: String::new(),
    }
}

// ---- segment filters -------------------------------------------------------------------------

/// Most clauses in a filter.
pub const MAX_CLAUSES: usize = 20;
/// Most values in one `any_of`.
pub const MAX_ANY_OF: usize = 100;

fn filter_value(field: &str, attr: &str, v: &pb::Value) -> Result<IndexValue> {
    use pb::value::Kind;
    let out = match &v.kind {
        Some(Kind::StringValue(s)) => IndexValue::Text(s.to_lowercase()),
        Some(Kind::IntValue(i)) => IndexValue::Int(*i),
        Some(Kind::DoubleValue(d)) if d.is_finite() => {
            IndexValue::Double(if *d == 0.0 { 0.0 } else { *d })
        }
        Some(Kind::DoubleValue(_)) => {
            return Err(Error::invalid(field, "double values must be finite"));
        }
        Some(Kind::BoolValue(b)) => IndexValue::Bool(*b),
        Some(Kind::TimestampValue(t)) => IndexValue::Time(time_in(field, t)?),
        None => return Err(Error::invalid(field, "a value is required")),
    };
    if !attr.starts_with("custom.") && !matches!(out, IndexValue::Text(_)) {
        return Err(Error::invalid(
            field,
            format!(
                "{attr} is text; compare it with string values (birth_date as YYYY-MM-DD, gender as MALE/FEMALE/...)"
            ),
        ));
    }
    Ok(out)
}

fn bound_in(
    field: &str,
    attr: &str,
    b: Option<&pb::RangeBound>,
) -> Result<Option<(IndexValue, bool)>> {
    match b {
        None => Ok(None),
        Some(b) => {
            let Some(v) = &b.value else {
                return Err(Error::invalid(
                    path(field, "value"),
                    "a bound needs a value",
                ));
            };
            Ok(Some((
                filter_value(&path(field, "value"), attr, v)?,
                b.inclusive,
            )))
        }
    }
}

fn clause_in(field: &str, c: &pb::FilterClause) -> Result<Clause> {
    use pb::filter_clause::Clause as C;
    match &c.clause {
        None => Err(Error::invalid(
            field,
            "set exactly one of attribute, identifier_kind, consent, interaction, score",
        )),
        Some(C::Attribute(a)) => {
            let f = path(field, "attribute");
            let attr = a.path.as_str();
            if AttrPath::parse(attr).is_none() {
                return Err(Error::invalid(
                    path(&f, "path"),
                    format!(
                        "unknown attribute {attr:?}; use a core field (given_name, family_name, birth_date, gender, city, postcode, country, language) or custom.<key>"
                    ),
                ));
            }
            let ranged = a.lower.is_some() || a.upper.is_some();
            let test = match (a.any_of.is_empty(), ranged) {
                (false, true) | (true, false) => {
                    return Err(Error::invalid(
                        &f,
                        "give either any_of (1 to 100 values) or a range (lower and/or upper)",
                    ));
                }
                (false, false) => {
                    if a.any_of.len() > MAX_ANY_OF {
                        return Err(Error::invalid(
                            path(&f, "any_of"),
                            format!("at most {MAX_ANY_OF} values"),
                        ));
                    }
                    let mut v = Violations::default();
                    let values: Vec<IndexValue> = a
                        .any_of
                        .iter()
                        .enumerate()
                        .filter_map(|(i, x)| {
                            v.check(filter_value(&format!("{f}.any_of[{i}]"), attr, x))
                        })
                        .collect();
                    v.finish()?;
                    AttrTest::AnyOf(values)
                }
                (true, true) => {
                    let lower = bound_in(&path(&f, "lower"), attr, a.lower.as_ref())?;
                    let upper = bound_in(&path(&f, "upper"), attr, a.upper.as_ref())?;
                    if let (Some((l, _)), Some((u, _))) = (&lower, &upper) {
                        if l.tag() != u.tag() {
                            return Err(Error::invalid(
                                path(&f, "upper"),
                                "lower and upper must have the same type",
                            ));
                        }
                    }
                    AttrTest::Range { lower, upper }
                }
            };
            Ok(Clause::Attribute {
                path: attr.to_string(),
                test,
            })
        }
        Some(C::IdentifierKind(k)) => {
            let f = path(&path(field, "identifier_kind"), "kind");
            let kind = match pb::IdentifierKind::try_from(k.kind) {
                Ok(pb::IdentifierKind::Email) => IdentifierKind::Email,
                Ok(pb::IdentifierKind::Phone) => IdentifierKind::Phone,
                Ok(pb::IdentifierKind::CustomerNumber) => IdentifierKind::CustomerNumber,
                Ok(pb::IdentifierKind::LoyaltyCard) => IdentifierKind::LoyaltyCard,
                Ok(pb::IdentifierKind::DeviceId) => IdentifierKind::DeviceId,
                Ok(pb::IdentifierKind::External) => IdentifierKind::External,
                _ => return Err(Error::invalid(f, "an identifier kind is required")),
            };
            Ok(Clause::IdentifierKind(kind))
        }
        Some(C::Consent(c)) => {
            let f = path(field, "consent");
            let mut v = Violations::default();
            let purpose = v.check(required_purpose(&path(&f, "purpose"), c.purpose));
            let channel = v.check(required_channel(&path(&f, "channel"), c.channel));
            v.finish()?;
            match (purpose, channel) {
                (Some(purpose), Some(channel)) => Ok(Clause::Consent { purpose, channel }),
                _ => Err(Error::invalid(f, "incomplete")),
            }
        }
        Some(C::Interaction(i)) => {
            let f = path(field, "interaction");
            let mut v = Violations::default();
            if !valid_type(&i.r#type) {
                v.check::<()>(Err(Error::invalid(
                    path(&f, "type"),
                    format!("1 to 64 characters from [a-z0-9_.], got {:?}", i.r#type),
                )));
            }
            if !(1..=3650).contains(&i.within_days) {
                v.check::<()>(Err(Error::invalid(
                    path(&f, "within_days"),
                    format!("1 to 3650 days, got {}", i.within_days),
                )));
            }
            let attr = match (i.attribute_key.is_empty(), i.attribute_value.is_empty()) {
                (true, true) => None,
                (true, false) => {
                    v.check::<()>(Err(Error::invalid(
                        path(&f, "attribute_key"),
                        "attribute_value is set, so attribute_key is required",
                    )));
                    None
                }
                (false, _) => {
                    if i.attribute_key.len() > 64 || i.attribute_value.len() > 1024 {
                        v.check::<()>(Err(Error::invalid(
                            path(&f, "attribute_key"),
                            "keys have at most 64 characters and values at most 1024 bytes",
                        )));
                    }
                    Some((i.attribute_key.clone(), i.attribute_value.clone()))
                }
            };
            v.finish()?;
            Ok(Clause::Interaction {
                kind: i.r#type.clone(),
                attr,
                within: Duration::days(i64::from(i.within_days)),
            })
        }
        Some(C::Score(s)) => {
            let f = path(field, "score");
            let score = match pb::ScoreKind::try_from(s.score) {
                Ok(pb::ScoreKind::Engagement) => ScoreKind::Engagement,
                Ok(pb::ScoreKind::ContactPressure) => ScoreKind::ContactPressure,
                _ => {
                    return Err(Error::invalid(
                        path(&f, "score"),
                        "SCORE_KIND_ENGAGEMENT or SCORE_KIND_CONTACT_PRESSURE is required",
                    ));
                }
            };
            if !s.at_least.is_finite() || s.below.is_some_and(|b| !b.is_finite()) {
                return Err(Error::invalid(&f, "bounds must be finite numbers"));
            }
            Ok(Clause::Score {
                score,
                at_least: s.at_least,
                below: s.below,
            })
        }
    }
}

/// A segment filter, parsed (paths under `field`).
pub fn filter_in(field: &str, f: Option<&pb::ProfileFilter>) -> Result<Filter> {
    let clauses = f.map(|f| f.clauses.as_slice()).unwrap_or_default();
    if clauses.len() > MAX_CLAUSES {
        return Err(Error::invalid(
            path(field, "clauses"),
            format!("at most {MAX_CLAUSES} clauses, got {}", clauses.len()),
        ));
    }
    let mut v = Violations::default();
    let parsed: Vec<Clause> = clauses
        .iter()
        .enumerate()
        .filter_map(|(i, c)| v.check(clause_in(&format!("{field}.clauses[{i}]"), c)))
        .collect();
    v.finish()?;
    Ok(Filter { clauses: parsed })
}
