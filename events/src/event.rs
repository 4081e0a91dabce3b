//! The event catalogue: every fact AICP records, one struct per event type.
//!
//! Each struct is the *current* schema of its event type. When a schema changes, the struct
//! changes, its `VERSION` goes up, the old shape moves to [`crate::upcast`] with a
//! conversion into the new one, and the old version's encoded fixture stays in
//! `events/tests/fixtures` so that CI proves old events still decode.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::domain::access::Principal;
use crate::domain::assign::Policy;
use crate::domain::pricing::{Complexity, MultiplierMilli};
use crate::id::{AgentId, BuyerId, TaskId, TokenId};
use crate::subject::Aggregate;
use crate::token::TokenHash;

/// What every event's data has: its type name and the version of its schema.
pub trait EventData: Serialize + DeserializeOwned + Into<Event> {
    /// The event type, as written in the envelope (`"TaskSubmitted"`).
    const TYPE: &'static str;
    /// The current schema version; older versions are upcast on read.
    const VERSION: u16;
}

/// How an agent's tasks get done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentMode {
    /// Tasks are dispatched to `aicp-worker` processes.
    #[default]
    Worker,
    /// Tasks are completed by a person through the API or the UI.
    Manual,
}

/// How a worker executes an agent's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ExecutorSettings {
    /// Built in, for demos, tests and benchmarks: a task takes about `mean_duration_ms`
    /// and succeeds as often as the agent's success rate says.
    Simulate {
        /// Mean duration of a task, in milliseconds (0 for benchmarks).
        mean_duration_ms: u64,
    },
    /// Runs a command with the task as JSON on stdin; its stdout is the result.
    Exec {
        /// The program and its arguments.
        command: Vec<String>,
        /// A task running longer fails.
        timeout_ms: u64,
    },
    /// POSTs the task as JSON to the agent's endpoint; a 2xx body is the result.
    Http {
        /// The endpoint.
        url: String,
        /// A task taking longer fails.
        timeout_ms: u64,
    },
}

// ---------------------------------------------------------------------------------------
// Task events, on `aicp.evt.task.<task_id>`.
// ---------------------------------------------------------------------------------------

/// A buyer asked for a task to be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSubmitted {
    /// The new task.
    pub task_id: TaskId,
    /// Who pays for it.
    pub buyer_id: BuyerId,
    /// What is to be done, in the buyer's words.
    pub description: String,
    /// 1..=10; the price scales with it.
    pub complexity: Complexity,
    /// Skills the agent must all have; empty means any agent.
    pub required_skills: BTreeSet<String>,
    /// The most the buyer will pay, if they set a cap.
    pub max_price_sats: Option<u64>,
    /// When the task expires if it has not finished.
    pub deadline: Option<DateTime<Utc>>,
    /// How the agent is chosen.
    pub policy: Policy,
}

/// An agent was chosen for a task and the price was fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssigned {
    /// The task.
    pub task_id: TaskId,
    /// The chosen agent.
    pub agent_id: AgentId,
    /// The agent's multiplier when it was chosen.
    pub multiplier: MultiplierMilli,
    /// `100_000 * complexity * multiplier / 1000`, held in escrow.
    pub price_sats: u64,
    /// 1 for the first assignment of the task; work messages are de-duplicated by it.
    pub assignment: u32,
}

/// A worker began executing the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStarted {
    /// The task.
    pub task_id: TaskId,
    /// The agent doing it.
    pub agent_id: AgentId,
    /// Which assignment is being executed.
    pub assignment: u32,
    /// The worker process (pod name or host:pid).
    pub worker_id: String,
}

/// The agent finished the task successfully; the escrow goes to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    /// The task.
    pub task_id: TaskId,
    /// The agent that did it.
    pub agent_id: AgentId,
    /// What the agent produced.
    pub result: String,
}

/// The task failed; the escrow goes back to the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task.
    pub task_id: TaskId,
    /// The agent it was assigned to.
    pub agent_id: AgentId,
    /// Why, such as an executor's error or `max-deliveries`.
    pub reason: String,
}

/// The buyer cancelled the task before it ran; the escrow goes back to the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCancelled {
    /// The task.
    pub task_id: TaskId,
    /// The buyer who cancelled it.
    pub buyer_id: BuyerId,
    /// Why, if the buyer said.
    pub reason: String,
}

/// The task's outcome was counted once on its agent's reputation: one more success or
/// failure. On the task's subject, in the message of the outcome itself, so outcomes of
/// one agent's many tasks append in parallel (the projection adds them up in stream
/// order); replaces [`AgentOutcomeRecorded`], whose absolute figures made every outcome
/// of an agent wait for the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutcomeCounted {
    /// The task whose outcome this is.
    pub task_id: TaskId,
    /// The agent whose reputation counts it.
    pub agent_id: AgentId,
    /// Whether the task succeeded.
    pub success: bool,
}

