//! Opaque page tokens: a version byte, the position, and a fingerprint of the query that
//! issued them, base64url-encoded. A token from another query or a damaged one is refused with
//! INVALID_ARGUMENT naming `page_token`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

const TOKEN_V1: u8 = 1;

/// Encodes a position and the query fingerprint.
pub fn encode<T: Serialize>(position: &T, fingerprint: u64) -> String {
    let mut bytes = vec![TOKEN_V1];
    bytes.extend_from_slice(&fingerprint.to_be_bytes());
    match postcard::to_allocvec(position) {
        Ok(p) => bytes.extend_from_slice(&p),
        // A position is a few integers; encoding cannot fail. An empty token ends paging.
        Err(_) => return String::new(),
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a token issued for the query with `fingerprint`; `None` for an empty token.
pub fn decode<T: DeserializeOwned>(token: &str, fingerprint: u64) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| {
        Error::invalid(
            "page_token",
            format!("{why}; pass next_page_token from the previous response unchanged"),
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad("not a page token"))?;
    if bytes.len() < 9 || bytes[0] != TOKEN_V1 {
        return Err(bad("not a page token"));
    }
    let fp = u64::from_be_bytes(
        bytes[1..9]
            .try_into()
            .map_err(|_| bad("not a page token"))?,
    );
    if fp != fingerprint {
        return Err(bad(
            "the token was issued for a different query (profile or filters changed)",
        ));
    }
    postcard::from_bytes(&bytes[9..])
        .map(Some)
        .map_err(|_| bad("not a page token"))
}

/// FNV-1a over bytes: a fingerprint stable across builds and processes.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
