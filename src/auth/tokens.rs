//! Bearer tokens: configuration holds only SHA-256 hashes; incoming tokens are hashed and
//! compared in constant time against every configured hash.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A 32-byte SHA-256 digest.
pub type TokenHash = [u8; 32];

/// The hash of a token.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Parses a configured hash (64 hex digits).
pub fn parse_hash(hex_text: &str) -> Option<TokenHash> {
    let bytes = hex::decode(hex_text.trim()).ok()?;
    bytes.try_into().ok()
}

/// A new random token (`cpt_` + 43 base64url characters of 32 random bytes) and its hash in
/// hex.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = format!(
        "cpt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let h = hex::encode(hash(&token));
    Ok((token, h))
}

/// The index of the entry of `hashes` equal to the hash of `token`. Every entry is compared,
/// each in constant time, so timing tells nothing about which or how much matched.
pub fn find(token: &str, hashes: &[TokenHash]) -> Option<usize> {
    let h = hash(token);
    let mut found = None;
    for (i, candidate) in hashes.iter().enumerate() {
        if bool::from(candidate.ct_eq(&h)) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_hash_and_nothing_else() -> Result<(), getrandom::Error> {
        let (token, h) = generate()?;
        let (other, oh) = generate()?;
        let hashes = [parse_hash(&oh), parse_hash(&h)].map(|x| x.unwrap_or([0; 32]));
        assert_eq!(find(&token, &hashes), Some(1));
        assert_eq!(find(&other, &hashes), Some(0));
        assert_eq!(find("cpt_wrong", &hashes), None);
        assert_eq!(find(&token[..token.len() - 1], &hashes), None);
        assert!(parse_hash("zz").is_none());
        Ok(())
    }
}
