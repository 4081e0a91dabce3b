//! Task pricing in integer satoshis: `100_000 * complexity * multiplier_milli / 1000`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The price of a complexity-1 task at a 1.000x multiplier.
pub const BASE_PRICE_SATS: u64 = 100_000;

/// A task's complexity, 1 to 10 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Complexity(u8);

/// A complexity outside 1..=10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("complexity must be between 1 and 10, got {0}")]
pub struct InvalidComplexity(pub i64);

impl Complexity {
    /// Smallest complexity.
    pub const MIN: u8 = 1;
    /// Largest complexity.
    pub const MAX: u8 = 10;

    /// Checks that `value` is in 1..=10. Takes an `i64` so that callers can pass what a
    /// client sent (say -3 or 300) and get the same clear error.
    pub fn new(value: i64) -> Result<Self, InvalidComplexity> {
        if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
            // The range check above makes the narrowing cast lossless.
            Ok(Self(value as u8))
        } else {
            Err(InvalidComplexity(value))
        }
    }

    /// The complexity as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Complexity {
    type Error = InvalidComplexity;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(i64::from(value))
    }
}

impl From<Complexity> for u8 {
    fn from(c: Complexity) -> u8 {
        c.0
    }
}

impl fmt::Display for Complexity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reputation multiplier in thousandths: 2000 is 2.0x. Never a float, so prices are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MultiplierMilli(pub u32);

impl MultiplierMilli {
    /// 1.0x: the base price.
    pub const ONE: Self = Self(1000);

    /// The multiplier in thousandths.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for MultiplierMilli {
    /// Shown as `2.00x`, like the prototype.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}x", self.0 / 1000, (self.0 % 1000) / 10)
    }
}

/// The price in satoshis of a task of `complexity` done by an agent at `multiplier`.
///
/// Rounds down to a whole satoshi. Cannot overflow: the largest input gives
/// `100_000 * 10 * u32::MAX`, about 4.3e15, far below `u64::MAX`.
pub fn price_sats(complexity: Complexity, multiplier: MultiplierMilli) -> u64 {
    BASE_PRICE_SATS * u64::from(complexity.get()) * u64::from(multiplier.get()) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(v: i64) -> Complexity {
        Complexity::new(v).expect("valid complexity")
    }

    #[test]
    fn prices_match_the_prototype_examples() {
        assert_eq!(price_sats(c(1), MultiplierMilli(2000)), 200_000);
        assert_eq!(price_sats(c(2), MultiplierMilli(2000)), 400_000);
        assert_eq!(price_sats(c(1), MultiplierMilli(1200)), 120_000);
        assert_eq!(price_sats(c(10), MultiplierMilli(500)), 500_000);
    }

    #[test]
    fn complexity_is_checked() {
        assert_eq!(Complexity::new(0), Err(InvalidComplexity(0)));
        assert_eq!(Complexity::new(11), Err(InvalidComplexity(11)));
        assert_eq!(Complexity::new(-3), Err(InvalidComplexity(-3)));
        assert_eq!(c(10).get(), 10);
        assert!(serde_json::from_str::<Complexity>("11").is_err());
        assert_eq!(serde_json::from_str::<Complexity>("7").ok(), Some(c(7)));
    }

    #[test]
    fn multiplier_displays_like_the_prototype() {
        assert_eq!(MultiplierMilli(2000).to_string(), "2.00x");
        assert_eq!(MultiplierMilli(1800).to_string(), "1.80x");
        assert_eq!(MultiplierMilli(500).to_string(), "0.50x");
    }

    proptest! {
        #[test]
        fn price_is_monotonic_in_complexity_and_multiplier(
            c1 in 1i64..=10, c2 in 1i64..=10, m1 in 0u32..=1_000_000, m2 in 0u32..=1_000_000,
        ) {
            let (lo_c, hi_c) = (c1.min(c2), c1.max(c2));
            let (lo_m, hi_m) = (m1.min(m2), m1.max(m2));
            let m = MultiplierMilli(lo_m);
            prop_assert!(price_sats(c(lo_c), m) <= price_sats(c(hi_c), m));
            let cx = c(lo_c);
            prop_assert!(price_sats(cx, MultiplierMilli(lo_m)) <= price_sats(cx, MultiplierMilli(hi_m)));
        }

        #[test]
        fn price_is_exact_integer_arithmetic(cx in 1i64..=10, m in 0u32..=u32::MAX) {
            let expected = (100_000u128 * cx as u128 * m as u128 / 1000) as u64;
            prop_assert_eq!(price_sats(c(cx), MultiplierMilli(m)), expected);
        }
    }
}