/// The task passed its deadline unfinished; the escrow goes back to the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskExpired {
    /// The task.
    pub task_id: TaskId,
    /// The deadline it missed.
    pub deadline: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------
// Agent events, on `aicp.evt.agent.<agent_id>`.
// ---------------------------------------------------------------------------------------

/// An agent joined the marketplace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegistered {
    /// The agent.
    pub agent_id: AgentId,
    /// Its display name.
    pub name: String,
    /// What it can do; a task's required skills must be a subset.
    pub skills: BTreeSet<String>,
    /// Whether workers or people do its tasks.
    pub mode: AgentMode,
    /// The success rate it starts from, in basis points (9500 = 0.95).
    pub prior_rate_bp: u32,
    /// How many outcomes that starting rate is worth.
    pub prior_weight: u32,
    /// How workers execute its tasks (`None`: the workers' default).
    pub executor: Option<ExecutorSettings>,
}

/// A task outcome changed an agent's record; carries the figures after the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutcomeRecorded {
    /// The agent.
    pub agent_id: AgentId,
    /// The task whose outcome this is.
    pub task_id: TaskId,
    /// Whether the task succeeded.
    pub success: bool,
    /// Successful outcomes so far, this one included.
    pub successes: u64,
    /// Failed outcomes so far, this one included.
    pub failures: u64,
    /// The success rate after this outcome, in basis points, prior included.
    pub rate_bp: u32,
    /// The multiplier after this outcome.
    pub multiplier: MultiplierMilli,
}

/// An agent's profile changed; fields left `None` are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpdated {
    /// The agent.
    pub agent_id: AgentId,
    /// New display name.
    pub name: Option<String>,
    /// New skill set (replaces the old one).
    pub skills: Option<BTreeSet<String>>,
    /// New mode.
    pub mode: Option<AgentMode>,
    /// Whether it takes new tasks (false pauses it).
    pub accepting: Option<bool>,
    /// New executor settings.
    pub executor: Option<ExecutorSettings>,
}

// ---------------------------------------------------------------------------------------
// Payment events, on `aicp.evt.payment.<task_id>`: one subject per task's money.
// ---------------------------------------------------------------------------------------

/// The task's price moved from the buyer into escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowHeld {
    /// The task paid for.
    pub task_id: TaskId,
    /// Who pays.
    pub buyer_id: BuyerId,
    /// Who will be paid on success.
    pub agent_id: AgentId,
    /// The amount held.
    pub amount_sats: u64,
}

/// The escrow was paid to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowReleased {
    /// The task paid for.
    pub task_id: TaskId,
    /// Who was paid.
    pub agent_id: AgentId,
    /// The amount paid.
    pub amount_sats: u64,
}

/// The escrow went back to the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowRefunded {
    /// The task refunded.
    pub task_id: TaskId,
    /// Who got the money back.
    pub buyer_id: BuyerId,
    /// The amount refunded.
    pub amount_sats: u64,
    /// Why: the task failed, was cancelled or expired.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// Buyer events, on `aicp.evt.buyer.<buyer_id>`: a buyer's prepaid balance and limits. Every
// commitment of its money is appended expecting the buyer's last sequence, so two replicas
// cannot both spend the same satoshis.
// ---------------------------------------------------------------------------------------

/// Satoshis were paid in to a buyer's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundsDeposited {
    /// The buyer.
    pub buyer_id: BuyerId,
    /// How much, more than zero.
    pub amount_sats: u64,
    /// Where the money came from, in the depositor's words (a payment's reference).
    pub reference: String,
}

/// A buyer's spending limits were set; `None` removes a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingLimitsSet {
    /// The buyer.
    pub buyer_id: BuyerId,
    /// Most it may commit in one UTC day.
    pub daily_sats: Option<u64>,
    /// Most it may commit in all.
    pub total_sats: Option<u64>,
}

/// A task's price was committed from the buyer's balance, before the task was stored; the
/// task's own `EscrowHeld` then moves it into escrow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundsReserved {
    /// The buyer.
    pub buyer_id: BuyerId,
    /// The task it pays for.
    pub task_id: TaskId,
    /// The task's price.
    pub amount_sats: u64,
    /// The UTC day whose spending it counts in.
    pub day: NaiveDate,
}

/// A reservation whose task was never stored went back to the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundsReleased {
    /// The buyer.
    pub buyer_id: BuyerId,
    /// The task that was not stored.
    pub task_id: TaskId,
    /// Why, such as a task id that was taken.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// Token events, on `aicp.evt.token.<token_id>`: API access, kept like every other fact.
// ---------------------------------------------------------------------------------------

/// An API token was issued; only its hash is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    /// The token's public id.
    pub token_id: TokenId,
    /// Who the token acts as.
    pub principal: Principal,
    /// SHA-256 of the secret.
    pub hash: TokenHash,
    /// What it is for, in the issuer's words.
    pub label: String,
}

