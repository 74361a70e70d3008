//! Interactions: one contact with a customer, checked once at the edge (SPEC §5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::consent::Purpose;
use super::ids::{InteractionId, ProfileId};
use super::time::Timestamp;
use crate::error::{Error, FieldViolation, Result};

/// Channel of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// Email.
    Email,
    /// SMS.
    Sms,
    /// Phone call.
    PhoneCall,
    /// Website.
    Web,
    /// App.
    App,
    /// Store.
    Store,
    /// Post.
    Post,
    /// Push.
    Push,
    /// Chat.
    Chat,
    /// Social.
    Social,
}

impl Channel {
    /// The name used in messages (`EMAIL`, `PHONE_CALL`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
            Channel::PhoneCall => "PHONE_CALL",
            Channel::Web => "WEB",
            Channel::App => "APP",
            Channel::Store => "STORE",
            Channel::Post => "POST",
            Channel::Push => "PUSH",
            Channel::Chat => "CHAT",
            Channel::Social => "SOCIAL",
        }
    }

    /// Every channel, in wire order.
    pub const ALL: [Channel; 10] = [
        Channel::Email,
        Channel::Sms,
        Channel::PhoneCall,
        Channel::Web,
        Channel::App,
        Channel::Store,
        Channel::Post,
        Channel::Push,
        Channel::Chat,
        Channel::Social,
    ];
}

/// Who started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// From the customer.
    Inbound,
    /// To the customer.
    Outbound,
}

/// State of a case after an interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaseState {
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// Money: units and nanos of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Three uppercase letters.
    pub currency: String,
    /// Whole units.
    pub units: i64,
    /// Billionths, same sign as units.
    pub nanos: i32,
}

/// A recorded interaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interaction {
    /// Server-assigned id.
    pub id: InteractionId,
    /// The profile it was written to (its origin in the merge tree).
    pub origin: ProfileId,
    /// Channel.
    pub channel: Channel,
    /// Direction.
    pub direction: Direction,
    /// Department.
    pub department: String,
    /// Type (`purchase`, `complaint`, ...).
    pub kind: String,
    /// Campaign/message identity.
    pub message_key: Option<String>,
    /// Case id and its state after this interaction.
    pub case: Option<(String, CaseState)>,
    /// Amount.
    pub amount: Option<Money>,
    /// Free text.
    pub summary: String,
    /// Extra string pairs.
    pub attributes: BTreeMap<String, String>,
    /// Client time.
    pub occurred_at: Timestamp,
    /// Server time.
    pub recorded_at: Timestamp,
    /// Why an outbound contact was sent (marketing counts towards caps).
    pub purpose: Option<Purpose>,
}

/// An interaction as submitted, checked, before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInteraction {
    /// Channel.
    pub channel: Channel,
    /// Direction.
    pub direction: Direction,
    /// Department.
    pub department: String,
    /// Type.
    pub kind: String,
    /// Message key.
    pub message_key: Option<String>,
    /// Case.
    pub case: Option<(String, CaseState)>,
    /// Amount.
    pub amount: Option<Money>,
    /// Summary.
    pub summary: String,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Client time; `None` = now.
    pub occurred_at: Option<Timestamp>,
    /// Purpose of an outbound contact.
    pub purpose: Option<Purpose>,
}

/// Longest summary, bytes.
pub const MAX_SUMMARY_BYTES: usize = 4096;
/// Most attribute pairs.
pub const MAX_ATTRIBUTES: usize = 50;
/// How far in the future `occurred_at` may be (clock skew).
pub const MAX_FUTURE_SECS: i64 = 300;

/// The fields of an interaction as received, before checking; field names match the proto.
pub struct RawInteraction<'a> {
    /// Parsed channel, or None when unspecified/unknown (reported as such).
    pub channel: Result<Channel, String>,
    /// Parsed direction.
    pub direction: Result<Direction, String>,
    /// Department text.
    pub department: &'a str,
    /// Type text.
    pub kind: &'a str,
    /// Message key text.
    pub message_key: &'a str,
    /// Case id text.
    pub case_id: &'a str,
    /// Parsed case state (`None` = unspecified).
    pub case_state: Result<Option<CaseState>, String>,
    /// Amount.
    pub amount: Option<Money>,
    /// Summary.
    pub summary: &'a str,
    /// Attributes.
    pub attributes: &'a std::collections::HashMap<String, String>,
    /// Client time.
    pub occurred_at: Option<Timestamp>,
    /// Parsed purpose (`None` = unspecified).
    pub purpose: Result<Option<Purpose>, String>,
}

/// Whether `s` is a valid interaction type (`[a-z0-9_.]{1,64}`).
pub fn valid_type(s: &str) -> bool {
    slug(s, b"_.")
}

/// Whether `s` is a valid department (`[a-z0-9_]{1,64}`).
pub fn valid_department(s: &str) -> bool {
    slug(s, b"_")
}

fn slug(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
}

