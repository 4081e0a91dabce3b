//! Rate limits: a token bucket per key (a principal, or a client IP).
//!
//! Each key may make `burst` requests at once and then `per_second` on average; a request
//! over the limit is told how long to wait (`Retry-After`). Buckets live in memory, per
//! replica: a client spread over N replicas gets up to N times the rate, which is the
//! price of not sharing state between replicas for every request.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept before idle ones are dropped, so a flood of new keys cannot grow memory
/// without bound.
const MAX_KEYS: usize = 100_000;

/// A limit: `per_second` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

/// A limit that is not `N/s` or `N/s,burst` with N > 0 (or `off`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate {0:?} must be like 20/s or 20/s,100 (requests per second, burst), or off")]
pub struct InvalidRate(pub String);

/// A limit as configured: `off`, `20/s` (burst = twice the rate) or `20/s,100`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSetting(pub Option<Rate>);

impl FromStr for RateSetting {
    type Err = InvalidRate;
    fn from_str(s: &str) -> Result<Self, InvalidRate> {
        let invalid = || InvalidRate(s.to_owned());
        let text = s.trim();
        if text == "off" || text == "0" {
            return Ok(RateSetting(None));
        }
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let per_second: f64 = rate
            .trim()
            .strip_suffix("/s")
            .ok_or_else(invalid)?
            .trim()
            .parse()
            .map_err(|_| invalid())?;
        let burst: f64 = match burst {
            Some(b) => b.trim().parse().map_err(|_| invalid())?,
            None => (per_second * 2.0).max(1.0),
        };
        let finite = per_second.is_finite() && burst.is_finite();
        if !finite || per_second <= 0.0 || burst < 1.0 {
            return Err(invalid());
        }
        Ok(RateSetting(Some(Rate { per_second, burst })))
    }
}

/// One key's bucket: tokens left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now`, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        }
    }

    /// Whether the bucket has refilled completely by `now` (then forgetting it changes nothing).
    fn full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

/// The buckets of one kind of key.
#[derive(Debug)]
pub struct Limiter {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// A limiter with this rate; `None` lets everything through.
    pub fn new(rate: Option<Rate>) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Counts one request of `key` at `now`: `Err(wait)` if it is over the limit.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, bucket| !bucket.full(rate, now));
            // Still full (many keys, all busy: a flood of new addresses): forget a tenth,
            // which at worst gives those keys their burst again, rather than grow.
            if buckets.len() >= MAX_KEYS {
                let forget: Vec<String> = buckets.keys().take(MAX_KEYS / 10).cloned().collect();
                for k in forget {
                    buckets.remove(&k);
                }
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        bucket.take(rate, now)
    }
}

/// Whole seconds to put in `Retry-After` for `wait`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// Middleware: a read not answered within the configured time gets 408 (the live event
/// stream is routed outside it). Writes are not cut short: one dropped half-way through an
/// append may still be stored, and a client told to retry would then pay twice; their own
/// waits are bounded instead (the write wait, the store's publish timeout).
pub async fn deadline(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let read = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !read {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => crate::error::ApiError::request_timeout(state.request_timeout).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = Limiter::new(Some(rate(10.0, 5.0)));
        let start = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check("a", start).is_ok());
        }
        let wait = limiter.check("a", start).expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Others are not affected.
        assert!(limiter.check("b", start).is_ok());
        // One token comes back every 100 ms.
        assert!(limiter
            .check("a", start + Duration::from_millis(100))
            .is_ok());
        assert!(limiter
            .check("a", start + Duration::from_millis(100))
            .is_err());
        // A quiet spell refills the burst, never more.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check("a", later).is_ok());
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn no_rate_lets_everything_through() {
        let limiter = Limiter::new(None);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.check("a", now).is_ok()));
    }

    #[test]
    fn settings_parse_and_bad_ones_are_refused() {
        assert_eq!("off".parse::<RateSetting>(), Ok(RateSetting(None)));
        assert_eq!(
            "20/s".parse::<RateSetting>(),
            Ok(RateSetting(Some(rate(20.0, 40.0))))
        );
        assert_eq!(
            "0.5/s, 3".parse::<RateSetting>(),
            Ok(RateSetting(Some(rate(0.5, 3.0))))
        );
        for bad in ["", "20", "-1/s", "0/s", "x/s", "20/s,0", "NaN/s", "inf/s"] {
            assert!(bad.parse::<RateSetting>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
