//! Older schema versions of events, and how each becomes the current one.
//!
//! Events are immutable, so a schema change never rewrites the stream: the old shape is
//! kept here, decoded as it was written, and converted on read. Each old version has an
//! encoded fixture in `events/tests/fixtures` that CI decodes.

use serde::{Deserialize, Serialize};

use crate::domain::assign::Policy;
use crate::domain::pricing::Complexity;
use crate::event::{Event, EventData, TaskSubmitted};
use crate::id::{BuyerId, TaskId};

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

/// Every old `(event type, version)` we can still read; the fixture test checks each.
pub const OLD_VERSIONS: &[(&str, u16)] = &[(TaskSubmitted::TYPE, 1)];

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
        _ => None,
    }
}
