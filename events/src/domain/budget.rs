//! A buyer's prepaid balance and spending limits, in integer satoshis.
//!
//! A buyer with a budget spends from what it has deposited: each task's price is
//! committed before the task is stored, and comes back if the task is refunded (or never
//! stored). A commitment is refused, with the limit it would break and by how much, if it
//! would take the balance below zero, the day's spending over the daily limit, or all
//! spending over the total limit. Spending here is net: a refunded task spent nothing.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// How much a buyer may spend, beyond what it has deposited; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Most the buyer may commit in one UTC day.
    pub daily_sats: Option<u64>,
    /// Most the buyer may commit in all.
    pub total_sats: Option<u64>,
}

/// The limit a commitment would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The balance: deposits less what is committed.
    Balance,
    /// The daily spending limit.
    Daily,
    /// The total spending limit.
    Total,
}

impl Limit {
    /// The error code an API answers with when this limit refuses a task.
    pub fn code(self) -> &'static str {
        match self {
            Limit::Balance => "insufficient_balance",
            Limit::Daily => "over_daily_limit",
            Limit::Total => "over_total_limit",
        }
    }
}

impl fmt::Display for Limit {
    /// `balance`, `daily limit` or `total limit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Balance => "balance",
            Limit::Daily => "daily limit",
            Limit::Total => "total limit",
        })
    }
}

/// Why a commitment was refused: which limit, what it leaves, and by how much it is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the task costs {needed_sats} sat but the {limit} leaves {available_sats} sat: short by {short_by_sats} sat")]
pub struct Shortfall {
    /// The limit that refuses.
    pub limit: Limit,
    /// What the commitment needs.
    pub needed_sats: u64,
    /// What the limit still allows.
    pub available_sats: u64,
    /// `needed_sats - available_sats`.
    pub short_by_sats: u64,
}

/// A buyer's budget: what it deposited, what it has committed, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Everything deposited.
    pub deposited_sats: u64,
    /// Committed to tasks and not given back: the net spending of all time.
    pub committed_sats: u64,
    /// The day `committed_today_sats` counts, the day of the latest commitment.
    pub day: Option<NaiveDate>,
    /// Net spending of the commitments made on `day`.
    pub committed_today_sats: u64,
    /// The spending limits.
    pub limits: Limits,
}

impl Budget {
    /// What is left to spend: deposits less commitments (never below zero).
    pub fn balance_sats(&self) -> u64 {
        self.deposited_sats.saturating_sub(self.committed_sats)
    }

    /// Net spending on `today`.
    pub fn spent_on(&self, today: NaiveDate) -> u64 {
        if self.day == Some(today) {
            self.committed_today_sats
        } else {
            0
        }
    }

    /// What each limit still allows on `today`, tightest last: the balance, then the daily
    /// and total limits if set.
    pub fn headroom(&self, today: NaiveDate) -> Vec<(Limit, u64)> {
        let mut room = vec![(Limit::Balance, self.balance_sats())];
        if let Some(daily) = self.limits.daily_sats {
            room.push((Limit::Daily, daily.saturating_sub(self.spent_on(today))));
        }
        if let Some(total) = self.limits.total_sats {
            room.push((Limit::Total, total.saturating_sub(self.committed_sats)));
        }
        room
    }

    /// The most a task may cost on `today`: the least every limit allows.
    pub fn available_sats(&self, today: NaiveDate) -> u64 {
        self.headroom(today)
            .into_iter()
            .map(|(_, room)| room)
            .min()
            .unwrap_or(0)
    }

    /// Whether `amount_sats` may be committed on `today`; the first limit it breaks if not.
    pub fn check(&self, amount_sats: u64, today: NaiveDate) -> Result<(), Shortfall> {
        match self
            .headroom(today)
            .into_iter()
            .find(|(_, room)| *room < amount_sats)
        {
            None => Ok(()),
            Some((limit, room)) => Err(Shortfall {
                limit,
                needed_sats: amount_sats,
                available_sats: room,
                short_by_sats: amount_sats - room,
            }),
        }
    }

    /// Commits `amount_sats` on `day`, if every limit allows it.
    pub fn commit(&mut self, amount_sats: u64, day: NaiveDate) -> Result<(), Shortfall> {
        self.check(amount_sats, day)?;
        self.record_commit(amount_sats, day);
        Ok(())
    }

    /// Records a commitment whatever the limits say: the projection books what the stream
    /// holds (and reports a commitment [`Budget::check`] refuses as an invariant failure).
    pub fn record_commit(&mut self, amount_sats: u64, day: NaiveDate) {
        self.committed_sats = self.committed_sats.saturating_add(amount_sats);
        match self.day {
            Some(current) if current > day => {}
            Some(current) if current == day => {
                self.committed_today_sats = self.committed_today_sats.saturating_add(amount_sats)
            }
            _ => {
                self.day = Some(day);
                self.committed_today_sats = amount_sats;
            }
        }
    }

