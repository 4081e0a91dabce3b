//! A durable consumer of task events, shared by every coordinator replica: the engine of
//! the process managers.
//!
//! Every replica binds to the same durable consumer, so each task event is delivered to one
//! replica at a time. A handler runs only once the local read model has applied the event,
//! so it decides from a view at least as new as the event. The event is acked when the
//! handler succeeds and nak'ed (redelivered a second later) when it asks to retry; what a
//! crashed replica held is redelivered after [`consumers::TASK_ACK_WAIT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aicp_events::consumers;
use aicp_events::id::TaskId;
use aicp_events::Aggregate;
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::AckKind;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::state::AppState;

/// How long to wait for the local read model to apply the event being handled.
pub const CATCH_UP: Duration = Duration::from_secs(5);

/// Task events one replica handles at once per consumer. A handler mostly waits (for an
/// append's ack, for the read model to apply it); one at a time held a replica to ~270
/// tasks/s. Two handlers of one task are safe: every step appends under an expected
/// sequence with a msg id.
const IN_FLIGHT: usize = 64;

/// Why an event could not be handled now; it is redelivered later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

pub use aicp_events::consumers::TaskConsumer;

/// Handles the task events of `consumer` with `handle` until `shutdown`; re-subscribes
/// after a failure or a reconnection.
pub async fn run<F>(
    state: AppState,
    consumer: TaskConsumer,
    handle: impl Fn(AppState, TaskId) -> F,
    shutdown: impl Future<Output = ()>,
) where
    F: Future<Output = Result<(), Retry>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = follow(&state, consumer, &handle) => {
                if let Err(e) = result {
                    tracing::warn!(consumer = consumer.name, "consumer stopped: {e}; restarting");
                }
            }
            () = &mut shutdown => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut shutdown => return,
        }
    }
}

/// Task events `consumer` has not finished: pending plus unacknowledged.
pub async fn pending(
    state: &AppState,
    consumer: TaskConsumer,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let stream = state
        .store
        .jetstream()
        .get_stream(state.store.namespace().events_stream())
        .await?;
    let info = stream.consumer_info(consumer.name).await?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

async fn follow<F>(
    state: &AppState,
    consumer: TaskConsumer,
    handle: &impl Fn(AppState, TaskId) -> F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    F: Future<Output = Result<(), Retry>> + Send + 'static,
{
    let namespace = state.store.namespace();
    let stream = state
        .store
        .jetstream()
        .get_stream(namespace.events_stream())
        .await?;
    let durable: consumer::Consumer<pull::Config> =
        consumers::bind(&stream, namespace, consumer).await?;
    let mut messages = durable.messages().await?;
    let reconnected = state.store.reconnected();
    tokio::pin!(reconnected);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Dropped (and so aborted) when this returns: what they held is redelivered.
    let mut handlers = JoinSet::new();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            // Pull requests in flight were lost with the old connection: pull afresh.
            () = &mut reconnected => return Err("reconnected to NATS".into()),
        };
        let Some(message) = message else { break };
        let message = message?;
        let sequence = message.info()?.stream_sequence;
        let task_id = match namespace.parse_aggregate(&message.subject) {
            Some(Aggregate::Task(id)) => id,
            _ => {
                message.ack().await?;
                continue;
            }
        };
        let permit = slots.clone().acquire_owned().await?;
        while handlers.try_join_next().is_some() {}
        let (state, work) = (state.clone(), handle(state.clone(), task_id.clone()));
        handlers.spawn(async move {
            // Decide only from a read model that has seen this event.
            let outcome = if state.progress.wait_for(sequence, CATCH_UP).await {
                work.await
            } else {
                Err(Retry(format!("read model has not reached {sequence}")))
            };
            let acked = match outcome {
                Ok(()) => message.ack().await,
                Err(retry) => {
                    tracing::warn!(consumer = consumer.name, task = %task_id, sequence, "retried later: {retry}");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                }
            };
            if let Err(e) = acked {
                // Unacked, it comes back after the ack wait; handling it again is safe.
                tracing::warn!(consumer = consumer.name, task = %task_id, "ack failed: {e}");
            }
            drop(permit);
        });
    }
    Ok(())
}
