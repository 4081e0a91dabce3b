//! The durable consumers of AICP's streams: their names and configurations, in one place.
//!
//! The coordinator, the workers and `aicp streams init` all create consumers from these
//! functions, so the three always agree (JetStream refuses to bind a durable whose
//! configuration changed in a way it cannot update).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

use crate::id::AgentId;
use crate::subject::Namespace;

/// A coordinator's durable consumer of task events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskConsumer {
    /// The durable name every replica binds to.
    pub name: &'static str,
    /// What it is for, shown by `nats consumer info` and `aicp streams status`.
    pub description: &'static str,
}

/// Settles money when tasks finish: shared by every coordinator.
pub const SETTLEMENT: TaskConsumer = TaskConsumer {
    name: "aicp-settlement",
    description: "settlement process manager, shared by every coordinator",
};

/// Puts the assignments of worker-mode agents on their work queues.
pub const DISPATCH: TaskConsumer = TaskConsumer {
    name: "aicp-dispatch",
    description: "dispatcher: assignments of worker-mode agents to their work queues",
};

/// The coordinator's durable consumers of `AICP_EVENTS`.
pub const COORDINATOR_CONSUMERS: [TaskConsumer; 2] = [SETTLEMENT, DISPATCH];

/// How long a task event stays with a coordinator replica before JetStream gives it to
/// another: after a crash, what the dead replica held is handled this much later.
pub const TASK_ACK_WAIT: Duration = Duration::from_secs(10);

/// The configuration of a coordinator consumer of task events.
pub fn task_consumer_config(namespace: &Namespace, consumer: TaskConsumer) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer.name.to_owned()),
        description: Some(consumer.description.to_owned()),
        filter_subject: namespace.kind_wildcard("task"),
        ack_policy: AckPolicy::Explicit,
        ack_wait: TASK_ACK_WAIT,
        deliver_policy: DeliverPolicy::All,
        max_ack_pending: 1024,
        ..Default::default()
    }
}

/// The durable consumer every worker of `agent` shares on `AICP_WORK`: `worker-<agent>`.
pub fn worker_consumer_name(agent: &AgentId) -> String {
    format!("worker-{agent}")
}

/// Delivery settings of a worker consumer; the defaults are the worker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConsumerSettings {
    /// How long a pulled task may go without an ack before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one work message; the last fails its task with `max-deliveries`.
    pub max_deliver: i64,
    /// Work messages pulled but not yet acked, across all the agent's workers.
    pub max_ack_pending: i64,
}

impl Default for WorkerConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

/// The configuration of the worker consumer of `agent`.
pub fn worker_consumer_config(
    namespace: &Namespace,
    agent: &AgentId,
    settings: WorkerConsumerSettings,
) -> pull::Config {
    pull::Config {
        durable_name: Some(worker_consumer_name(agent)),
        description: Some(format!("workers of {agent}")),
        filter_subject: namespace.work_subject(agent),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    }
}