impl NewInteraction {
    /// Checks every field, collecting every violation (paths relative to the interaction).
    pub fn check(raw: RawInteraction<'_>, now: Timestamp) -> Result<NewInteraction> {
        let mut v: Vec<FieldViolation> = Vec::new();
        let mut bad = |field: &str, d: String| {
            v.push(FieldViolation {
                field: field.to_string(),
                description: d,
            })
        };
        let channel = raw.channel.map_err(|e| bad("channel", e)).ok();
        let direction = raw.direction.map_err(|e| bad("direction", e)).ok();
        if !slug(raw.department, b"_") {
            bad(
                "department",
                format!(
                    "1 to 64 characters from [a-z0-9_] (e.g. customer_service), got {:?}",
                    raw.department
                ),
            );
        }
        if !slug(raw.kind, b"_.") {
            bad(
                "type",
                format!(
                    "1 to 64 characters from [a-z0-9_.] (e.g. support_call), got {:?}",
                    raw.kind
                ),
            );
        }
        if raw.message_key.len() > 128 || raw.message_key.chars().any(char::is_control) {
            bad(
                "message_key",
                "at most 128 characters, no control characters".into(),
            );
        }
        let case_state = raw
            .case_state
            .map_err(|e| bad("case_state", e))
            .ok()
            .flatten();
        let case = match (raw.case_id.is_empty(), case_state) {
            (true, None) => None,
            (false, Some(state)) if raw.case_id.len() <= 128 => {
                Some((raw.case_id.to_string(), state))
            }
            (false, Some(_)) => {
                bad("case_id", "at most 128 characters".into());
                None
            }
            (true, Some(_)) => {
                bad(
                    "case_id",
                    "case_state is set, so case_id is required".into(),
                );
                None
            }
            (false, None) => {
                bad(
                    "case_state",
                    "case_id is set, so case_state (OPEN or CLOSED) is required".into(),
                );
                None
            }
        };
        if let Some(m) = &raw.amount {
            if m.currency.len() != 3 || !m.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                bad(
                    "amount.currency_code",
                    format!(
                        "an ISO 4217 code of three uppercase letters such as EUR, got {:?}",
                        m.currency
                    ),
                );
            }
            if !(-999_999_999..=999_999_999).contains(&m.nanos)
                || (m.units > 0 && m.nanos < 0)
                || (m.units < 0 && m.nanos > 0)
            {
                bad(
                    "amount.nanos",
                    "between -999,999,999 and 999,999,999 with the sign of units".into(),
                );
            }
        }
        if raw.summary.len() > MAX_SUMMARY_BYTES {
            bad(
                "summary",
                format!(
                    "at most {MAX_SUMMARY_BYTES} bytes, got {}",
                    raw.summary.len()
                ),
            );
        }
        if raw.attributes.len() > MAX_ATTRIBUTES {
            bad(
                "attributes",
                format!(
                    "at most {MAX_ATTRIBUTES} pairs, got {}",
                    raw.attributes.len()
                ),
            );
        }
        for (k, val) in raw.attributes {
            let kb = k.as_bytes();
            let key_ok = !kb.is_empty()
                && kb.len() <= 64
                && kb[0].is_ascii_lowercase()
                && kb.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'.'
                });
            if !key_ok {
                bad(
                    &format!("attributes[{k:?}]"),
                    "keys are 1 to 64 characters from [a-z0-9_.], starting with a letter".into(),
                );
            } else if val.len() > 1024 {
                bad(
                    &format!("attributes[{k:?}]"),
                    format!("values have at most 1024 bytes, got {}", val.len()),
                );
            }
        }
        let purpose = raw.purpose.map_err(|e| bad("purpose", e)).ok().flatten();
        if let Some(t) = raw.occurred_at {
            if t > now.plus_secs(MAX_FUTURE_SECS) {
                bad(
                    "occurred_at",
                    "is more than 5 minutes in the future; send the time it happened (UTC)".into(),
                );
            } else if t < Timestamp(0) {
                bad("occurred_at", "is before 1970".into());
            }
        }
        match (channel, direction) {
            (Some(channel), Some(direction)) if v.is_empty() => Ok(NewInteraction {
                channel,
                direction,
                department: raw.department.to_string(),
                kind: raw.kind.to_string(),
                message_key: (!raw.message_key.is_empty()).then(|| raw.message_key.to_string()),
                case,
                amount: raw.amount,
                summary: raw.summary.to_string(),
                attributes: raw
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                occurred_at: raw.occurred_at,
                purpose,
            }),
            _ => Err(Error::InvalidArgument(v)),
        }
    }
}

/// Filters of ListInteractions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InteractionFilter {
    /// Channels (empty = all).
    pub channels: Vec<Channel>,
    /// Departments (empty = all).
    pub departments: Vec<String>,
    /// Types (empty = all).
    pub kinds: Vec<String>,
    /// Direction (None = both).
    pub direction: Option<Direction>,
    /// occurred_at >= this.
    pub after: Option<Timestamp>,
    /// occurred_at < this.
    pub before: Option<Timestamp>,
}

impl InteractionFilter {
    /// Whether `i` passes.
    pub fn matches(&self, i: &Interaction) -> bool {
        (self.channels.is_empty() || self.channels.contains(&i.channel))
            && (self.departments.is_empty() || self.departments.contains(&i.department))
            && (self.kinds.is_empty() || self.kinds.contains(&i.kind))
            && self.direction.is_none_or(|d| d == i.direction)
            && self.after.is_none_or(|a| i.occurred_at >= a)
            && self.before.is_none_or(|b| i.occurred_at < b)
    }
}

/// Position in a newest-first listing: strictly older than this (occurred_at, id).
pub type InteractionCursor = (Timestamp, InteractionId);
