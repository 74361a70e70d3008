//! Identifiers: their kinds, normalisation (SPEC §2) and strength order.
//!
//! An [`Identifier`] can only be built by [`Identifier::parse`], so every identifier past the
//! edge of the service is in normal form ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kind of an identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdentifierKind {
    /// An email address.
    Email,
    /// An E.164 phone number.
    Phone,
    /// The company's customer number (unique per profile).
    CustomerNumber,
    /// A loyalty card number.
    LoyaltyCard,
    /// An app device id.
    DeviceId,
    /// An id in another system, qualified by a namespace.
    External,
}

impl IdentifierKind {
    /// Every kind, in strength order (strongest first).
    pub const BY_STRENGTH: [IdentifierKind; 6] = [
        IdentifierKind::CustomerNumber,
        IdentifierKind::LoyaltyCard,
        IdentifierKind::Email,
        IdentifierKind::Phone,
        IdentifierKind::External,
        IdentifierKind::DeviceId,
    ];

    /// Higher is stronger: CUSTOMER_NUMBER > LOYALTY_CARD > EMAIL > PHONE > EXTERNAL > DEVICE_ID.
    pub fn strength(self) -> u8 {
        match self {
            IdentifierKind::CustomerNumber => 6,
            IdentifierKind::LoyaltyCard => 5,
            IdentifierKind::Email => 4,
            IdentifierKind::Phone => 3,
            IdentifierKind::External => 2,
            IdentifierKind::DeviceId => 1,
        }
    }

    /// The stable byte used for this kind in storage keys. Never renumber.
    pub fn code(self) -> u8 {
        match self {
            IdentifierKind::Email => 1,
            IdentifierKind::Phone => 2,
            IdentifierKind::CustomerNumber => 3,
            IdentifierKind::LoyaltyCard => 4,
            IdentifierKind::DeviceId => 5,
            IdentifierKind::External => 6,
        }
    }

    /// Inverse of [`IdentifierKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => IdentifierKind::Email,
            2 => IdentifierKind::Phone,
            3 => IdentifierKind::CustomerNumber,
            4 => IdentifierKind::LoyaltyCard,
            5 => IdentifierKind::DeviceId,
            6 => IdentifierKind::External,
            _ => return None,
        })
    }

    /// Lowercase name used in configuration (`email`, `customer_number`, ...).
    pub fn config_name(self) -> &'static str {
        match self {
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::CustomerNumber => "customer_number",
            IdentifierKind::LoyaltyCard => "loyalty_card",
            IdentifierKind::DeviceId => "device_id",
            IdentifierKind::External => "external",
        }
    }
}

/// A normalised identifier. `namespace` is empty except for [`IdentifierKind::External`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    kind: IdentifierKind,
    namespace: String,
    value: String,
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}:{}", self.kind.config_name(), self.value)
        } else {
            write!(
                f,
                "{}:{}:{}",
                self.kind.config_name(),
                self.namespace,
                self.value
            )
        }
    }
}

impl Identifier {
    /// Normalises and validates. Errors name `value` or `namespace` relative to the
    /// identifier; callers prefix the identifier's own path with [`Error::within`].
    pub fn parse(kind: IdentifierKind, namespace: &str, value: &str) -> Result<Self> {
        if kind != IdentifierKind::External && !namespace.is_empty() {
            return Err(Error::invalid(
                "namespace",
                "only IDENTIFIER_KIND_EXTERNAL identifiers take a namespace; leave it empty",
            ));
        }
        let (namespace, value) = match kind {
            IdentifierKind::Email => (String::new(), normalise_email(value)?),
            IdentifierKind::Phone => (String::new(), normalise_phone(value)?),
            IdentifierKind::CustomerNumber | IdentifierKind::LoyaltyCard => {
                (String::new(), normalise_code(value)?)
            }
            IdentifierKind::DeviceId => (String::new(), normalise_device(value)?),
            IdentifierKind::External => normalise_external(namespace, value)?,
        };
        Ok(Identifier {
            kind,
            namespace,
            value,
        })
    }

    /// Rebuilds an identifier read back from storage, where it was stored in normal form.
    /// Re-validates, so corrupt bytes can never become an identifier.
    pub fn from_stored(kind: IdentifierKind, namespace: &str, value: &str) -> Result<Self> {
        Identifier::parse(kind, namespace, value)
            .map_err(|e| Error::Corrupt(format!("stored identifier is not in normal form: {e}")))
    }

    /// The kind.
    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// The namespace (empty unless EXTERNAL).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The value in normal form.
    pub fn value(&self) -> &str {
        &self.value
    }
}

fn invalid_value(msg: impl Into<String>) -> Error {
    Error::invalid("value", msg)
}

