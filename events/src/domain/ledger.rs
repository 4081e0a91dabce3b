//! A double-entry ledger in integer satoshis: a buyer's payment is held in escrow while its
//! task runs, then released to the agent or refunded to the buyer, exactly once.
//!
//! Every movement is a [`Transfer`] from one account to another, so the balances of all
//! accounts always sum to zero. A buyer's balance goes negative by what it has spent.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::id::{AgentId, BuyerId, TaskId};

/// An account money can be held in; written as `buyer:<id>`, `escrow` or `agent:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Account {
    /// What a buyer has paid in (negative) or been refunded.
    Buyer(BuyerId),
    /// Money held for tasks that are not settled yet.
    Escrow,
    /// What an agent has been paid.
    Agent(AgentId),
}

impl fmt::Display for Account {
    /// Shown as `buyer:<id>`, `escrow` or `agent:<id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Buyer(id) => write!(f, "buyer:{id}"),
            Self::Escrow => f.write_str("escrow"),
            Self::Agent(id) => write!(f, "agent:{id}"),
        }
    }
}

/// A string that is not `escrow`, `buyer:<id>` or `agent:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("account {0:?} must be escrow, buyer:<id> or agent:<id>")]
pub struct InvalidAccount(pub String);

impl std::str::FromStr for Account {
    type Err = InvalidAccount;
    fn from_str(s: &str) -> Result<Self, InvalidAccount> {
        let invalid = || InvalidAccount(s.to_owned());
        match s.split_once(':') {
            None if s == "escrow" => Ok(Account::Escrow),
            Some(("buyer", id)) => id.parse().map(Account::Buyer).map_err(|_| invalid()),
            Some(("agent", id)) => id.parse().map(Account::Agent).map_err(|_| invalid()),
            _ => Err(invalid()),
        }
    }
}

impl TryFrom<String> for Account {
    type Error = InvalidAccount;
    fn try_from(s: String) -> Result<Self, InvalidAccount> {
        s.parse()
    }
}

impl From<Account> for String {
    fn from(account: Account) -> String {
        account.to_string()
    }
}

/// One movement of money for a task, as booked by the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// The task the money moved for.
    pub task_id: TaskId,
    /// The account debited.
    pub from: Account,
    /// The account credited.
    pub to: Account,
    /// How much moved, in satoshis.
    pub amount_sats: u64,
}

/// Where a task's escrowed payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EscrowState {
    /// In escrow, waiting for the task to finish.
    Held,
    /// Paid out to the agent.
    Released,
    /// Paid back to the buyer.
    Refunded,
}

impl fmt::Display for EscrowState {
    /// Shown as `held`, `released` or `refunded`, matching the serialized form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Held => "held",
            Self::Released => "released",
            Self::Refunded => "refunded",
        })
    }
}

/// The escrow record of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    /// Who paid.
    pub buyer_id: BuyerId,
    /// Who is paid on release.
    pub agent_id: AgentId,
    /// How much is (or was) held, in satoshis.
    pub amount_sats: u64,
    /// Whether the money is still held, released or refunded.
    pub state: EscrowState,
}

/// Why the ledger refused an operation. The ledger is unchanged after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The task already has an escrow.
    #[error("task {task_id} already has money in escrow")]
    AlreadyHeld {
        /// The task.
        task_id: TaskId,
    },
    /// The task has no escrow.
    #[error("task {task_id} has no escrow")]
    UnknownTask {
        /// The task.
        task_id: TaskId,
    },
    /// The task's escrow was already released or refunded; no task is paid twice.
    #[error("task {task_id} is already settled: its escrow was {state}")]
    AlreadySettled {
        /// The task.
        task_id: TaskId,
        /// How it was settled.
        state: EscrowState,
    },
    /// A hold of zero satoshis.
    #[error("task {task_id}: cannot hold 0 sat in escrow")]
    ZeroAmount {
        /// The task.
        task_id: TaskId,
    },
    /// A settlement event names another party or amount than the task's escrow holds.
    #[error("task {task_id}: {event} does not match the escrow ({detail})")]
    DoesNotMatchEscrow {
        /// The task.
        task_id: TaskId,
        /// The event type.
        event: &'static str,
        /// What differs.
        detail: String,
    },
    /// The amount does not fit an `i64`, or moving it would overflow a balance.
    #[error("task {task_id}: {amount_sats} sat is too large for the ledger")]
    AmountTooLarge {
        /// The task.
        task_id: TaskId,
        /// The amount that did not fit.
        amount_sats: u64,
    },
}

