//! The read models' records: what the API, the UI and the operators read.

use std::collections::BTreeSet;

use aicp_events::domain::access::Principal;
use aicp_events::domain::budget::Budget;
use aicp_events::domain::ledger::{Account, Escrow, EscrowState};
use aicp_events::domain::pricing::MultiplierMilli;
use aicp_events::domain::reputation::Reputation;
use aicp_events::domain::task::Task;
use aicp_events::event::{AgentMode, ExecutorSettings};
use aicp_events::id::{AgentId, BuyerId, TaskId, TokenId};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task folded from its events.
    pub task: Task,
    /// Stream sequence of its submission: orders tasks, newest first, and pages them.
    pub submitted_seq: u64,
    /// When it was submitted. Stored as nanoseconds (9 bytes, exact), not as text (31):
    /// timestamps were a fifth of a task's stored bytes.
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal status.
    #[serde(with = "chrono::serde::ts_nanoseconds_option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Where its money is, once escrow was held.
    pub payment: Option<EscrowState>,
    /// Stream sequence of the task's last payment message (0 if none): the expectation
    /// for the next append to its money.
    pub payment_sequence: u64,
    /// Whether the task's outcome has been recorded on its agent's reputation.
    pub outcome_recorded: bool,
    /// Stream sequence of the task's last message: the expectation for its next append.
    pub last_sequence: u64,
}

impl TaskView {
    /// A task's view as its submission, stored at `sequence`, creates it.
    pub fn submitted(
        e: &aicp_events::event::TaskSubmitted,
        sequence: u64,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            task: Task::submitted(e),
            submitted_seq: sequence,
            created_at: at,
            updated_at: at,
            finished_at: None,
            payment: None,
            payment_sequence: 0,
            outcome_recorded: false,
            last_sequence: sequence,
        }
    }

    /// Applies one of the task's own events after its submission, stored at `sequence`
    /// and occurred at `at`; the status before it. Nothing changes if the rules refuse it.
    pub fn change(
        &mut self,
        event: &aicp_events::event::Event,
        sequence: u64,
        at: DateTime<Utc>,
    ) -> Result<aicp_events::domain::task::TaskStatus, aicp_events::domain::task::TransitionError>
    {
        let before = self.task.status;
        self.task.apply(event)?;
        self.updated_at = at;
        self.last_sequence = sequence;
        if self.task.status.is_terminal() {
            self.finished_at = Some(at);
        }
        Ok(before)
    }

    /// The task's escrow, once its money was held: its price, from its buyer, for its agent
    /// (the projection refuses an escrow that does not match them, and neither changes
    /// after assignment). `None` before escrow, or for a view that lacks agent or price.
    pub fn escrow(&self) -> Option<Escrow> {
        Some(Escrow {
            buyer_id: self.task.buyer_id.clone(),
            agent_id: self.task.agent_id.clone()?,
            amount_sats: self.task.price_sats?,
            state: self.payment?,
        })
    }

    /// The view after the task events of one message stored at `sequence`, as the
    /// projection will store it: what a command that appended them answers with before
    /// the read model applies them. `None` if they make no task from `prior`.
    pub fn decided(
        prior: Option<TaskView>,
        events: &[aicp_events::Envelope],
        sequence: u64,
    ) -> Option<TaskView> {
        use aicp_events::event::Event;
        let mut view = prior;
        for envelope in events {
            match (&envelope.event, view.as_mut()) {
                (Event::TaskSubmitted(e), None) => {
                    view = Some(TaskView::submitted(e, sequence, envelope.occurred_at));
                }
                // The task's money and its agent's count, in the message of the step that
                // caused them: the projection books them through the ledger, to this end.
                (Event::EscrowHeld(_), Some(v)) => v.payment = Some(EscrowState::Held),
                (Event::EscrowReleased(_), Some(v)) => v.payment = Some(EscrowState::Released),
                (Event::EscrowRefunded(_), Some(v)) => v.payment = Some(EscrowState::Refunded),
                (Event::AgentOutcomeCounted(_), Some(v)) => v.outcome_recorded = true,
                (event, Some(v)) => {
                    v.change(event, sequence, envelope.occurred_at).ok()?;
                }
                (_, None) => return None,
            }
        }
        if let Some(v) = view.as_mut() {
            // The message is on the task's subject whatever it carries.
            v.last_sequence = sequence;
        }
        view
    }
}

