//! Profile attributes: the typed core fields, custom values, and the rule that decides which
//! of several observations of one attribute wins ("recent supersedes older", SPEC §4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::ProfileId;
use super::time::Timestamp;
use crate::error::{Error, Result};

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Text.
    String(String),
    /// Signed integer.
    Int(i64),
    /// Finite double.
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// A point in time.
    Timestamp(Timestamp),
}

/// The core fields every profile may have. Stored as [`Value::String`] in a checked form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CoreField {
    /// Given name.
    GivenName,
    /// Family name.
    FamilyName,
    /// `YYYY-MM-DD`.
    BirthDate,
    /// One of [`GENDERS`].
    Gender,
    /// City.
    City,
    /// Postcode.
    Postcode,
    /// ISO 3166-1 alpha-2.
    Country,
    /// BCP 47 tag.
    Language,
}

/// Stored gender values.
pub const GENDERS: [&str; 5] = ["FEMALE", "MALE", "NON_BINARY", "OTHER", "PREFER_NOT_TO_SAY"];

impl CoreField {
    /// Every core field.
    pub const ALL: [CoreField; 8] = [
        CoreField::GivenName,
        CoreField::FamilyName,
        CoreField::BirthDate,
        CoreField::Gender,
        CoreField::City,
        CoreField::Postcode,
        CoreField::Country,
        CoreField::Language,
    ];

    /// The field's path (`given_name`).
    pub fn name(self) -> &'static str {
        match self {
            CoreField::GivenName => "given_name",
            CoreField::FamilyName => "family_name",
            CoreField::BirthDate => "birth_date",
            CoreField::Gender => "gender",
            CoreField::City => "city",
            CoreField::Postcode => "postcode",
            CoreField::Country => "country",
            CoreField::Language => "language",
        }
    }

    /// Inverse of [`CoreField::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        CoreField::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Checks and normalises a value for this field; `today` bounds birth dates.
    pub fn check(self, raw: &str, today: Timestamp) -> Result<String> {
        let v = raw.trim();
        let too_long = |max: usize| {
            Error::invalid(
                "",
                format!("at most {max} characters, got {}", v.chars().count()),
            )
        };
        if v.chars().any(char::is_control) {
            return Err(Error::invalid("", "control characters are not allowed"));
        }
        match self {
            CoreField::GivenName | CoreField::FamilyName | CoreField::City => {
                if v.chars().count() > 256 {
                    return Err(too_long(256));
                }
                Ok(v.to_string())
            }
            CoreField::Postcode => {
                if v.chars().count() > 32 {
                    return Err(too_long(32));
                }
                Ok(v.to_uppercase())
            }
            CoreField::Country => {
                let c = v.to_uppercase();
                if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                    Ok(c)
                } else {
                    Err(Error::invalid(
                        "",
                        format!("{raw:?} is not an ISO 3166-1 alpha-2 country code such as GB"),
                    ))
                }
            }
            CoreField::Language => check_language(v),
            CoreField::BirthDate => check_date(v, today),
            CoreField::Gender => {
                if GENDERS.contains(&v) {
                    Ok(v.to_string())
                } else {
                    Err(Error::invalid("", format!("unknown gender {raw:?}")))
                }
            }
        }
    }
}

