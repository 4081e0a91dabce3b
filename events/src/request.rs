//! Idempotency keys: the key a client sent with a write, recorded in the write's message.
//!
//! A client that may retry a write (after a timeout, a lost answer, a crash) sends the same
//! `Idempotency-Key` each time. The first write's message carries the key and a fingerprint
//! of the request, so the read model knows, after any restart or rebuild, that the key was
//! used, by whom, for which request, and what the write left behind.

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The key a client gave a write, with the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestKey {
    /// The client's key, 1 to [`MAX_KEY_LEN`] visible ASCII characters.
    pub key: String,
    /// SHA-256 (hex) of the method, path and body: the same key with another request is
    /// refused, not answered with the first request's answer.
    pub fingerprint: String,
}

/// Why a key is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct InvalidKey;

impl RequestKey {
    /// The key `raw` for the request `method path` with `body`.
    pub fn new(raw: &str, method: &str, path: &str, body: &[u8]) -> Result<Self, InvalidKey> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_KEY_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !valid {
            return Err(InvalidKey);
        }
        Ok(Self {
            key: raw.to_owned(),
            fingerprint: fingerprint(method, path, body),
        })
    }

    /// The key of item `index` of a batch sent with this key: each item is its own write,
    /// with the whole batch's fingerprint.
    pub fn item(&self, index: usize) -> Self {
        Self {
            key: item_key(&self.key, index),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// The key item `index` of a batch sent with `key` is recorded under: with a tab, which
/// no client's key may hold, so no single write's key can be mistaken for a batch item's.
pub fn item_key(key: &str, index: usize) -> String {
    format!("{key}\titem {index}")
}

/// SHA-256 (hex) of a request, each part length-prefixed so no two requests share it.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [method.as_bytes(), path.as_bytes(), body] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    crate::hex::encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(RequestKey::new("order-42 retry", "POST", "/v1/tasks", b"{}").is_ok());
        for bad in ["", "tab\tkey", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert_eq!(
                RequestKey::new(bad, "POST", "/v1/tasks", b"{}"),
                Err(InvalidKey),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let a = fingerprint("POST", "/v1/tasks", b"{\"a\":1}");
        assert_eq!(a, fingerprint("POST", "/v1/tasks", b"{\"a\":1}"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, fingerprint("POST", "/v1/tasks", b"{\"a\":2}"));
        assert_ne!(a, fingerprint("PATCH", "/v1/tasks", b"{\"a\":1}"));
        // Length prefixes: moving a byte from the path into the body changes it.
        assert_ne!(
            fingerprint("POST", "/v1/tasksx", b""),
            fingerprint("POST", "/v1/tasks", b"x")
        );
    }

    #[test]
    fn batch_items_have_their_own_key_and_the_batch_fingerprint() {
        let key = RequestKey::new("k", "POST", "/v1/tasks/batch", b"[]").expect("valid");
        let item = key.item(7);
        assert_eq!(item.key, "k\titem 7");
        assert!(RequestKey::new(&item.key, "POST", "/v1/tasks", b"").is_err());
        assert_eq!(item.fingerprint, key.fingerprint);
    }
}
