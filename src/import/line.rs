//! The NDJSON line format of `customer-profile import` (one customer a line) and its parsing
//! into domain inputs. Every field goes through the same parser as the gRPC request that
//! carries it (`service::convert`), so a value the API refuses is refused here too, with the
//! same field path and message.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::attributes::{AttrPath, Value};
use crate::domain::consent::{NewConsent, Preferences};
use crate::domain::identifier::Identifier;
use crate::domain::interaction::{MAX_FUTURE_SECS, NewInteraction};
use crate::domain::time::Timestamp;
use crate::error::{Error, Result};
use crate::service::convert::{
    Violations, attribute_changes_in, identifiers_in, new_interaction_in, text_in,
};
use crate::service::pb;
use crate::service::rules_convert::{new_consent_in, preferences_in};

/// Most identifiers on one line (as in one Resolve call).
pub const MAX_IDENTIFIERS: usize = 32;
/// Most interactions on one line.
pub const MAX_INTERACTIONS: usize = 10_000;
/// Most consent records on one line.
pub const MAX_CONSENTS: usize = 100;
/// The source recorded when a line names none.
pub const DEFAULT_SOURCE: &str = "import";

/// One customer, as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    identifiers: Vec<IdentifierIn>,
    #[serde(default)]
    attributes: Option<AttributesIn>,
    #[serde(default)]
    observed_at: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    consents: Vec<ConsentIn>,
    #[serde(default)]
    preferences: Option<PreferencesIn>,
    #[serde(default)]
    interactions: Vec<InteractionIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentifierIn {
    kind: String,
    #[serde(default)]
    namespace: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributesIn {
    given_name: Option<String>,
    family_name: Option<String>,
    birth_date: Option<String>,
    gender: Option<String>,
    city: Option<String>,
    postcode: Option<String>,
    country: Option<String>,
    language: Option<String>,
    #[serde(default)]
    custom: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentIn {
    purpose: String,
    #[serde(default)]
    channel: Option<String>,
    decision: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesIn {
    #[serde(default)]
    preferred_channels: Vec<String>,
    #[serde(default)]
    opted_out_channels: Vec<String>,
    #[serde(default)]
    language: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyIn {
    units: i64,
    #[serde(default)]
    nanos: i32,
    currency: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractionIn {
    channel: String,
    direction: String,
    department: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    occurred_at: Option<String>,
    #[serde(default)]
    amount: Option<MoneyIn>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    message_key: Option<String>,
    #[serde(default)]
    case_id: Option<String>,
    #[serde(default)]
    case_state: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
}

/// A line parsed and checked: what the import writes for it.
#[derive(Debug)]
pub struct Prepared {
    /// Resolved (and linked) in this order.
    pub identifiers: Vec<Identifier>,
    /// Provenance of links and attributes.
    pub source: String,
    /// When the attribute values were true.
    pub observed_at: Timestamp,
    /// Attribute values to set.
    pub changes: Vec<(AttrPath, Option<Value>)>,
    /// Consent decisions, in file order.
    pub consents: Vec<NewConsent>,
    /// Preferences, when given.
    pub preferences: Option<Preferences>,
    /// Interactions, in file order.
    pub interactions: Vec<NewInteraction>,
}

/// A line's text into [`Prepared`], or the reason it is rejected (field paths as in the file).
pub fn parse(text: &[u8], now: Timestamp) -> std::result::Result<Prepared, String> {
    let line: Line = serde_json::from_slice(text)
        .map_err(|e| format!("not a customer line of the import format: {e}"))?;
    prepare(line, now).map_err(|e| reason(&e))
}

/// One line of explanation for a rejected line: every violated field with what to fix, or the
/// policy refusal with its reason code.
pub fn reason(e: &Error) -> String {
    match e {
        Error::InvalidArgument(vs) => vs
            .iter()
            .map(|v| {
                if v.field.is_empty() {
                    v.description.clone()
                } else {
                    format!("{}: {}", v.field, v.description)
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        Error::FailedPrecondition { reason, message } => format!("{reason}: {message}"),
        other => other.to_string(),
    }
}

/// `EMAIL` or `IDENTIFIER_KIND_EMAIL` into the wire enum's number.
fn enum_in(
    field: &str,
    text: &str,
    prefix: &str,
    from_name: impl Fn(&str) -> Option<i32>,
    example: &str,
) -> Result<i32> {
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    };
    match from_name(&full) {
        Some(n) if n != 0 => Ok(n),
        _ => Err(Error::invalid(
            field,
            format!("unknown value {text:?} (e.g. {example})"),
        )),
    }
}

fn channel_num(field: &str, text: &str) -> Result<i32> {
    enum_in(
        field,
        text,
        "CHANNEL_",
        |s| pb::Channel::from_str_name(s).map(|c| c as i32),
        "EMAIL, SMS, PHONE_CALL, WEB, APP, STORE, POST, PUSH, CHAT, SOCIAL",
    )
}

fn purpose_num(field: &str, text: &str) -> Result<i32> {
    enum_in(
        field,
        text,
        "PURPOSE_",
        |s| pb::Purpose::from_str_name(s).map(|c| c as i32),
        "MARKETING, PROFILING, THIRD_PARTY_SHARING, SERVICE",
    )
}

/// An RFC 3339 time (`2025-01-02T03:04:05Z`, offsets and fractions allowed).
pub fn time_in(field: &str, text: &str) -> Result<Timestamp> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Error::invalid(
                field,
                format!("not an RFC 3339 time like 2025-01-02T03:04:05Z: {e}"),
            )
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map(Timestamp)
        .map_err(|_| Error::invalid(field, "time out of range"))
}

fn pb_time(field: &str, text: &Option<String>) -> Result<Option<prost_types::Timestamp>> {
    text.as_deref()
        .map(|t| time_in(field, t).map(crate::service::convert::time_out))
        .transpose()
}

fn custom_value(field: &str, v: &serde_json::Value) -> Result<pb::Value> {
    use pb::value::Kind;
    let kind = match v {
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        _ => {
            return Err(Error::invalid(
                field,
                "a custom value is a string, a number or a boolean",
            ));
        }
    };
    Ok(pb::Value { kind: Some(kind) })
}

fn attributes_in(a: &AttributesIn, now: Timestamp) -> Result<Vec<(AttrPath, Option<Value>)>> {
    let mut v = Violations::default();
    let mut paths = Vec::new();
    let mut present = |name: &str, value: &Option<String>| {
        if value.is_some() {
            paths.push(format!("attributes.{name}"));
        }
    };
    present("given_name", &a.given_name);
    present("family_name", &a.family_name);
    present("birth_date", &a.birth_date);
    present("gender", &a.gender);
    present("city", &a.city);
    present("postcode", &a.postcode);
    present("country", &a.country);
    present("language", &a.language);
    let mut custom = std::collections::HashMap::new();
    for (key, value) in &a.custom {
        if let Some(val) = v.check(custom_value(&format!("attributes.custom.{key}"), value)) {
            custom.insert(key.clone(), val);
            paths.push(format!("attributes.custom.{key}"));
        }
    }
    let gender = match &a.gender {
        Some(g) => v
            .check(enum_in(
                "attributes.gender",
                g,
                "GENDER_",
                |s| pb::Gender::from_str_name(s).map(|c| c as i32),
                "FEMALE, MALE, NON_BINARY, OTHER, PREFER_NOT_TO_SAY",
            ))
            .unwrap_or_default(),
        None => 0,
    };
    v.finish()?;
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let attrs = pb::ProfileAttributes {
        given_name: a.given_name.clone(),
        family_name: a.family_name.clone(),
        birth_date: a.birth_date.clone(),
        gender,
        city: a.city.clone(),
        postcode: a.postcode.clone(),
        country: a.country.clone(),
        language: a.language.clone(),
        custom,
    };
    let mask = prost_types::FieldMask { paths };
    attribute_changes_in(Some(&attrs), Some(&mask), now)
}

fn consent_in(field: &str, c: &ConsentIn, source: &str) -> Result<NewConsent> {
    let mut v = Violations::default();
    let purpose = v.check(purpose_num(&format!("{field}.purpose"), &c.purpose));
    let channel = match &c.channel {
        Some(ch) => v.check(channel_num(&format!("{field}.channel"), ch)),
        None => Some(0),
    };
    let decision = v.check(enum_in(
        &format!("{field}.decision"),
        &c.decision,
        "CONSENT_DECISION_",
        |s| pb::ConsentDecision::from_str_name(s).map(|c| c as i32),
        "GRANTED, DENIED",
    ));
    let expires_at = v.check(pb_time(&format!("{field}.expires_at"), &c.expires_at));
    v.finish()?;
    let record = pb::ConsentRecord {
        purpose: purpose.unwrap_or_default(),
        channel: channel.unwrap_or_default(),
        decision: decision.unwrap_or_default(),
        source: c.source.clone().unwrap_or_else(|| source.to_string()),
        expires_at: expires_at.flatten(),
        ..Default::default()
    };
    new_consent_in(field, Some(&record))
}

fn preferences_of(p: &PreferencesIn) -> Result<Preferences> {
    let mut v = Violations::default();
    let mut list = |name: &str, items: &[String]| -> Vec<i32> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, c)| v.check(channel_num(&format!("preferences.{name}[{i}]"), c)))
            .collect()
    };
    let preferred_channels = list("preferred_channels", &p.preferred_channels);
    let opted_out_channels = list("opted_out_channels", &p.opted_out_channels);
    v.finish()?;
    preferences_in(
        "preferences",
        Some(&pb::Preferences {
            preferred_channels,
            opted_out_channels,
            language: p.language.clone(),
            updated_at: None,
        }),
    )
}

fn interaction_in(field: &str, i: &InteractionIn, now: Timestamp) -> Result<NewInteraction> {
    let mut v = Violations::default();
    let channel = v.check(channel_num(&format!("{field}.channel"), &i.channel));
    let direction = v.check(enum_in(
        &format!("{field}.direction"),
        &i.direction,
        "DIRECTION_",
        |s| pb::Direction::from_str_name(s).map(|c| c as i32),
        "INBOUND, OUTBOUND",
    ));
    let case_state = match &i.case_state {
        Some(s) => v.check(enum_in(
            &format!("{field}.case_state"),
            s,
            "CASE_STATE_",
            |s| pb::CaseState::from_str_name(s).map(|c| c as i32),
            "OPEN, CLOSED",
        )),
        None => Some(0),
    };
    let purpose = match &i.purpose {
        Some(p) => v.check(purpose_num(&format!("{field}.purpose"), p)),
        None => Some(0),
    };
    let occurred_at = v.check(pb_time(&format!("{field}.occurred_at"), &i.occurred_at));
    v.finish()?;
    let wire = pb::Interaction {
        channel: channel.unwrap_or_default(),
        direction: direction.unwrap_or_default(),
        department: i.department.clone(),
        r#type: i.kind.clone(),
        message_key: i.message_key.clone().unwrap_or_default(),
        case_id: i.case_id.clone().unwrap_or_default(),
        case_state: case_state.unwrap_or_default(),
        amount: i.amount.as_ref().map(|m| pb::Money {
            currency_code: m.currency.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        summary: i.summary.clone().unwrap_or_default(),
        attributes: i
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        occurred_at: occurred_at.flatten(),
        purpose: purpose.unwrap_or_default(),
        ..Default::default()
    };
    new_interaction_in(field, Some(&wire), now)
}

fn prepare(line: Line, now: Timestamp) -> Result<Prepared> {
    let mut v = Violations::default();
    let wire_ids: Vec<pb::Identifier> = line
        .identifiers
        .iter()
        .enumerate()
        .map(|(i, id)| pb::Identifier {
            kind: v
                .check(enum_in(
                    &format!("identifiers[{i}].kind"),
                    &id.kind,
                    "IDENTIFIER_KIND_",
                    |s| pb::IdentifierKind::from_str_name(s).map(|c| c as i32),
                    "EMAIL, PHONE, CUSTOMER_NUMBER, LOYALTY_CARD, DEVICE_ID, EXTERNAL",
                ))
                .unwrap_or_default(),
            value: id.value.clone(),
            namespace: id.namespace.clone(),
        })
        .collect();
    v.finish()?;
    let mut v = Violations::default();
    let identifiers = v.check(identifiers_in("identifiers", &wire_ids, 1, MAX_IDENTIFIERS));
    let source = v.check(text_in(
        "source",
        line.source.as_deref().unwrap_or(DEFAULT_SOURCE),
        64,
        true,
    ));
    let observed_at = v.check(match &line.observed_at {
        None => Ok(now),
        Some(t) => time_in("observed_at", t).and_then(|t| {
            if t > now.plus_secs(MAX_FUTURE_SECS) {
                Err(Error::invalid(
                    "observed_at",
                    "is more than 5 minutes in the future; give when the values were true (UTC)",
                ))
            } else {
                Ok(t)
            }
        }),
    });
    let changes = match &line.attributes {
        Some(a) => v.check(attributes_in(a, now)),
        None => Some(Vec::new()),
    };
    if line.consents.len() > MAX_CONSENTS {
        v.check::<()>(Err(Error::invalid(
            "consents",
            format!("at most {MAX_CONSENTS} records on one line"),
        )));
    }
    if line.interactions.len() > MAX_INTERACTIONS {
        v.check::<()>(Err(Error::invalid(
            "interactions",
            format!("at most {MAX_INTERACTIONS} interactions on one line"),
        )));
    }
    let src = source.clone().unwrap_or_default();
    let consents: Vec<Option<NewConsent>> = line
        .consents
        .iter()
        .enumerate()
        .map(|(i, c)| v.check(consent_in(&format!("consents[{i}]"), c, &src)))
        .collect();
    let preferences = match &line.preferences {
        Some(p) => v.check(preferences_of(p)).map(Some),
        None => Some(None),
    };
    let interactions: Vec<Option<NewInteraction>> = line
        .interactions
        .iter()
        .enumerate()
        .map(|(i, x)| v.check(interaction_in(&format!("interactions[{i}]"), x, now)))
        .collect();
    v.finish()?;
    match (identifiers, source, observed_at, changes, preferences) {
        (Some(identifiers), Some(source), Some(observed_at), Some(changes), Some(preferences)) => {
            Ok(Prepared {
                identifiers,
                source,
                observed_at,
                changes,
                consents: consents.into_iter().flatten().collect(),
                preferences,
                interactions: interactions.into_iter().flatten().collect(),
            })
        }
        _ => Err(Error::invalid("", "incomplete line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_795_428_000_000_000);

    #[test]
    fn a_full_line_parses_and_short_enum_names_work() {
        let text = br#"{"identifiers":[{"kind":"EMAIL","value":"Ann@Example.com"},{"kind":"EXTERNAL","namespace":"crm","value":"C-1"}],
            "attributes":{"given_name":"Ann","city":"Manchester","gender":"FEMALE","birth_date":"1980-02-03","custom":{"tier":"gold","visits":3}},
            "observed_at":"2025-01-02T03:04:05Z","source":"crm_migration",
            "consents":[{"purpose":"MARKETING","channel":"EMAIL","decision":"GRANTED"}],
            "preferences":{"preferred_channels":["EMAIL"],"opted_out_channels":["SMS"],"language":"en-GB"},
            "interactions":[{"channel":"STORE","direction":"INBOUND","department":"stores","type":"purchase",
              "occurred_at":"2025-01-02T03:04:05.250+01:00","amount":{"units":1999,"currency":"GBP"},"attributes":{"product":"X"}}]}"#;
        let p = parse(text, NOW).expect("valid line");
        assert_eq!(p.identifiers.len(), 2);
        assert_eq!(p.identifiers[0].value(), "ann@example.com");
        assert_eq!(p.changes.len(), 6);
        assert_eq!(p.consents.len(), 1);
        assert!(p.preferences.is_some());
        assert_eq!(
            p.interactions[0].occurred_at,
            time_in("t", "2025-01-02T02:04:05.25Z").ok()
        );
        assert_eq!(p.source, "crm_migration");
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = br#"{"identifiers":[{"kind":"EMAIL","value":"not-an-email"},{"kind":"FAX","value":"1"}]}"#;
        let r = parse(text, NOW).expect_err("bad kind");
        assert!(r.contains("identifiers[1].kind"), "{r}");
        let text = br#"{"identifiers":[{"kind":"EMAIL","value":"not-an-email"}],
            "interactions":[{"channel":"STORE","direction":"SIDEWAYS","department":"stores","type":"purchase"}]}"#;
        let r = parse(text, NOW).expect_err("bad values");
        assert!(r.contains("identifiers[0].value"), "{r}");
        assert!(r.contains("interactions[0].direction"), "{r}");
        let r = parse(br#"{"identifiers":[],"colour":"red"}"#, NOW).expect_err("unknown field");
        assert!(r.contains("colour"), "{r}");
        let r = parse(b"{\"identifiers\":[", NOW).expect_err("truncated");
        assert!(r.contains("import format"), "{r}");
    }
}
