//! Encryption at rest (SPEC §10). Every personal value is sealed with XChaCha20-Poly1305
//! under a data key: a per-profile key for records that belong to a profile (erasing the
//! profile deletes its key, so copies left in sled's log can no longer be read), a service key
//! for the rest. Data keys are stored wrapped (sealed) under a key derived from the master key.
//! Index keys that would otherwise hold personal values (identifiers, attribute values in the
//! segment index, interaction attribute values) are keyed hashes (HMAC-SHA256).
//!
//! Sealed value: `0xE1 ++ nonce (24) ++ ciphertext ++ tag (16)`; the associated data binds it
//! to its tree and key, so a sealed value cannot be moved to another record.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// First byte of a sealed value (plaintext values start with a codec version 1 or 2).
pub const SEALED: u8 = 0xE1;

/// A 256-bit key.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A new random key.
    pub fn generate() -> Result<Key> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
        Ok(Key(k))
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Keys derived from the master key.
pub struct Crypto {
    service: Key,
    wrap: Key,
    index: Key,
    check: [u8; 32],
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(..)")
    }
}

impl Crypto {
    /// Derives the service, wrapping and index keys from `master`.
    pub fn new(master: &Key) -> Crypto {
        Crypto {
            service: Key(hmac(&master.0, &[b"customer-profile service data key v1"])),
            wrap: Key(hmac(&master.0, &[b"customer-profile key wrapping v1"])),
            index: Key(hmac(&master.0, &[b"customer-profile index hashing v1"])),
            check: hmac(&master.0, &[b"customer-profile master key check v1"]),
        }
    }

    /// A value that identifies the master key without revealing it (stored at first open, so a
    /// wrong key is refused instead of failing every read).
    pub fn check_value(&self) -> [u8; 32] {
        self.check
    }

    /// The service key.
    pub fn service_key(&self) -> &Key {
        &self.service
    }

    /// A keyed hash of `data` in `domain`.
    pub fn hash(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        hmac(&self.index.0, &[domain.as_bytes(), data])
    }

    /// Wraps a data key for storage.
    pub fn wrap(&self, profile: &[u8], key: &Key) -> Result<Vec<u8>> {
        seal(&self.wrap, &[b"data_key", profile], &key.0)
    }

    /// Unwraps a stored data key.
    pub fn unwrap_key(&self, profile: &[u8], wrapped: &[u8]) -> Result<Key> {
        let plain = open(&self.wrap, &[b"data_key", profile], wrapped)?;
        let k: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("a wrapped data key has the wrong length".into()))?;
        Ok(Key(k))
    }
}

fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Seals `plain` under `key`, bound to `context`.
pub fn seal(key: &Key, context: &[&[u8]], plain: &[u8]) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad(context),
            },
        )
        .map_err(|_| Error::Unavailable("encryption failed".into()))?;
    let mut out = Vec::with_capacity(1 + 24 + ct.len());
    out.push(SEALED);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a sealed value; a changed byte, another key or another context is an error.
pub fn open(key: &Key, context: &[&[u8]], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < 1 + 24 + 16 || sealed[0] != SEALED {
        return Err(Error::Corrupt("a sealed value is malformed".into()));
    }
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher
        .decrypt(
            XNonce::from_slice(&sealed[1..25]),
            Payload {
                msg: &sealed[25..],
                aad: &aad(context),
            },
        )
        .map_err(|_| {
            Error::Corrupt("a sealed value does not open (changed, or another master key)".into())
        })
}

/// Reads a master key: 32 raw bytes, or their base64 (standard or URL-safe) text.
pub fn parse_master_key(bytes: &[u8]) -> Option<Key> {
    use base64::Engine;
    if let Ok(k) = <[u8; 32]>::try_from(bytes) {
        return Some(Key(k));
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .ok()?;
    <[u8; 32]>::try_from(decoded.as_slice()).ok().map(Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() -> Result<()> {
        let k = Key::generate()?;
        let other = Key::generate()?;
        let s = seal(&k, &[b"profiles", b"id"], b"Ann Smith")?;
        assert_eq!(open(&k, &[b"profiles", b"id"], &s)?, b"Ann Smith");
        assert!(open(&other, &[b"profiles", b"id"], &s).is_err());
        assert!(open(&k, &[b"profiles", b"other"], &s).is_err());
        let mut flipped = s.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open(&k, &[b"profiles", b"id"], &flipped).is_err());
        assert!(!s.windows(3).any(|w| w == b"Ann"));
        Ok(())
    }

    #[test]
    fn wrapped_keys_round_trip_and_master_keys_parse() -> Result<()> {
        let c = Crypto::new(&Key([7; 32]));
        let k = Key::generate()?;
        let w = c.wrap(b"p1", &k)?;
        assert_eq!(c.unwrap_key(b"p1", &w)?.0, k.0);
        assert!(c.unwrap_key(b"p2", &w).is_err());
        assert!(parse_master_key(&[1; 32]).is_some());
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(
            parse_master_key(text.as_bytes()).map(|k| k.0),
            Some([9; 32])
        );
        assert!(parse_master_key(b"short").is_none());
        Ok(())
    }
}