fn check_language(v: &str) -> Result<String> {
    let parts: Vec<&str> = v.split('-').collect();
    let ok = !v.is_empty()
        && v.len() <= 35
        && parts
            .iter()
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && (2..=8).contains(&parts[0].len())
        && parts[0].bytes().all(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(v.to_string())
    } else {
        Err(Error::invalid(
            "",
            format!("{v:?} is not a BCP 47 language tag such as en-GB"),
        ))
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn check_date(v: &str, today: Timestamp) -> Result<String> {
    let bad = || {
        Error::invalid(
            "",
            format!("{v:?} is not a date in the form YYYY-MM-DD, such as 1984-03-21"),
        )
    };
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (num(&v[0..4])?, num(&v[5..7])?, num(&v[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if y < 1900 || d < 1 || d > dim {
        return Err(bad());
    }
    let day_micros = 86_400 * Timestamp::MICROS_PER_SEC;
    if days_from_civil(y, m, d) > today.0.div_euclid(day_micros) {
        return Err(Error::invalid(
            "",
            format!("birth date {v} is in the future"),
        ));
    }
    Ok(v.to_string())
}

/// Path of an attribute: a core field or `custom.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrPath {
    /// A core field.
    Core(CoreField),
    /// A custom attribute key (`[a-z][a-z0-9_]{0,63}`).
    Custom(String),
}

impl AttrPath {
    /// Parses `given_name` or `custom.tier`.
    pub fn parse(path: &str) -> Option<AttrPath> {
        if let Some(key) = path.strip_prefix("custom.") {
            return valid_custom_key(key).then(|| AttrPath::Custom(key.to_string()));
        }
        CoreField::from_name(path).map(AttrPath::Core)
    }

    /// The textual path, used as the key of stored attribute maps.
    pub fn to_path(&self) -> String {
        match self {
            AttrPath::Core(f) => f.name().to_string(),
            AttrPath::Custom(k) => format!("custom.{k}"),
        }
    }
}

/// Whether `key` is a valid custom attribute key.
pub fn valid_custom_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Most custom attributes one profile may hold.
pub const MAX_CUSTOM_ATTRIBUTES: usize = 100;
/// Longest custom string value, in bytes.
pub const MAX_CUSTOM_STRING_BYTES: usize = 1024;

/// Checks a custom value.
pub fn check_custom_value(v: &Value) -> Result<()> {
    match v {
        Value::String(s) if s.len() > MAX_CUSTOM_STRING_BYTES => Err(Error::invalid(
            "",
            format!(
                "string values have at most {MAX_CUSTOM_STRING_BYTES} bytes, got {}",
                s.len()
            ),
        )),
        Value::Double(d) if !d.is_finite() => {
            Err(Error::invalid("", "double values must be finite"))
        }
        _ => Ok(()),
    }
}

/// One observation of one attribute, as stored on the profile it was written to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrValue {
    /// The value; `None` records that the attribute was cleared.
    pub value: Option<Value>,
    /// Who supplied it.
    pub source: String,
    /// When it was true in the world.
    pub observed_at: Timestamp,
    /// When it was stored.
    pub recorded_at: Timestamp,
    /// Global write order, the tie-breaker between equal `observed_at`.
    pub write_seq: u64,
}

impl AttrValue {
    /// The rule of SPEC §4: newest `observed_at` wins, ties go to the newest write.
    pub fn supersedes(&self, other: &AttrValue) -> bool {
        (self.observed_at, self.write_seq) > (other.observed_at, other.write_seq)
    }
}

/// Attribute values keyed by path (`given_name`, `custom.tier`).
pub type AttrMap = BTreeMap<String, AttrValue>;

/// Combines the attribute maps of every profile of a merge tree: per path the winning value.
pub fn combine<'a>(maps: impl IntoIterator<Item = &'a AttrMap>) -> AttrMap {
    let mut out: AttrMap = BTreeMap::new();
    for map in maps {
        for (path, v) in map {
            match out.get(path) {
                Some(cur) if !v.supersedes(cur) => {}
                _ => {
                    out.insert(path.clone(), v.clone());
                }
            }
        }
    }
    out
}

/// One entry of attribute history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Attribute path.
    pub path: String,
    /// What the profile showed before the write.
    pub old: Option<Value>,
    /// What was written (`None` = cleared).
    pub new: Option<Value>,
    /// Who supplied it.
    pub source: String,
    /// When it was true.
    pub observed_at: Timestamp,
    /// When stored.
    pub recorded_at: Timestamp,
    /// Whether it won.
    pub applied: bool,
    /// The profile it was written to.
    pub origin: ProfileId,
    /// Global write order.
    pub write_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn av(obs: i64, seq: u64, v: &str) -> AttrValue {
        AttrValue {
            value: Some(Value::String(v.into())),
            source: "t".into(),
            observed_at: Timestamp(obs),
            recorded_at: Timestamp(0),
            write_seq: seq,
        }
    }

    #[test]
    fn newest_observation_wins_and_ties_go_to_newest_write() {
        let mut a = AttrMap::new();
        a.insert("city".into(), av(10, 1, "Leeds"));
        let mut b = AttrMap::new();
        b.insert("city".into(), av(5, 9, "York"));
        assert_eq!(
            combine([&a, &b])["city"].value,
            Some(Value::String("Leeds".into()))
        );
        assert_eq!(
            combine([&b, &a])["city"].value,
            Some(Value::String("Leeds".into()))
        );
        b.insert("city".into(), av(10, 9, "York"));
        assert_eq!(
            combine([&a, &b])["city"].value,
            Some(Value::String("York".into()))
        );
    }

    #[test]
    fn dates_are_checked() {
        let today = Timestamp(days_from_civil(2026, 11, 23) * 86_400_000_000);
        assert!(CoreField::BirthDate.check("1984-02-29", today).is_ok());
        assert!(CoreField::BirthDate.check("1983-02-29", today).is_err());
        assert!(CoreField::BirthDate.check("2027-01-01", today).is_err());
        assert!(CoreField::BirthDate.check("84-1-1", today).is_err());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
