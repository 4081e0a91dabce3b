//! API tokens: random secrets shown once, kept only as their SHA-256.
//!
//! A token is `aicp_` and 43 characters of URL-safe base64: 256 random bits. Because it is
//! that random, a plain SHA-256 is enough to store it (a password hash's slowness only
//! helps against guessable secrets), and the hash can be the key it is looked up by: no
//! secret is ever compared byte by byte. The hash travels in `TokenIssued` events, the
//! secret never does.

use std::fmt;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::id::TokenId;

/// Every token starts with this, so a leaked one is recognisable by secret scanners.
pub const PREFIX: &str = "aicp_";

/// Random bytes in a token.
const SECRET_BYTES: usize = 32;

/// The operating system's random source failed (it does not, in practice).
#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed")]
pub struct RandomError;

/// A token's secret. Its `Debug` hides it, so it is never logged by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// A new random token.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; SECRET_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| RandomError)?;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Ok(Self(format!("{PREFIX}{text}")))
    }

    /// A token given by someone (configuration, a request); not checked beyond being text.
    pub fn from_text(text: &str) -> Self {
        Self(text.trim().to_owned())
    }

    /// The secret itself: only to show it once, or to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its hash, the only form that is stored.
    pub fn hash(&self) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        TokenHash(crate::hex::encode(digest.as_ref()))
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<hidden>)")
    }
}

/// The SHA-256 of a token, as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenHash(String);

impl TokenHash {
    /// The hash as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new random token id, `t-` and 16 hex characters.
pub fn generate_id() -> Result<TokenId, RandomError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    TokenId::new(format!("t-{}", crate::hex::encode(&bytes))).map_err(|_| RandomError)
}

/// The id of a token given by configuration: derived from its hash, so every replica
/// started with the same token names it the same and issues it once.
pub fn configured_id(hash: &TokenHash) -> TokenId {
    // 16 hex characters of a SHA-256 are valid id characters, so this cannot fail; the
    // fallback keeps the function total all the same.
    TokenId::new(format!("cfg-{}", &hash.0[..16])).unwrap_or_else(|_| bootstrap_id())
}

/// The id of the admin token a coordinator makes on first start.
pub fn bootstrap_id() -> TokenId {
    TokenId::new("admin").unwrap_or_else(|_| unreachable!("\"admin\" is a valid id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hidden_from_debug() {
        let a = TokenSecret::generate().expect("random");
        let b = TokenSecret::generate().expect("random");
        assert_ne!(a, b);
        assert!(a.expose().starts_with(PREFIX));
        assert_eq!(a.expose().len(), PREFIX.len() + 43);
        assert!(!format!("{a:?}").contains(&a.expose()[PREFIX.len()..]));
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            TokenSecret::from_text("abc").hash().as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            TokenSecret::from_text(" abc\n").hash(),
            TokenSecret::from_text("abc").hash()
        );
    }

    #[test]
    fn ids_are_valid_and_configured_ids_are_stable() {
        let id = generate_id().expect("random");
        assert!(id.as_str().starts_with("t-") && id.as_str().len() == 18);
        let hash = TokenSecret::from_text("x").hash();
        assert_eq!(configured_id(&hash), configured_id(&hash));
        assert_eq!(bootstrap_id().as_str(), "admin");
    }
}
