//! Agent reputation: a success rate, smoothed by a prior, that sets an agent's price multiplier.
//!
//! Rates are integer basis points (10_000 = 100%), so tier boundaries are exact and no float
//! rounding can move an agent across a tier.

use serde::{Deserialize, Serialize};

use crate::domain::pricing::MultiplierMilli;

/// The highest possible success rate, in basis points (100%).
pub const MAX_RATE_BP: u32 = 10_000;

/// How many outcomes an agent's prior rate is worth, as if they had already been seen.
///
/// Without a prior, an agent's first failure would take it from 100% to 0% and its price from
/// 2.0x to 0.5x. Counting the prior as 20 outcomes means one early failure moves a 95% seed
/// agent only to 19/21 (about 90.5%), one tier down, and it takes a sustained record to move
/// the price a long way.
pub const PRIOR_WEIGHT: u32 = 20;

/// A newly registered agent's prior rate: 60%, the tier that charges the base price (1.0x).
pub const NEWCOMER_PRIOR_RATE_BP: u32 = 6000;

/// The agents the marketplace starts with and their prior success rates in basis points.
pub const SEED_AGENTS: [(&str, u32); 3] = [("agent-1", 9500), ("agent-2", 9000), ("agent-3", 7000)];

/// The price multiplier for a success rate given in basis points.
pub fn multiplier_for_rate_bp(rate_bp: u32) -> MultiplierMilli {
    let milli = if rate_bp >= 9500 {
        2000
    } else if rate_bp >= 9000 {
        1800
    } else if rate_bp >= 8000 {
        1500
    } else if rate_bp >= 7000 {
        1200
    } else if rate_bp >= 6000 {
        1000
    } else {
        500
    };
    MultiplierMilli(milli)
}

/// Why a reputation cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReputationError {
    /// The prior rate is above 100%.
    #[error("prior success rate must be at most {MAX_RATE_BP} basis points, got {rate_bp}")]
    RateOutOfRange {
        /// The rejected rate, in basis points.
        rate_bp: u32,
    },
}

/// An agent's track record: a prior rate worth `prior_weight` outcomes, plus what it has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// The rate assumed before any outcome is seen, in basis points.
    pub prior_rate_bp: u32,
    /// How many outcomes the prior rate counts as.
    pub prior_weight: u32,
    /// Tasks completed successfully.
    pub successes: u64,
    /// Tasks failed.
    pub failures: u64,
}

impl Reputation {
    /// A reputation with no outcomes yet; fails if `prior_rate_bp` is above 10_000.
    pub fn new(prior_rate_bp: u32, prior_weight: u32) -> Result<Self, ReputationError> {
        if prior_rate_bp > MAX_RATE_BP {
            return Err(ReputationError::RateOutOfRange {
                rate_bp: prior_rate_bp,
            });
        }
        Ok(Self {
            prior_rate_bp,
            prior_weight,
            successes: 0,
            failures: 0,
        })
    }

    /// A seed agent's reputation: its known rate, weighted by [`PRIOR_WEIGHT`].
    pub fn seeded(prior_rate_bp: u32) -> Result<Self, ReputationError> {
        Self::new(prior_rate_bp, PRIOR_WEIGHT)
    }

    /// A newly registered agent's reputation, which starts at the base price.
    pub fn newcomer() -> Self {
        Self {
            prior_rate_bp: NEWCOMER_PRIOR_RATE_BP,
            prior_weight: PRIOR_WEIGHT,
            successes: 0,
            failures: 0,
        }
    }

    /// This reputation with one more outcome counted.
    #[must_use]
    pub fn record(self, success: bool) -> Self {
        // Saturating: 2^64 outcomes will not happen, and stopping the count is better
        // than wrapping around to zero or panicking while replaying events.
        if success {
            Self {
                successes: self.successes.saturating_add(1),
                ..self
            }
        } else {
            Self {
                failures: self.failures.saturating_add(1),
                ..self
            }
        }
    }

    /// How many outcomes have been recorded (not counting the prior).
    pub fn outcomes(&self) -> u64 {
        self.successes.saturating_add(self.failures)
    }

    /// The smoothed success rate in basis points, rounded down.
    pub fn rate_bp(&self) -> u32 {
        // u128 holds every term exactly: at most 10_000 * 2^64 plus 2^32 * 2^32.
        let max = u128::from(MAX_RATE_BP);
        let numerator = u128::from(self.prior_rate_bp) * u128::from(self.prior_weight)
            + max * u128::from(self.successes);
        let denominator =
            u128::from(self.prior_weight) + u128::from(self.successes) + u128::from(self.failures);
        // A zero denominator means no prior weight and no outcomes: nothing but the prior.
        let rate = numerator
            .checked_div(denominator)
            .unwrap_or(u128::from(self.prior_rate_bp));
        // The fields are public and come back from stored events, so a record made without
        // `new` could hold a prior above 100%; capping keeps the result a valid rate.
        let capped = rate.min(max);
        // Lossless: `capped` is at most 10_000.
        capped as u32
    }