/// An agent's profile and record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The agent.
    pub agent_id: AgentId,
    /// Display name.
    pub name: String,
    /// What it can do.
    pub skills: BTreeSet<String>,
    /// Worker or manual.
    pub mode: AgentMode,
    /// Whether it takes new tasks.
    pub accepting: bool,
    /// How workers execute its tasks (`None`: the workers' default).
    pub executor: Option<ExecutorSettings>,
    /// Prior and outcomes.
    pub reputation: Reputation,
    /// Success rate in basis points, prior included.
    pub rate_bp: u32,
    /// Current price multiplier.
    pub multiplier: MultiplierMilli,
    /// Satoshis earned.
    pub balance_sats: i64,
    /// Tasks assigned or running.
    pub active_tasks: u32,
    /// Tasks completed.
    pub tasks_completed: u64,
    /// Tasks it reported failed (an expiry is not counted against the agent).
    pub tasks_failed: u64,
    /// Tasks assigned to it so far.
    pub tasks_assigned: u64,
    /// When it registered (stored as nanoseconds: every submission decodes every agent, and
    /// parsing the text form was a third of that).
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub registered_at: DateTime<Utc>,
    /// Stream sequence of the agent's last message.
    pub last_sequence: u64,
}

impl AgentView {
    /// The agent's record after an older stream's outcome appended at `sequence`, whose
    /// event carries the figures after it.
    pub fn record_outcome(&mut self, e: &aicp_events::event::AgentOutcomeRecorded, sequence: u64) {
        self.reputation.successes = e.successes;
        self.reputation.failures = e.failures;
        self.rate_bp = e.rate_bp;
        self.multiplier = e.multiplier;
        self.last_sequence = sequence;
    }

    /// The agent's record after one more outcome is counted: unlike
    /// [`AgentView::record_outcome`] the count is on the task's subject, so the agent's own
    /// last sequence stays.
    pub fn count_outcome(&mut self, success: bool) {
        self.reputation = self.reputation.record(success);
        self.rate_bp = self.reputation.rate_bp();
        self.multiplier = self.reputation.multiplier();
    }
}

/// What a buyer has spent and has in escrow, and its prepaid budget if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerView {
    /// The buyer.
    pub buyer_id: BuyerId,
    /// Tasks submitted.
    pub tasks_submitted: u64,
    /// Paid to agents for completed tasks.
    pub spent_sats: u64,
    /// Held for tasks not settled yet.
    pub open_escrow_sats: u64,
    /// Returned for failed, cancelled and expired tasks.
    pub refunded_sats: u64,
    /// The prepaid balance and limits, once the buyer has deposited or set a limit: its
    /// tasks are then paid from the balance.
    pub budget: Option<Budget>,
    /// Reserved for tasks that are not stored (yet): a submission in flight, or one whose
    /// coordinator stopped between the reservation and the task.
    pub pending_sats: u64,
    /// Reservations the stream holds that the budget should have refused: 0 unless a
    /// writer skipped the check (`aicp verify` fails on any).
    pub overdrawn: u64,
    /// Stream sequence of the last message on the buyer's subject: the expectation for
    /// the next append to its budget.
    pub last_sequence: u64,
}

impl BuyerView {
    /// A buyer nothing has happened to yet.
    pub fn new(buyer_id: BuyerId) -> Self {
        Self {
            buyer_id,
            tasks_submitted: 0,
            spent_sats: 0,
            open_escrow_sats: 0,
            refunded_sats: 0,
            budget: None,
            pending_sats: 0,
            overdrawn: 0,
            last_sequence: 0,
        }
    }
}

/// Where a task's reserved price is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReservationState {
    /// Reserved; the task is not stored yet.
    Pending,
    /// The task is stored and its escrow holds the money.
    Held,
    /// The task's escrow was refunded: back in the balance.
    Refunded,
    /// The task was never stored: back in the balance.
    Released,
}