    /// Gives back `amount_sats` committed on `day`: the task was refunded or never stored.
    pub fn give_back(&mut self, amount_sats: u64, day: NaiveDate) {
        self.committed_sats = self.committed_sats.saturating_sub(amount_sats);
        if self.day == Some(day) {
            self.committed_today_sats = self.committed_today_sats.saturating_sub(amount_sats);
        }
    }

    /// Adds a deposit; `None` if the total would overflow.
    pub fn deposit(&mut self, amount_sats: u64) -> Option<()> {
        self.deposited_sats = self.deposited_sats.checked_add(amount_sats)?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, n).expect("a valid day")
    }

    fn funded(deposit: u64, limits: Limits) -> Budget {
        let mut budget = Budget {
            limits,
            ..Budget::default()
        };
        budget.deposit(deposit).expect("no overflow");
        budget
    }

    #[test]
    fn a_task_spends_from_the_balance_and_a_refund_gives_it_back() {
        let mut b = funded(500_000, Limits::default());
        b.commit(300_000, day(1)).expect("affordable");
        assert_eq!(b.balance_sats(), 200_000);
        assert_eq!(
            b.commit(300_000, day(1)),
            Err(Shortfall {
                limit: Limit::Balance,
                needed_sats: 300_000,
                available_sats: 200_000,
                short_by_sats: 100_000,
            })
        );
        b.give_back(300_000, day(1));
        assert_eq!(b.balance_sats(), 500_000);
        assert_eq!(b.spent_on(day(1)), 0);
    }

    #[test]
    fn the_daily_limit_starts_again_each_day() {
        let limits = Limits {
            daily_sats: Some(250_000),
            total_sats: None,
        };
        let mut b = funded(1_000_000, limits);
        b.commit(200_000, day(1)).expect("within the day");
        let refused = b.commit(100_000, day(1)).expect_err("over the day");
        assert_eq!(refused.limit, Limit::Daily);
        assert_eq!(refused.available_sats, 50_000);
        assert_eq!(refused.short_by_sats, 50_000);
        b.commit(200_000, day(2)).expect("a new day");
        assert_eq!(b.spent_on(day(2)), 200_000);
        // A refund of yesterday's task gives the balance back, not today's spending.
        b.give_back(200_000, day(1));
        assert_eq!(b.spent_on(day(2)), 200_000);
        assert_eq!(b.balance_sats(), 800_000);
    }

    #[test]
    fn the_total_limit_caps_all_spending() {
        let limits = Limits {
            daily_sats: None,
            total_sats: Some(300_000),
        };
        let mut b = funded(1_000_000, limits);
        b.commit(200_000, day(1)).expect("within the total");
        let refused = b.commit(200_000, day(2)).expect_err("over the total");
        assert_eq!(refused.limit, Limit::Total);
        assert_eq!(refused.short_by_sats, 100_000);
        assert_eq!(b.available_sats(day(2)), 100_000);
    }

    #[test]
    fn the_balance_is_reported_before_the_limits() {
        let limits = Limits {
            daily_sats: Some(10),
            total_sats: Some(10),
        };
        let refused = funded(5, limits).check(20, day(1)).expect_err("short");
        assert_eq!(refused.limit, Limit::Balance);
        assert_eq!(refused.limit.code(), "insufficient_balance");
    }

    #[test]
    fn a_deposit_that_would_overflow_is_refused() {
        let mut b = funded(u64::MAX, Limits::default());
        assert_eq!(b.deposit(1), None);
        assert_eq!(b.deposited_sats, u64::MAX);
    }

    proptest! {
        /// Whatever is attempted, what `commit` accepts never overdraws the balance nor
        /// passes a limit, and giving everything back restores the deposits.
        #[test]
        fn commitments_never_break_a_limit(
            deposit in 0u64..2_000_000,
            daily in proptest::option::of(0u64..1_000_000),
            total in proptest::option::of(0u64..2_000_000),
            attempts in proptest::collection::vec((1u64..400_000, 1u32..4, any::<bool>()), 0..40),
        ) {
            let mut b = funded(deposit, Limits { daily_sats: daily, total_sats: total });
            let mut kept = Vec::new();
            let mut today = day(1);
            for (amount, d, refund) in attempts {
                today = today.max(day(d));
                if b.commit(amount, today).is_ok() {
                    if refund {
                        b.give_back(amount, today);
                    } else {
                        kept.push((amount, today));
                    }
                }
                prop_assert!(b.committed_sats <= b.deposited_sats);
                if let Some(total) = total {
                    prop_assert!(b.committed_sats <= total);
                }
                if let Some(daily) = daily {
                    prop_assert!(b.spent_on(today) <= daily);
                }
                prop_assert_eq!(b.committed_sats, kept.iter().map(|(a, _)| a).sum::<u64>());
            }
            for (amount, d) in kept {
                b.give_back(amount, d);
            }
            prop_assert_eq!(b.balance_sats(), deposit);
        }
    }
}
