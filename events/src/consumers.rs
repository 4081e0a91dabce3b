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

/// The coordinator's process managers (dispatch, then settlement repair) on every task
/// message: shared by every coordinator replica.
///
/// One consumer for both, because each task message was delivered, handled and acked
/// twice when each had its own: a sixth of a task's machine CPU for no decision.
pub const PROCESS: TaskConsumer = TaskConsumer {
    name: "aicp-process",
    description: "process managers (dispatch, settlement), shared by every coordinator",
};

/// The coordinator's durable consumers of `AICP_EVENTS`.
pub const COORDINATOR_CONSUMERS: [TaskConsumer; 1] = [PROCESS];

/// The consumers [`PROCESS`] replaced (versions before it ran one each); [`bind`] takes
/// over where they stopped and deletes them.
pub const REPLACED: [&str; 2] = ["aicp-settlement", "aicp-dispatch"];

/// What can go wrong binding a coordinator consumer.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct BindError {
    /// What was being done.
    pub action: &'static str,
    /// Why it failed.
    pub source: async_nats::Error,
}

fn bind_error(action: &'static str) -> impl FnOnce(async_nats::Error) -> BindError {
    move |source| BindError { action, source }
}

/// Binds `consumer` on the events `stream`, creating it if it does not exist.
///
/// A new consumer on a stream that older coordinators served starts where the consumers
/// it replaces ([`REPLACED`]) had all acknowledged, not at sequence 1 (which would redo
/// every task ever run), and they are deleted once it exists. Messages between their ack
/// floors are handled again: every handler is idempotent. Every replica may race to do
/// this: the loser finds the consumer on its next try.
pub async fn bind(
    stream: &async_nats::jetstream::stream::Stream,
    namespace: &Namespace,
    consumer: TaskConsumer,
) -> Result<async_nats::jetstream::consumer::PullConsumer, BindError> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    let mut config = task_consumer_config(namespace, consumer);
    match stream.consumer_info(consumer.name).await {
        Ok(info) => {
            // Create-or-update: an existing one takes this configuration (every replica
            // agrees) but keeps its start, which JetStream cannot change.
            config.deliver_policy = info.config.deliver_policy;
            return stream
                .create_consumer(config)
                .await
                .map_err(|e| bind_error("consumer update")(e.into()));
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
        Err(e) => return Err(bind_error("consumer info")(e.into())),
    }
    let mut start: Option<u64> = None;
    let mut replaced = Vec::new();
    for name in REPLACED {
        match stream.consumer_info(name).await {
            Ok(info) => {
                let next = info.ack_floor.stream_sequence + 1;
                start = Some(start.map_or(next, |s| s.min(next)));
                replaced.push(name);
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
            Err(e) => return Err(bind_error("consumer info")(e.into())),
        }
    }
    if let Some(start_sequence) = start {
        config.deliver_policy = DeliverPolicy::ByStartSequence { start_sequence };
    }
    let bound = stream
        .create_consumer(config)
        .await
        .map_err(|e| bind_error("consumer create")(e.into()))?;
    for name in replaced {
        if let Err(e) = stream.delete_consumer(name).await {
            tracing::warn!(consumer = name, "could not delete a replaced consumer: {e}");
        } else {
            tracing::info!(
                consumer = name,
                replaced_by = consumer.name,
                ?start,
                "replaced consumer deleted"
            );
        }
    }
    Ok(bound)
}

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