/// A task's price as reserved from its buyer's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    /// The task paid for.
    pub task_id: TaskId,
    /// Whose balance paid.
    pub buyer_id: BuyerId,
    /// How much.
    pub amount_sats: u64,
    /// The UTC day whose spending it counts in.
    pub day: NaiveDate,
    /// Where the money is now.
    pub state: ReservationState,
    /// Stream sequence of the reservation.
    pub sequence: u64,
    /// When it was made: a pending one lapses some minutes after.
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub reserved_at: DateTime<Utc>,
}

/// One side of a ledger transfer, as an account sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Stream sequence of the payment event.
    pub sequence: u64,
    /// The task the money moved for.
    pub task_id: TaskId,
    /// The account this entry belongs to.
    pub account: Account,
    /// The other account of the transfer.
    pub counterparty: Account,
    /// Positive when money came in, negative when it went out.
    pub amount_sats: i64,
    /// The account's balance after the entry.
    pub balance_sats: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// A ledger entry as stored, under the key account, 0, sequence, side: the account and
/// the sequence are its key's, so they are not stored again (a seventh of a task's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRecord {
    /// The task the money moved for.
    pub task_id: TaskId,
    /// The other account of the transfer.
    pub counterparty: Account,
    /// Positive when money came in, negative when it went out.
    pub amount_sats: i64,
    /// The account's balance after the entry.
    pub balance_sats: i64,
    /// When it happened.
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub at: DateTime<Utc>,
}

impl LedgerRecord {
    /// The entry as `account`'s ledger shows it, booked at stream sequence `sequence`.
    pub fn entry(self, account: Account, sequence: u64) -> LedgerEntry {
        LedgerEntry {
            sequence,
            task_id: self.task_id,
            account,
            counterparty: self.counterparty,
            amount_sats: self.amount_sats,
            balance_sats: self.balance_sats,
            at: self.at,
        }
    }
}

/// Marketplace-wide counters for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Tasks submitted.
    pub submitted: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks expired.
    pub expired: u64,
    /// Satoshis released to agents.
    pub settled_sats: u64,
    /// Satoshis refunded to buyers.
    pub refunded_sats: u64,
    /// Events applied.
    pub events_applied: u64,
    /// Events refused by the domain rules (a bug or a forged event upstream).
    pub events_rejected: u64,
    /// Messages that could not be decoded.
    pub poison: u64,
}

/// One minute of the dashboard's time series.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MinuteStats {
    /// Start of the minute, seconds since the epoch.
    pub minute: i64,
    /// Tasks submitted in it.
    pub submitted: u64,
    /// Tasks completed in it.
    pub completed: u64,
    /// Tasks failed, cancelled or expired in it.
    pub failed: u64,
    /// Satoshis released to agents in it.
    pub settled_sats: u64,
}

/// A message the projection could not decode, kept aside for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonRecord {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// Why it could not be decoded.
    pub error: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A write sent with an idempotency key: the request it was, and what it left behind,
/// so that a retry with the key is answered as the first request was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The fingerprint of the first request with the key.
    pub fingerprint: String,
    /// Stream sequence of its message.
    pub sequence: u64,
    /// The subject it was written on.
    pub subject: String,
    /// The task it wrote, as its message left it.
    pub task: Option<TaskView>,
    /// The agent it wrote, as its message left it.
    pub agent: Option<AgentView>,
    /// The token it wrote, as its message left it.
    pub token: Option<TokenView>,
    /// The buyer whose budget it wrote, as its message left it.
    pub buyer: Option<BuyerView>,
    /// Later messages that carried the same key: none, unless a replica wrote a retry
    /// it should have answered (`aicp verify` reports each).
    pub reused_by: Vec<u64>,
}

/// One page of a list (by sequence newest first, or by id), with the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// An API token: who it acts as and whether it still may. Never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// The token's public id.
    pub token_id: TokenId,
    /// Who it acts as.
    pub principal: Principal,
    /// What it is for.
    pub label: String,
    /// When it was issued (stored as nanoseconds, like every time in the read model).
    #[serde(with = "chrono::serde::ts_nanoseconds")]
    pub issued_at: DateTime<Utc>,
    /// Who issued it (the coordinator for the first admin token).
    pub issued_by: Option<Principal>,
    /// When it was revoked, if it was.
    #[serde(with = "chrono::serde::ts_nanoseconds_option")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<Principal>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// Stream sequence of the token's last message.
    pub last_sequence: u64,
}
