//! The work message: what a worker needs to execute one assignment of a task.
//!
//! Published by the coordinator's dispatcher on `aicp.work.<agent_id>` (stream `AICP_WORK`)
//! with msg id `work:<task_id>:<assignment>`, so a repeated dispatch is stored once. It is
//! JSON, not MessagePack: it is also what `exec` and `http` agents receive, in any language.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::ExecutorSettings;
use crate::id::{AgentId, TaskId};

/// The `Content-Type` of work messages.
pub const WORK_CONTENT_TYPE: &str = "application/json";

/// One assignment of a task to an agent, to be executed by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The task.
    pub task_id: TaskId,
    /// Which assignment of the task this is.
    pub assignment: u32,
    /// The agent doing it.
    pub agent_id: AgentId,
    /// What is to be done.
    pub description: String,
    /// 1..=10.
    pub complexity: u8,
    /// Skills the task needs.
    pub required_skills: BTreeSet<String>,
    /// What the agent is paid on success.
    pub price_sats: u64,
    /// When the task expires.
    pub deadline: Option<DateTime<Utc>>,
    /// The agent's success rate when dispatched, in basis points (the simulator uses it).
    pub success_rate_bp: u32,
    /// How to execute it; `None`: the worker's default.
    pub executor: Option<ExecutorSettings>,
}

impl WorkItem {
    /// The msg id that de-duplicates the dispatch of this assignment.
    pub fn msg_id(&self) -> String {
        format!("work:{}:{}", self.task_id, self.assignment)
    }
}

/// The reason a task gets when its work message runs out of deliveries: such tasks are
/// dead letters, listed and retried with `aicp dead-letters`.
pub const MAX_DELIVERIES: &str = "max-deliveries";

/// What a worker announces on [`crate::Namespace::worker_heartbeat_subject`] every
/// [`HEARTBEAT_EVERY`]: the dashboard counts the workers heard from recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The worker's id.
    pub worker_id: String,
    /// The agents it serves (`all` for every agent with work).
    pub agents: Vec<String>,
}

/// How often a worker sends its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