fn normalise_email(raw: &str) -> Result<String> {
    let v = raw.trim().to_lowercase();
    if v.is_empty() {
        return Err(invalid_value("an email address is required"));
    }
    if v.chars().count() > 254 {
        return Err(invalid_value("an email address has at most 254 characters"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid_value(format!(
            "{raw:?} is not an email address: it contains spaces or control characters"
        )));
    }
    let mut parts = v.split('@');
    let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
        (Some(l), Some(d), None) => (l, d),
        _ => {
            return Err(invalid_value(format!(
                "{raw:?} is not an email address: it needs exactly one '@', as in name@example.com"
            )));
        }
    };
    if local.is_empty() {
        return Err(invalid_value(format!(
            "{raw:?} is not an email address: the part before '@' is empty"
        )));
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(invalid_value(format!(
            "{raw:?} is not an email address: the domain after '@' needs a dot, as in example.com"
        )));
    }
    Ok(v)
}

fn normalise_phone(raw: &str) -> Result<String> {
    let v: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = v.strip_prefix('+');
    let ok = match digits {
        Some(d) => {
            (7..=15).contains(&d.len())
                && d.bytes().all(|b| b.is_ascii_digit())
                && !d.starts_with('0')
        }
        None => false,
    };
    if ok {
        return Ok(v);
    }
    let hint = if v.bytes().all(|b| b.is_ascii_digit()) && v.starts_with('0') {
        format!(
            "{raw:?} is not in E.164 form and the country is not guessed: write '+', the country code and the number without its leading 0, e.g. +44{} for a UK number",
            &v[1..]
        )
    } else {
        format!(
            "{raw:?} is not an E.164 phone number: write '+', the country code and the number (7 to 15 digits, first not 0), e.g. +447700900123"
        )
    };
    Err(invalid_value(hint))
}

fn normalise_code(raw: &str) -> Result<String> {
    let v = raw.trim().to_uppercase();
    if v.is_empty() || v.len() > 64 {
        return Err(invalid_value(format!(
            "must be 1 to 64 characters, got {}",
            v.len()
        )));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(invalid_value(format!(
            "{raw:?} may contain only letters, digits, '_' and '-'"
        )));
    }
    Ok(v)
}

fn normalise_device(raw: &str) -> Result<String> {
    let v = raw.trim();
    if v.is_empty() || v.len() > 128 {
        return Err(invalid_value(format!(
            "a device id has 1 to 128 characters, got {}",
            v.len()
        )));
    }
    if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(invalid_value(
            "a device id may contain only printable ASCII characters",
        ));
    }
    Ok(v.to_string())
}

fn normalise_external(namespace: &str, raw: &str) -> Result<(String, String)> {
    if namespace.is_empty()
        || namespace.len() > 32
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::invalid(
            "namespace",
            format!(
                "an EXTERNAL identifier needs a namespace of 1 to 32 characters from [a-z0-9_] (e.g. crm), got {namespace:?}"
            ),
        ));
    }
    let count = raw.chars().count();
    if count == 0 || count > 256 {
        return Err(invalid_value(format!(
            "an external id has 1 to 256 characters, got {count}"
        )));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid_value(
            "an external id may not contain control characters",
        ));
    }
    Ok((namespace.to_string(), raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentifierKind::*;

    fn ok(kind: IdentifierKind, v: &str) -> String {
        match Identifier::parse(kind, "", v) {
            Ok(id) => id.value().to_string(),
            Err(e) => panic!("{v:?} should parse: {e}"),
        }
    }

    #[test]
    fn normalises_each_kind() {
        assert_eq!(
            ok(Email, "  Ann.Smith@Example.COM "),
            "ann.smith@example.com"
        );
        assert_eq!(ok(Phone, "+44 (7700) 900-123"), "+447700900123");
        assert_eq!(ok(CustomerNumber, " c-1001 "), "C-1001");
        assert_eq!(ok(LoyaltyCard, "lc_77"), "LC_77");
        assert_eq!(ok(DeviceId, " dev 1 "), "dev 1");
    }

    #[test]
    fn rejects_bad_values() {
        for (kind, v) in [
            (Email, "no-at-sign"),
            (Email, "a@b@c.com"),
            (Email, "@example.com"),
            (Email, "a@localhost"),
            (Phone, "07700 900123"),
            (Phone, "+0123456789"),
            (Phone, "+12345"),
            (CustomerNumber, ""),
            (CustomerNumber, "has space"),
            (DeviceId, "\u{7}"),
        ] {
            assert!(Identifier::parse(kind, "", v).is_err(), "{v:?} should fail");
        }
    }

    #[test]
    fn phone_hint_shows_e164_form() {
        let err = Identifier::parse(Phone, "", "07700 900123")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("+447700900123"));
    }

    #[test]
    fn external_needs_namespace_and_others_refuse_one() {
        assert!(Identifier::parse(External, "", "x").is_err());
        assert!(Identifier::parse(External, "CRM", "x").is_err());
        assert!(Identifier::parse(External, "crm", "x").is_ok());
        assert!(Identifier::parse(Email, "crm", "a@b.co").is_err());
    }
}
