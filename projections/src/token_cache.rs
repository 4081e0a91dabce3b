//! The tokens this replica has looked up, kept in memory so that authenticating a request
//! is one hash-map read instead of two reads of the store.
//!
//! The read model is the source of truth: a miss reads the store and fills the cache, and every
//! commit that changes a token empties it. A lookup that read the store before such a commit
//! must not put its (now stale) answer back afterwards: the generation, bumped by each
//! emptying, tells it so. A revocation is therefore refused as soon as this replica's read
//! model has applied it, exactly as without the cache.

use std::collections::HashMap;
use std::sync::RwLock;

use aicp_events::token::TokenHash;

use crate::views::TokenView;

/// More entries than this and the cache starts over: tokens are issued by hand, so this is
/// only reached by a flood of lookups that each found a different token.
const MAX_ENTRIES: usize = 100_000;

/// Token hash -> the token's view, for tokens that exist.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped whenever the cache is emptied.
    generation: u64,
    by_hash: HashMap<TokenHash, TokenView>,
}

impl TokenCache {
    /// The cached token, or the generation to pass to [`TokenCache::fill`] after reading it.
    pub(crate) fn get(&self, hash: &TokenHash) -> Result<TokenView, u64> {
        // The guarded map is only ever replaced whole: a panic cannot leave it half-written.
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.by_hash.get(hash).cloned().ok_or(inner.generation)
    }

    /// Remembers `view`, read from the store at `generation`, unless a token changed since.
    pub(crate) fn fill(&self, hash: &TokenHash, view: &TokenView, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation {
            return;
        }
        if inner.by_hash.len() >= MAX_ENTRIES {
            inner.by_hash.clear();
        }
        inner.by_hash.insert(hash.clone(), view.clone());
    }

    /// Forgets everything: a token was issued or revoked.
    pub(crate) fn invalidate(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        inner.by_hash.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicp_events::domain::access::Principal;
    use aicp_events::id::TokenId;
    use aicp_events::token::TokenSecret;

    fn view() -> TokenView {
        TokenView {
            token_id: TokenId::new("tok-test").expect("a valid id"),
            principal: Principal::Admin,
            label: "test".into(),
            issued_at: chrono::Utc::now(),
            issued_by: None,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
            last_sequence: 1,
        }
    }

    #[test]
    fn a_lookup_read_before_an_invalidation_is_not_kept() {
        let cache = TokenCache::default();
        let hash = TokenSecret::from_text("secret-one").hash();
        let generation = cache.get(&hash).expect_err("nothing cached yet");
        cache.invalidate();
        cache.fill(&hash, &view(), generation);
        assert!(cache.get(&hash).is_err(), "a stale read was cached");

        let generation = cache.get(&hash).expect_err("nothing cached yet");
        let fresh = view();
        cache.fill(&hash, &fresh, generation);
        assert_eq!(cache.get(&hash), Ok(fresh));
        cache.invalidate();
        assert!(cache.get(&hash).is_err(), "invalidate kept an entry");
    }
}
