//! Thin entry points for the coverage-guided fuzz targets in `fuzz/` and for the tests that
//! replay their corpus. Each takes arbitrary bytes, runs real code on them and returns `Err`
//! only when a property that must always hold is broken (a panic is a failure too); refused
//! input is the expected outcome, not an error. Not part of the service's API.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::domain::identifier::{Identifier, IdentifierKind};
use crate::server::config::Config;
use crate::service::{convert, fuzz_entry, pb};
use crate::store::codec::{self, Stored};
use crate::store::crypto::{self, Crypto, Key};

/// A broken property, described.
pub type Broken = String;

/// Splits the bytes at the first NUL into two strings.
fn two_strings(data: &[u8]) -> (String, String) {
    let (a, b) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    (
        String::from_utf8_lossy(a).into_owned(),
        String::from_utf8_lossy(b).into_owned(),
    )
}

/// Identifier normalisation of every kind: `data[0]` picks the kind (as the stored code and
/// as the wire enum), the rest is `namespace NUL value`. A normalised identifier must be a
/// fixed point (re-parsing its own parts, as a read from storage does, gives it back) and must
/// survive the trip to the wire and back.
pub fn identifier(data: &[u8]) -> Result<(), Broken> {
    let Some((&pick, rest)) = data.split_first() else {
        return Ok(());
    };
    let (namespace, value) = two_strings(rest);
    let _ = IdentifierKind::from_code(pick);
    let kind = IdentifierKind::BY_STRENGTH[usize::from(pick) % IdentifierKind::BY_STRENGTH.len()];
    if let Ok(id) = Identifier::parse(kind, &namespace, &value) {
        let again = Identifier::from_stored(id.kind(), id.namespace(), id.value())
            .map_err(|e| format!("normal form {id} does not re-parse: {e}"))?;
        if again != id {
            return Err(format!("normalising {id} again gives {again}"));
        }
        if IdentifierKind::from_code(kind.code()) != Some(kind) {
            return Err(format!("kind code of {kind:?} does not map back"));
        }
        let wire = convert::identifier_out(&id);
        let back = convert::identifier_in("identifier", &wire)
            .map_err(|e| format!("{id} does not come back from the wire: {e}"))?;
        if back != id {
            return Err(format!("{id} comes back from the wire as {back}"));
        }
        let _ = id.to_string();
    }
    let wire = pb::Identifier {
        kind: i32::from(pick % 8),
        value,
        namespace,
    };
    let _ = convert::identifier_in("identifier", &wire);
    Ok(())
}

/// A decoded value must encode to bytes that decode and encode the same again.
fn stable<T: Stored>(what: &str, bytes: &[u8]) -> Result<(), Broken> {
    let Ok(value) = codec::decode::<T>(what, bytes) else {
        return Ok(());
    };
    let once =
        codec::encode(&value).map_err(|e| format!("{what}: decoded but not encodable: {e}"))?;
    let back = codec::decode::<T>(what, &once)
        .map_err(|e| format!("{what}: own encoding does not decode: {e}"))?;
    let twice = codec::encode(&back).map_err(|e| format!("{what}: re-encode failed: {e}"))?;
    if once != twice {
        return Err(format!("{what}: encoding is not stable"));
    }
    Ok(())
}

/// Every stored-value decoder on the same bytes, then the crypto layer: opening and key
/// unwrapping of arbitrary bytes, master-key parsing, and seal-then-open of the bytes.
pub fn codec(data: &[u8]) -> Result<(), Broken> {
    use crate::domain::{attributes, consent, interaction, profile, segments, summary, time};
    stable::<profile::ProfileRecord>("profile", data)?;
    stable::<profile::IdentifierLink>("identifier link", data)?;
    stable::<profile::ChangeEvent>("change event", data)?;
    stable::<profile::MergeRecord>("merge", data)?;
    stable::<attributes::HistoryEntry>("history entry", data)?;
    stable::<consent::ConsentRecord>("consent record", data)?;
    stable::<consent::Preferences>("preferences", data)?;
    stable::<summary::Summary>("summary", data)?;
    stable::<Vec<segments::IndexTerm>>("segment terms", data)?;
    stable::<time::Timestamp>("timestamp", data)?;
    stable::<interaction::Interaction>("interaction", data)?;
    let _ = crate::store::decode_idempotent_record(data);
    let _ = codec::decode_u64("counter", data);

    let _ = crypto::parse_master_key(data);
    let master = Key([7; 32]);
    let c = Crypto::new(&master);
    let split = data.len().min(16);
    let (profile_id, rest) = data.split_at(split);
    if c.unwrap_key(profile_id, rest).is_ok() {
        return Err("unwrapped a data key that was never wrapped".into());
    }
    let context: [&[u8]; 2] = [b"profiles", profile_id];
    if crypto::open(c.service_key(), &context, data).is_ok() {
        return Err("opened a value that was never sealed".into());
    }
    let sealed = crypto::seal(c.service_key(), &context, rest).map_err(|e| e.to_string())?;
    let opened = crypto::open(c.service_key(), &context, &sealed)
        .map_err(|e| format!("own sealed value does not open: {e}"))?;
    if opened != rest {
        return Err("seal then open changed the bytes".into());
    }
    if crypto::open(c.service_key(), &[b"profiles", b"another"], &sealed).is_ok() {
        return Err("a sealed value opened in another context".into());
    }
    Ok(())
}

/// Page-token decoding (see [`fuzz_entry::page_token`]).
pub fn page_token(data: &[u8]) -> Result<(), Broken> {
    fuzz_entry::page_token(data)
}

/// TOML configuration over the defaults, as `--config` files are read, then validation. A
/// configuration that validates must print as TOML that reads back to the same configuration.
pub fn config(data: &[u8]) -> Result<(), Broken> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let Ok(config) = read_toml(text) else {
        return Ok(());
    };
    if config.validate().is_err() {
        return Ok(());
    }
    let _ = config.redacted_toml();
    let printed =
        toml::to_string(&config).map_err(|e| format!("valid config does not print: {e}"))?;
    let back = read_toml(&printed).map_err(|e| format!("printed config does not read: {e}"))?;
    if back != config {
        return Err(format!("printed config reads back differently:\n{printed}"));
    }
    back.validate()
        .map_err(|e| format!("printed config does not validate: {e}"))
}

fn read_toml(text: &str) -> Result<Config, String> {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

/// Request protobufs and their conversion (see [`fuzz_entry::request`]). Every refusal must
/// be INVALID_ARGUMENT with a message.
pub fn request(data: &[u8]) -> Result<(), Broken> {
    match fuzz_entry::request(data) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(s)) if s.code() == tonic::Code::InvalidArgument && !s.message().is_empty() => {
            Ok(())
        }
        Some(Err(s)) => Err(format!(
            "request refused with {:?}: {}",
            s.code(),
            s.message()
        )),
    }
}