/// A broken ledger invariant: a bug, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// The balances do not sum to zero, so some transfer was booked on one side only.
    #[error("balances sum to {total} sat instead of 0")]
    Unbalanced {
        /// The sum of all balances.
        total: i128,
    },
    /// An account's balance disagrees with what the escrow records say it should be.
    #[error(
        "{account} has a balance of {balance} sat but its escrow records add up to {expected} sat"
    )]
    Mismatch {
        /// The account.
        account: Account,
        /// Its booked balance.
        balance: i128,
        /// The balance recomputed from the escrow records.
        expected: i128,
    },
}

/// Balances of every account touched so far, and the escrow record of every task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    balances: BTreeMap<Account, i64>,
    escrows: BTreeMap<TaskId, Escrow>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves `amount_sats` from the buyer into escrow for a new task.
    pub fn hold(
        &mut self,
        task_id: &TaskId,
        buyer_id: &BuyerId,
        agent_id: &AgentId,
        amount_sats: u64,
    ) -> Result<Transfer, LedgerError> {
        if amount_sats == 0 {
            return Err(LedgerError::ZeroAmount {
                task_id: task_id.clone(),
            });
        }
        if self.escrows.contains_key(task_id) {
            return Err(LedgerError::AlreadyHeld {
                task_id: task_id.clone(),
            });
        }
        let transfer = self.transfer(
            task_id,
            Account::Buyer(buyer_id.clone()),
            Account::Escrow,
            amount_sats,
        )?;
        self.escrows.insert(
            task_id.clone(),
            Escrow {
                buyer_id: buyer_id.clone(),
                agent_id: agent_id.clone(),
                amount_sats,
                state: EscrowState::Held,
            },
        );
        Ok(transfer)
    }

    /// Pays a task's escrowed money to its agent.
    pub fn release(&mut self, task_id: &TaskId) -> Result<Transfer, LedgerError> {
        let escrow = self.held_escrow(task_id)?;
        let to = Account::Agent(escrow.agent_id.clone());
        let amount_sats = escrow.amount_sats;
        let transfer = self.transfer(task_id, Account::Escrow, to, amount_sats)?;
        self.set_state(task_id, EscrowState::Released);
        Ok(transfer)
    }

    /// Pays a task's escrowed money back to its buyer.
    pub fn refund(&mut self, task_id: &TaskId) -> Result<Transfer, LedgerError> {
        let escrow = self.held_escrow(task_id)?;
        let to = Account::Buyer(escrow.buyer_id.clone());
        let amount_sats = escrow.amount_sats;
        let transfer = self.transfer(task_id, Account::Escrow, to, amount_sats)?;
        self.set_state(task_id, EscrowState::Refunded);
        Ok(transfer)
    }

    /// Books a payment event (`EscrowHeld`, `EscrowReleased`, `EscrowRefunded`); any other
    /// event changes nothing and gives `Ok(None)`. On error the ledger is unchanged.
    pub fn apply(&mut self, event: &Event) -> Result<Option<Transfer>, LedgerError> {
        match event {
            Event::EscrowHeld(e) => self
                .hold(&e.task_id, &e.buyer_id, &e.agent_id, e.amount_sats)
                .map(Some),
            Event::EscrowReleased(e) => {
                if let Some(escrow) = self.escrows.get(&e.task_id) {
                    check_settlement(
                        &e.task_id,
                        event.event_type(),
                        (Account::Agent(e.agent_id.clone()), e.amount_sats),
                        (Account::Agent(escrow.agent_id.clone()), escrow.amount_sats),
                    )?;
                }
                self.release(&e.task_id).map(Some)
            }
            Event::EscrowRefunded(e) => {
                if let Some(escrow) = self.escrows.get(&e.task_id) {
                    check_settlement(
                        &e.task_id,
                        event.event_type(),
                        (Account::Buyer(e.buyer_id.clone()), e.amount_sats),
                        (Account::Buyer(escrow.buyer_id.clone()), escrow.amount_sats),
                    )?;
                }
                self.refund(&e.task_id).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// An account's balance in satoshis; 0 if it was never touched.
    pub fn balance(&self, account: &Account) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// A task's escrow record, if it has one.
    pub fn escrow(&self, task_id: &TaskId) -> Option<&Escrow> {
        self.escrows.get(task_id)
    }

    /// Every account touched so far with its balance, in account order.
    pub fn balances(&self) -> impl Iterator<Item = (&Account, i64)> + '_ {
        self.balances
            .iter()
            .map(|(account, balance)| (account, *balance))
    }

    /// The total still held in escrow, in satoshis.
    pub fn open_escrow_sats(&self) -> u64 {
        // Cannot saturate: `hold` refuses amounts that would push the escrow balance, which
        // is this same sum, past i64::MAX.
        self.escrows
            .values()
            .filter(|escrow| escrow.state == EscrowState::Held)
            .fold(0u64, |total, escrow| {
                total.saturating_add(escrow.amount_sats)
            })
    }

    /// Recomputes every balance from the escrow records and compares it with the books.
    pub fn check(&self) -> Result<(), InvariantViolation> {
        let total: i128 = self.balances.values().map(|b| i128::from(*b)).sum();
        if total != 0 {
            return Err(InvariantViolation::Unbalanced { total });
        }

        let mut expected: BTreeMap<Account, i128> = BTreeMap::new();
        for escrow in self.escrows.values() {
            let amount = i128::from(escrow.amount_sats);
            let buyer = Account::Buyer(escrow.buyer_id.clone());
            match escrow.state {
                EscrowState::Held => {
                    *expected.entry(buyer).or_default() -= amount;
                    *expected.entry(Account::Escrow).or_default() += amount;
                }
                EscrowState::Released => {
                    *expected.entry(buyer).or_default() -= amount;
                    *expected
                        .entry(Account::Agent(escrow.agent_id.clone()))
                        .or_default() += amount;
                }
                // The money went out and came back, so the buyer is where it started.
                EscrowState::Refunded => {}
            }
        }

        // Compare over both key sets: an account with money but no records is as wrong as
        // records whose money is missing.
        let mut accounts: Vec<&Account> = self.balances.keys().chain(expected.keys()).collect();
        accounts.sort();
        accounts.dedup();
        for account in accounts {
            let balance = i128::from(self.balance(account));
            let expected = expected.get(account).copied().unwrap_or(0);
            if balance != expected {
                return Err(InvariantViolation::Mismatch {
                    account: account.clone(),
                    balance,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// The task's escrow, if its money is still held.
    fn held_escrow(&self, task_id: &TaskId) -> Result<&Escrow, LedgerError> {
        let Some(escrow) = self.escrows.get(task_id) else {
            return Err(LedgerError::UnknownTask {
                task_id: task_id.clone(),
            });
        };
        if escrow.state != EscrowState::Held {
            return Err(LedgerError::AlreadySettled {
                task_id: task_id.clone(),
                state: escrow.state,
            });
        }
        Ok(escrow)
    }

    /// Records how a task's escrow was settled; only called after `held_escrow` found it.
    fn set_state(&mut self, task_id: &TaskId, state: EscrowState) {
        if let Some(escrow) = self.escrows.get_mut(task_id) {
            escrow.state = state;
        }
    }

    /// Books one transfer. Both new balances are computed before either is written, so an
    /// error leaves the ledger unchanged.
    fn transfer(
        &mut self,
        task_id: &TaskId,
        from: Account,
        to: Account,
        amount_sats: u64,
    ) -> Result<Transfer, LedgerError> {
        let too_large = || LedgerError::AmountTooLarge {
            task_id: task_id.clone(),
            amount_sats,
        };
        let amount = i64::try_from(amount_sats).map_err(|_| too_large())?;
        let from_balance = self
            .balance(&from)
            .checked_sub(amount)
            .ok_or_else(too_large)?;
        let to_balance = self
            .balance(&to)
            .checked_add(amount)
            .ok_or_else(too_large)?;
        self.balances.insert(from.clone(), from_balance);
        self.balances.insert(to.clone(), to_balance);
        Ok(Transfer {
            task_id: task_id.clone(),
            from,
            to,
            amount_sats,
        })
    }
}

/// A settlement event must pay the escrow's own party its own amount (`paid` against
/// `owed`, each an account and satoshis); anything else means the history is corrupt, and
/// booking it would hide that.
fn check_settlement(
    task_id: &TaskId,
    event: &'static str,
    paid: (Account, u64),
    owed: (Account, u64),
) -> Result<(), LedgerError> {
    let detail = if paid.0 != owed.0 {
        format!("pays {}, escrow is for {}", paid.0, owed.0)
    } else if paid.1 != owed.1 {
        format!("{} sat, escrow holds {} sat", paid.1, owed.1)
    } else {
        return Ok(());
    };
    Err(LedgerError::DoesNotMatchEscrow {
        task_id: task_id.clone(),
        event,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_written_and_parsed_as_text() {
        for text in ["escrow", "buyer:b1", "agent:agent-1"] {
            let account: Account = text.parse().expect("valid account");
            assert_eq!(account.to_string(), text);
            assert_eq!(
                serde_json::to_string(&account).expect("serializes"),
                format!("\"{text}\"")
            );
        }
        for bad in ["bank", "buyer:", "agent:a.b", "escrow:x", ""] {
            assert!(bad.parse::<Account>().is_err(), "{bad}");
        }
    }

    mod events {
        use super::*;
        use crate::event::{EscrowHeld, EscrowRefunded, EscrowReleased};

        fn held(task: &str, amount_sats: u64) -> Event {
            Event::EscrowHeld(EscrowHeld {
                task_id: task.parse().expect("valid"),
                buyer_id: "b1".parse().expect("valid"),
                agent_id: "a1".parse().expect("valid"),
                amount_sats,
            })
        }

        fn released(task: &str, agent: &str, amount_sats: u64) -> Event {
            Event::EscrowReleased(EscrowReleased {
                task_id: task.parse().expect("valid"),
                agent_id: agent.parse().expect("valid"),
                amount_sats,
            })
        }

        fn refunded(task: &str, amount_sats: u64) -> Event {
            Event::EscrowRefunded(EscrowRefunded {
                task_id: task.parse().expect("valid"),
                buyer_id: "b1".parse().expect("valid"),
                amount_sats,
                reason: "failed".into(),
            })
        }

        #[test]
        fn payment_events_book_transfers() {
            let mut ledger = Ledger::new();
            ledger.apply(&held("t1", 400_000)).expect("hold");
            ledger.apply(&held("t2", 100_000)).expect("hold");
            ledger
                .apply(&released("t1", "a1", 400_000))
                .expect("release");
            ledger.apply(&refunded("t2", 100_000)).expect("refund");
            assert_eq!(
                ledger.balance(&Account::Agent("a1".parse().expect("valid"))),
                400_000
            );
            assert_eq!(
                ledger.balance(&Account::Buyer("b1".parse().expect("valid"))),
                -400_000
            );
            assert_eq!(ledger.balance(&Account::Escrow), 0);
            assert_eq!(ledger.check(), Ok(()));
            // A settlement replayed from the stream is refused, not paid twice.
            assert!(matches!(
                ledger.apply(&released("t1", "a1", 400_000)),
                Err(LedgerError::AlreadySettled { .. })
            ));
        }

        #[test]
        fn a_settlement_that_disagrees_with_its_escrow_is_refused() {
            let mut ledger = Ledger::new();
            ledger.apply(&held("t1", 400_000)).expect("hold");
            let before = ledger.clone();
            for bad in [
                released("t1", "a2", 400_000),
                released("t1", "a1", 1),
                refunded("t1", 5),
            ] {
                assert!(matches!(
                    ledger.apply(&bad),
                    Err(LedgerError::DoesNotMatchEscrow { .. })
                ));
                assert_eq!(ledger, before);
            }
        }

        #[test]
        fn other_events_change_nothing() {
            let mut ledger = Ledger::new();
            for envelope in crate::testing::sample_events() {
                if !envelope.event.event_type().starts_with("Escrow") {
                    assert_eq!(ledger.apply(&envelope.event), Ok(None));
                }
            }
            assert_eq!(ledger, Ledger::new());
        }
    }
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn task(id: &str) -> TaskId {
        TaskId::new(id).expect("valid task id")
    }

    fn buyer(id: &str) -> BuyerId {
        BuyerId::new(id).expect("valid buyer id")
    }

    fn agent(id: &str) -> AgentId {
        AgentId::new(id).expect("valid agent id")
    }

    fn held_ledger() -> Ledger {
        let mut ledger = Ledger::new();
        ledger
            .hold(&task("t1"), &buyer("b1"), &agent("a1"), 400_000)
            .expect("first hold succeeds");
        ledger
    }

    #[test]
    fn accounts_display_with_their_kind() {
        assert_eq!(
            Account::Buyer(buyer("buyer-001")).to_string(),
            "buyer:buyer-001"
        );
        assert_eq!(Account::Escrow.to_string(), "escrow");
        assert_eq!(
            Account::Agent(agent("agent-1")).to_string(),
            "agent:agent-1"
        );
    }

    #[test]
    fn escrow_state_serializes_in_kebab_case() {
        let json = serde_json::to_string(&EscrowState::Released).expect("serializes");
        assert_eq!(json, "\"released\"");
    }

    #[test]
    fn hold_then_release_pays_the_agent() {
        let mut ledger = Ledger::new();
        let (t1, b1, a1) = (task("t1"), buyer("b1"), agent("a1"));

        let held = ledger.hold(&t1, &b1, &a1, 400_000).expect("hold");
        assert_eq!(
            held,
            Transfer {
                task_id: t1.clone(),
                from: Account::Buyer(b1.clone()),
                to: Account::Escrow,
                amount_sats: 400_000,
            }
        );
        assert_eq!(ledger.balance(&Account::Buyer(b1.clone())), -400_000);
        assert_eq!(ledger.balance(&Account::Escrow), 400_000);
        assert_eq!(ledger.open_escrow_sats(), 400_000);
        ledger.check().expect("balanced after hold");

        let released = ledger.release(&t1).expect("release");
        assert_eq!(released.from, Account::Escrow);
        assert_eq!(released.to, Account::Agent(a1.clone()));
        assert_eq!(released.amount_sats, 400_000);
        assert_eq!(ledger.balance(&Account::Buyer(b1)), -400_000);
        assert_eq!(ledger.balance(&Account::Escrow), 0);
        assert_eq!(ledger.balance(&Account::Agent(a1)), 400_000);
        assert_eq!(ledger.open_escrow_sats(), 0);
        assert_eq!(
            ledger.escrow(&t1).map(|e| e.state),
            Some(EscrowState::Released)
        );
        ledger.check().expect("balanced after release");
    }

    #[test]
    fn hold_then_refund_returns_the_money() {
        let mut ledger = held_ledger();
        let refunded = ledger.refund(&task("t1")).expect("refund");
        assert_eq!(refunded.from, Account::Escrow);
        assert_eq!(refunded.to, Account::Buyer(buyer("b1")));
        assert_eq!(ledger.balance(&Account::Buyer(buyer("b1"))), 0);
        assert_eq!(ledger.balance(&Account::Escrow), 0);
        assert_eq!(ledger.balance(&Account::Agent(agent("a1"))), 0);
        assert_eq!(
            ledger.escrow(&task("t1")).map(|e| e.state),
            Some(EscrowState::Refunded)
        );
        ledger.check().expect("balanced after refund");
    }

    #[test]
    fn no_task_is_paid_twice() {
        let mut released = held_ledger();
        released.release(&task("t1")).expect("release");
        let mut refunded = held_ledger();
        refunded.refund(&task("t1")).expect("refund");

        for (mut ledger, state) in [
            (released, EscrowState::Released),
            (refunded, EscrowState::Refunded),
        ] {
            let before = ledger.clone();
            let expected = Err(LedgerError::AlreadySettled {
                task_id: task("t1"),
                state,
            });
            assert_eq!(ledger.release(&task("t1")), expected);
            assert_eq!(ledger.refund(&task("t1")), expected);
            assert_eq!(ledger, before);
        }
    }

    #[test]
    fn settling_an_unknown_task_is_an_error() {
        let mut ledger = held_ledger();
        let before = ledger.clone();
        let unknown = Err(LedgerError::UnknownTask {
            task_id: task("t2"),
        });
        assert_eq!(ledger.release(&task("t2")), unknown);
        assert_eq!(ledger.refund(&task("t2")), unknown);
        assert_eq!(ledger, before);
    }

    #[test]
    fn a_task_is_held_only_once() {
        let mut ledger = held_ledger();
        let before = ledger.clone();
        let result = ledger.hold(&task("t1"), &buyer("b2"), &agent("a2"), 1);
        assert_eq!(
            result,
            Err(LedgerError::AlreadyHeld {
                task_id: task("t1")
            })
        );
        assert_eq!(ledger, before);
    }

    #[test]
    fn zero_is_not_held() {
        let mut ledger = held_ledger();
        let before = ledger.clone();
        let result = ledger.hold(&task("t2"), &buyer("b1"), &agent("a1"), 0);
        assert_eq!(
            result,
            Err(LedgerError::ZeroAmount {
                task_id: task("t2")
            })
        );
        assert_eq!(ledger, before);
    }

    #[test]
    fn amounts_that_do_not_fit_are_refused() {
        let mut ledger = Ledger::new();
        let too_big = u64::MAX;
        assert_eq!(
            ledger.hold(&task("t1"), &buyer("b1"), &agent("a1"), too_big),
            Err(LedgerError::AmountTooLarge {
                task_id: task("t1"),
                amount_sats: too_big,
            })
        );
        assert_eq!(ledger, Ledger::new());

        let max = i64::MAX.unsigned_abs();
        ledger
            .hold(&task("t1"), &buyer("b1"), &agent("a1"), max)
            .expect("i64::MAX fits");
        let before = ledger.clone();
        // A different buyer, so it is the escrow balance that would overflow.
        assert_eq!(
            ledger.hold(&task("t2"), &buyer("b2"), &agent("a1"), 1),
            Err(LedgerError::AmountTooLarge {
                task_id: task("t2"),
                amount_sats: 1,
            })
        );
        assert_eq!(ledger, before);
        ledger.check().expect("still balanced");
    }

    #[test]
    fn errors_name_the_task() {
        let err = LedgerError::AlreadySettled {
            task_id: task("a1b2c3d4"),
            state: EscrowState::Refunded,
        };
        assert_eq!(
            err.to_string(),
            "task a1b2c3d4 is already settled: its escrow was refunded"
        );
    }

    #[test]
    fn check_reports_books_that_disagree_with_the_records() {
        let mut ledger = held_ledger();
        ledger.balances.insert(Account::Escrow, 1);
        assert_eq!(
            ledger.check(),
            Err(InvariantViolation::Unbalanced { total: -399_999 })
        );

        let mut ledger = held_ledger();
        // Balanced, but the money sits with the agent while the record says it is held.
        ledger.balances.insert(Account::Escrow, 0);
        ledger.balances.insert(Account::Agent(agent("a1")), 400_000);
        assert_eq!(
            ledger.check(),
            Err(InvariantViolation::Mismatch {
                account: Account::Escrow,
                balance: 0,
                expected: 400_000,
            })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hold {
            task: usize,
            buyer: usize,
            agent: usize,
            amount_sats: u64,
        },
        Release {
            task: usize,
        },
        Refund {
            task: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6usize, 0..3usize, 0..3usize, 1..=10_000_000u64).prop_map(
                |(task, buyer, agent, amount_sats)| Op::Hold {
                    task,
                    buyer,
                    agent,
                    amount_sats
                }
            ),
            (0..6usize).prop_map(|task| Op::Release { task }),
            (0..6usize).prop_map(|task| Op::Refund { task }),
        ]
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_books_straight(ops in prop::collection::vec(op(), 0..=60)) {
            let mut ledger = Ledger::new();
            let mut settled: BTreeSet<usize> = BTreeSet::new();
            for op in ops {
                let before = ledger.clone();
                let (task_index, result) = match &op {
                    Op::Hold { task: t, buyer: b, agent: a, amount_sats } => (
                        *t,
                        ledger.hold(
                            &task(&format!("t{t}")),
                            &buyer(&format!("b{b}")),
                            &agent(&format!("a{a}")),
                            *amount_sats,
                        ),
                    ),
                    Op::Release { task: t } => (*t, ledger.release(&task(&format!("t{t}")))),
                    Op::Refund { task: t } => (*t, ledger.refund(&task(&format!("t{t}")))),
                };

                // With small amounts nothing overflows, so the escrow state alone decides.
                let was_held = before
                    .escrow(&task(&format!("t{task_index}")))
                    .map(|e| e.state == EscrowState::Held);
                let should_succeed = match op {
                    Op::Hold { .. } => was_held.is_none(),
                    Op::Release { .. } | Op::Refund { .. } => was_held == Some(true),
                };
                prop_assert_eq!(result.is_ok(), should_succeed, "{:?} -> {:?}", op, result);

                match &result {
                    Ok(transfer) => {
                        let moved = i64::try_from(transfer.amount_sats).expect("small amount");
                        prop_assert_eq!(
                            ledger.balance(&transfer.from),
                            before.balance(&transfer.from) - moved
                        );
                        prop_assert_eq!(
                            ledger.balance(&transfer.to),
                            before.balance(&transfer.to) + moved
                        );
                        if !matches!(op, Op::Hold { .. }) {
                            prop_assert!(settled.insert(task_index), "task {} settled twice", task_index);
                        }
                    }
                    Err(_) => prop_assert_eq!(&ledger, &before),
                }

                prop_assert_eq!(ledger.check(), Ok(()));
                let total: i128 = ledger.balances().map(|(_, b)| i128::from(b)).sum();
                prop_assert_eq!(total, 0);
                prop_assert_eq!(
                    i128::from(ledger.open_escrow_sats()),
                    i128::from(ledger.balance(&Account::Escrow))
                );
            }
        }
    }
}