    /// The price multiplier this reputation earns.
    pub fn multiplier(&self) -> MultiplierMilli {
        // Rounding the rate down cannot drop an agent a tier: the tier thresholds are whole
        // basis points, and for an integer t, floor(x) >= t exactly when x >= t.
        multiplier_for_rate_bp(self.rate_bp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeded(rate_bp: u32) -> Reputation {
        Reputation::seeded(rate_bp).expect("seed rates are valid")
    }

    #[test]
    fn tiers_have_exact_boundaries() {
        let cases = [
            (10_000, 2000),
            (9500, 2000),
            (9499, 1800),
            (9000, 1800),
            (8999, 1500),
            (8000, 1500),
            (7999, 1200),
            (7000, 1200),
            (6999, 1000),
            (6000, 1000),
            (5999, 500),
            (0, 500),
        ];
        for (rate_bp, milli) in cases {
            assert_eq!(
                multiplier_for_rate_bp(rate_bp),
                MultiplierMilli(milli),
                "{rate_bp}"
            );
        }
    }

    #[test]
    fn seed_agents_get_their_prototype_multipliers() {
        let expected = [("agent-1", 2000), ("agent-2", 1800), ("agent-3", 1200)];
        for ((name, rate_bp), (expected_name, milli)) in SEED_AGENTS.into_iter().zip(expected) {
            assert_eq!(name, expected_name);
            let rep = seeded(rate_bp);
            assert_eq!(rep.rate_bp(), rate_bp, "{name}");
            assert_eq!(rep.multiplier(), MultiplierMilli(milli), "{name}");
        }
    }

    #[test]
    fn one_early_failure_drops_a_top_agent_one_tier_only() {
        // 19 of 20 prior successes, then a failure: 19/21 is about 90.48%.
        let rep = seeded(9500).record(false);
        assert_eq!(rep.outcomes(), 1);
        assert_eq!(rep.rate_bp(), 9047);
        assert_eq!(rep.multiplier(), MultiplierMilli(1800));
    }

    #[test]
    fn newcomer_pays_the_base_price() {
        let rep = Reputation::newcomer();
        assert_eq!(rep.rate_bp(), NEWCOMER_PRIOR_RATE_BP);
        assert_eq!(rep.multiplier(), MultiplierMilli::ONE);
    }

    #[test]
    fn a_rate_above_one_hundred_percent_is_rejected() {
        let err = ReputationError::RateOutOfRange { rate_bp: 10_001 };
        assert_eq!(Reputation::new(10_001, PRIOR_WEIGHT), Err(err));
        assert_eq!(Reputation::seeded(10_001), Err(err));
        assert!(err.to_string().contains("10001"), "{err}");
        assert!(Reputation::new(MAX_RATE_BP, PRIOR_WEIGHT).is_ok());
    }

    #[test]
    fn with_no_prior_and_no_outcomes_the_rate_is_the_prior() {
        let rep = Reputation::new(7300, 0).expect("valid rate");
        assert_eq!(rep.rate_bp(), 7300);
        assert_eq!(rep.record(false).rate_bp(), 0);
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let rep = Reputation {
            successes: u64::MAX,
            failures: u64::MAX,
            ..Reputation::newcomer()
        };
        assert_eq!(rep.record(true), rep);
        assert_eq!(rep.record(false), rep);
        assert_eq!(rep.outcomes(), u64::MAX);
    }

    #[test]
    fn round_trips_through_json() {
        let rep = seeded(9000).record(true).record(false);
        let json = serde_json::to_string(&rep).expect("serializes");
        let back: Reputation = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, rep);
    }

    fn any_valid_reputation() -> impl Strategy<Value = Reputation> {
        (0..=MAX_RATE_BP, any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(prior_rate_bp, prior_weight, successes, failures)| Reputation {
                prior_rate_bp,
                prior_weight,
                successes,
                failures,
            },
        )
    }

    proptest! {
        #[test]
        fn rate_is_always_a_valid_rate(
            prior_rate_bp in any::<u32>(),
            prior_weight in any::<u32>(),
            successes in any::<u64>(),
            failures in any::<u64>(),
        ) {
            let rep = Reputation { prior_rate_bp, prior_weight, successes, failures };
            prop_assert!(rep.rate_bp() <= MAX_RATE_BP);
        }

        #[test]
        fn a_success_never_lowers_and_a_failure_never_raises_the_price(
            rep in any_valid_reputation(),
        ) {
            let before = rep.multiplier();
            prop_assert!(rep.record(true).multiplier() >= before);
            prop_assert!(rep.record(false).multiplier() <= before);
            prop_assert!(rep.record(true).rate_bp() >= rep.rate_bp());
            prop_assert!(rep.record(false).rate_bp() <= rep.rate_bp());
        }

        #[test]
        fn enough_successes_reach_the_top_tier(
            prior_rate_bp in 0..=MAX_RATE_BP,
            prior_weight in 0u32..=100,
            failures in 0u64..=100,
        ) {
            let mut rep = Reputation::new(prior_rate_bp, prior_weight).expect("valid rate");
            for _ in 0..failures {
                rep = rep.record(false);
            }
            // With 19 successes for every earlier outcome, even a 0% history averages to
            // 19/20 = 95%; at least one success covers an agent with no history at all.
            let needed = (19 * (u64::from(prior_weight) + failures)).max(1);
            for _ in 0..needed {
                rep = rep.record(true);
            }
            prop_assert_eq!(rep.multiplier(), MultiplierMilli(2000));
        }
    }
}
