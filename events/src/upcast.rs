//! Older schema versions of events, and how each becomes the current one.
//!
//! Events are immutable, so a schema change never rewrites the stream: the old shape is
//! kept here, decoded as it was written, and converted on read. Each old version has an
//! encoded fixture in `events/tests/fixtures` that CI decodes.

use serde::{Deserialize, Serialize};

use crate::domain::assign::Policy;
use crate::domain::pricing::Complexity;
use std::collections::BTreeSet;

use crate::event::{AgentMode, AgentRegistered, AgentUpdated, Event, EventData, TaskSubmitted};
use crate::id::{AgentId, BuyerId, TaskId};

/// `TaskSubmitted` v1: the prototype's task (description, complexity, buyer), before
/// skills, price caps, deadlines and policies existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSubmittedV1 {
    /// The new task.
    pub task_id: TaskId,
    /// Who pays for it.
    pub buyer_id: BuyerId,
    /// What is to be done.
    pub description: String,
    /// 1..=10.
    pub complexity: Complexity,
}

impl From<TaskSubmittedV1> for TaskSubmitted {
    /// A v1 task asked for nothing beyond the basics: any agent, no cap, no deadline, and
    /// the prototype's best-reputation choice.
    fn from(v1: TaskSubmittedV1) -> Self {
        TaskSubmitted {
            task_id: v1.task_id,
            buyer_id: v1.buyer_id,
            description: v1.description,
            complexity: v1.complexity,
            required_skills: Default::default(),
            max_price_sats: None,
            deadline: None,
            policy: Policy::BestReputation,
        }
    }
}

/// `AgentRegistered` v1: before agents had executor settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegisteredV1 {
    /// The agent.
    pub agent_id: AgentId,
    /// Its display name.
    pub name: String,
    /// What it can do.
    pub skills: BTreeSet<String>,
    /// Whether workers or people do its tasks.
    pub mode: AgentMode,
    /// The success rate it starts from, in basis points.
    pub prior_rate_bp: u32,
    /// How many outcomes that starting rate is worth.
    pub prior_weight: u32,
}

impl From<AgentRegisteredV1> for AgentRegistered {
    /// A v1 agent used the workers' default executor.
    fn from(v1: AgentRegisteredV1) -> Self {
        AgentRegistered {
            agent_id: v1.agent_id,
            name: v1.name,
            skills: v1.skills,
            mode: v1.mode,
            prior_rate_bp: v1.prior_rate_bp,
            prior_weight: v1.prior_weight,
            executor: None,
        }
    }
}

/// `AgentUpdated` v1: before executor settings could change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpdatedV1 {
    /// The agent.
    pub agent_id: AgentId,
    /// New display name.
    pub name: Option<String>,
    /// New skill set.
    pub skills: Option<BTreeSet<String>>,
    /// New mode.
    pub mode: Option<AgentMode>,
    /// Whether it takes new tasks.
    pub accepting: Option<bool>,
}

impl From<AgentUpdatedV1> for AgentUpdated {
    /// A v1 update left the executor as it was.
    fn from(v1: AgentUpdatedV1) -> Self {
        AgentUpdated {
            agent_id: v1.agent_id,
            name: v1.name,
            skills: v1.skills,
            mode: v1.mode,
            accepting: v1.accepting,
            executor: None,
        }
    }
}

/// Every old `(event type, version)` we can still read; the fixture test checks each.
pub const OLD_VERSIONS: &[(&str, u16)] = &[
    (TaskSubmitted::TYPE, 1),
    (AgentRegistered::TYPE, 1),
    (AgentUpdated::TYPE, 1),
];

/// Decodes and upcasts an old version, or `None` if `(event_type, version)` is not one.
pub(crate) fn decode_old(
    event_type: &str,
    version: u16,
    data: &[u8],
) -> Option<Result<Event, rmp_serde::decode::Error>> {
    match (event_type, version) {
        (TaskSubmitted::TYPE, 1) => Some(
            rmp_serde::from_slice::<TaskSubmittedV1>(data)
                .map(|v1| Event::TaskSubmitted(v1.into())),
        ),
        (AgentRegistered::TYPE, 1) => Some(
            rmp_serde::from_slice::<AgentRegisteredV1>(data)
                .map(|v1| Event::AgentRegistered(v1.into())),
        ),
        (AgentUpdated::TYPE, 1) => Some(
            rmp_serde::from_slice::<AgentUpdatedV1>(data).map(|v1| Event::AgentUpdated(v1.into())),
        ),
        _ => None,
    }
}