/// An API token was revoked: it is refused from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// The token.
    pub token_id: TokenId,
    /// Why, in the revoker's words.
    pub reason: String,
}

/// Declares the [`Event`] enum over the catalogue, with the glue every event type needs.
/// Only the list of names lives here; each type's schema is its struct above.
macro_rules! catalogue {
    ($($name:ident => $version:literal),+ $(,)?) => {
        /// Any event of the catalogue.
        ///
        /// Serializes as its data alone (untagged): the envelope carries the type and version.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(untagged)]
        pub enum Event {
            $(
                #[doc = concat!("A [`", stringify!($name), "`] event.")]
                $name($name),
            )+
        }

        $(
            impl EventData for $name {
                const TYPE: &'static str = stringify!($name);
                const VERSION: u16 = $version;
            }

            impl From<$name> for Event {
                fn from(data: $name) -> Event {
                    Event::$name(data)
                }
            }
        )+

        impl Event {
            /// Every event type with its current schema version.
            pub const TYPES: &'static [(&'static str, u16)] = &[$((stringify!($name), $version)),+];

            /// The event's type name.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$name(_) => <$name as EventData>::TYPE,)+
                }
            }

            /// The schema version the event is written with.
            pub fn schema_version(&self) -> u16 {
                match self {
                    $(Event::$name(_) => <$name as EventData>::VERSION,)+
                }
            }

            /// Decodes the data of a current-version event; `None` if `(event_type, version)`
            /// is not a current version (the upcaster then gets a try).
            pub(crate) fn decode_current(
                event_type: &str,
                version: u16,
                data: &[u8],
            ) -> Option<Result<Event, rmp_serde::decode::Error>> {
                $(
                    if event_type == <$name as EventData>::TYPE && version == $version {
                        return Some(rmp_serde::from_slice::<$name>(data).map(Event::$name));
                    }
                )+
                None
            }

            /// The data as JSON, for humans.
            pub fn data_json(&self) -> serde_json::Value {
                // Serializing plain structs of strings and numbers into a JSON value cannot fail.
                serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
            }
        }
    };
}

catalogue! {
    TaskSubmitted => 2,
    TaskAssigned => 1,
    TaskStarted => 1,
    TaskCompleted => 1,
    TaskFailed => 1,
    TaskCancelled => 1,
    TaskExpired => 1,
    AgentOutcomeCounted => 1,
    AgentRegistered => 2,
    AgentOutcomeRecorded => 1,
    AgentUpdated => 2,
    EscrowHeld => 1,
    EscrowReleased => 1,
    EscrowRefunded => 1,
    TokenIssued => 1,
    TokenRevoked => 1,
    FundsDeposited => 1,
    SpendingLimitsSet => 1,
    FundsReserved => 1,
    FundsReleased => 1,
}

impl Event {
    /// The aggregate the event belongs to, which decides its subject.
    pub fn aggregate(&self) -> Aggregate {
        match self {
            Event::TaskSubmitted(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskAssigned(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskStarted(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskCompleted(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskFailed(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskCancelled(e) => Aggregate::Task(e.task_id.clone()),
            Event::TaskExpired(e) => Aggregate::Task(e.task_id.clone()),
            Event::AgentOutcomeCounted(e) => Aggregate::Task(e.task_id.clone()),
            Event::AgentRegistered(e) => Aggregate::Agent(e.agent_id.clone()),
            Event::AgentOutcomeRecorded(e) => Aggregate::Agent(e.agent_id.clone()),
            Event::AgentUpdated(e) => Aggregate::Agent(e.agent_id.clone()),
            Event::EscrowHeld(e) => Aggregate::Payment(e.task_id.clone()),
            Event::EscrowReleased(e) => Aggregate::Payment(e.task_id.clone()),
            Event::EscrowRefunded(e) => Aggregate::Payment(e.task_id.clone()),
            Event::TokenIssued(e) => Aggregate::Token(e.token_id.clone()),
            Event::TokenRevoked(e) => Aggregate::Token(e.token_id.clone()),
            Event::FundsDeposited(e) => Aggregate::Buyer(e.buyer_id.clone()),
            Event::SpendingLimitsSet(e) => Aggregate::Buyer(e.buyer_id.clone()),
            Event::FundsReserved(e) => Aggregate::Buyer(e.buyer_id.clone()),
            Event::FundsReleased(e) => Aggregate::Buyer(e.buyer_id.clone()),
        }
    }

    /// Whether the event moves a task through its lifecycle (the state machine's input),
    /// rather than recording what follows from it (its money, its agent's count), which
    /// rides in the same message on the task's subject.
    pub fn is_task_step(&self) -> bool {
        matches!(
            self,
            Event::TaskSubmitted(_)
                | Event::TaskAssigned(_)
                | Event::TaskStarted(_)
                | Event::TaskCompleted(_)
                | Event::TaskFailed(_)
                | Event::TaskCancelled(_)
                | Event::TaskExpired(_)
        )
    }
}
