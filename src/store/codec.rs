//! The one place values are turned into bytes and back. Every stored value starts with a
//! format version byte; decoding refuses versions it does not know, so corrupt or newer data is
//! reported, never served. Encryption at rest will wrap the payload here.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Format of values written by this build.
pub const FORMAT_V1: u8 = 1;

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_V1];
    postcard::to_io(value, &mut out)
        .map_err(|e| Error::Unavailable(format!("cannot encode a value: {e}")))?;
    Ok(out)
}

/// Decodes a value; `what` names it in errors.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, payload)) => postcard::from_bytes(payload)
            .map_err(|e| Error::Corrupt(format!("{what}: cannot decode: {e}"))),
        Some((v, _)) => Err(Error::Corrupt(format!(
            "{what}: unknown format version {v}"
        ))),
        None => Err(Error::Corrupt(format!("{what}: empty value"))),
    }
}

/// A u64 counter in `meta`.
pub fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corrupt(format!("{what}: not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() -> Result<()> {
        let v = (7u64, "x".to_string());
        let bytes = encode(&v)?;
        assert_eq!(decode::<(u64, String)>("t", &bytes)?, v);
        assert!(decode::<(u64, String)>("t", &[]).is_err());
        assert!(decode::<(u64, String)>("t", &[9, 1, 2]).is_err());
        assert!(decode::<(u64, String)>("t", &bytes[..2]).is_err());
        Ok(())
    }
}
