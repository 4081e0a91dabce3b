//! Feeds a read model from the events stream, in process, and reports its progress.
//!
//! The projector follows `AICP_EVENTS` with an ordered consumer from the read model's
//! checkpoint + 1, applies each message in a blocking task (redb is synchronous), and
//! publishes the applied sequence on a watch channel: a command handler waits on it to
//! read its own writes. It survives the server going away: it re-subscribes from its
//! checkpoint with a backoff. Only a storage error stops it.

use std::time::Duration;

use aicp_events::store::{EventStore, ReadError, StoredBatch};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::apply::{Applied, Message};
use crate::notices::{Notice, Notices};
use crate::tables::{ProjectionError, ReadModel};

/// Messages applied in one transaction at most (those already received).
const MAX_BATCH: usize = 512;

/// How long a busy stream's batch waits for more messages before it is applied.
const COALESCE: Duration = Duration::from_millis(1);

/// How long to wait before re-subscribing after the stream failed, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the projector checks its consumer for a stall: one that has delivered nothing
/// for two whole intervals while the stream holds more is given up and subscribed again.
const STALL: Duration = Duration::from_secs(3);

/// How far a projection has got; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Progress {
    applied: watch::Receiver<u64>,
}

impl Progress {
    /// The last stream sequence applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// False once the projector has stopped (shut down or failed).
    pub fn is_running(&self) -> bool {
        self.applied.has_changed().is_ok()
    }

    /// Waits until `sequence` is applied; false if `timeout` passes first.
    pub async fn wait_for(&self, sequence: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= sequence))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Applies the stream to a read model.
#[derive(Debug)]
pub struct Projector {
    model: ReadModel,
    store: EventStore,
    applied: watch::Sender<u64>,
    notices: Notices,
}

impl Projector {
    /// A projector for `model` from `store`, and the handle to watch it.
    pub fn new(model: ReadModel, store: EventStore) -> Result<(Self, Progress), ProjectionError> {
        let last = model.last_sequence()?;
        let (applied, rx) = watch::channel(last);
        Ok((
            Self {
                model,
                store,
                applied,
                notices: Notices::new(last),
            },
            Progress { applied: rx },
        ))
    }

    /// The notices of what this projector applies, for live views.
    pub fn notices(&self) -> Notices {
        self.notices.clone()
    }

    /// Runs until `shutdown` completes, or a storage error. Flushes the read model on exit.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProjectionError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = self.model.last_sequence()? + 1;
            let stop = tokio::select! {
                stop = self.follow(from) => stop,
                () = &mut shutdown => break,
            };
            match stop {
                Stop::Storage(e) => {
                    let _ = self.model.flush();
                    return Err(e);
                }
                Stop::Stream(reason) => {
                    tracing::warn!(from, %reason, "events stream unavailable; re-subscribing");
                }
            }
            // Back off only while nothing gets through.
            if self.model.last_sequence()? >= from {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut shutdown => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.model.flush()
    }

    /// Applies messages from `from` on until the subscription or the read model fails.
    async fn follow(&self, from: u64) -> Stop {
        let mut messages = match self.store.subscribe(from).await {
            Ok(messages) => messages,
            Err(e) => return Stop::Stream(e.to_string()),
        };
        let reconnected = self.store.reconnected();
        tokio::pin!(reconnected);
        // An ordered consumer lives on one server and delivers what that server's replica
        // of the stream holds: on a cluster, a replica that fell behind (or a consumer the
        // client did not notice was lost) delivers nothing and reports nothing. The stream
        // leader knows the last sequence: lag without progress means subscribe again.
        let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + STALL, STALL);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_at_tick = *self.applied.borrow();
        // The stream's last sequence when a tick last found no progress and a lag: a lag
        // seen on two ticks in a row, with nothing applied between, is a stall, while one
        // seen once may be a message on its way.
        let mut lag_seen: Option<u64> = None;
        loop {
            let item = tokio::select! {
                // Messages first: a tick that is due while messages wait is no stall.
                biased;
                item = messages.next() => item,
                () = &mut reconnected => return Stop::Stream("reconnected to NATS".into()),
                _ = watchdog.tick() => {
                    let applied = *self.applied.borrow();
                    if applied != seen_at_tick {
                        seen_at_tick = applied;
                        lag_seen = None;
                        continue;
                    }
                    if let Some(last) = lag_seen {
                        return Stop::Stream(format!(
                            "stalled: the stream is at {last} or later, nothing after {applied} delivered in {} s",
                            2 * STALL.as_secs()
                        ));
                    }
                    match self.store.last_sequence().await {
                        Ok(last) if last > applied => lag_seen = Some(last),
                        Ok(_) => {}
                        // The stream electing a leader, say: the subscription may be fine.
                        Err(e) => tracing::debug!(error = %e, "watchdog: no stream info"),
                    }
                    // The look took time: the next one is a whole interval from now.
                    watchdog.reset();
                    continue;
                }
            };
            let Some(item) = item else { break };
            // Take what else has already arrived, without waiting: one transaction for all.
            let mut batch = Vec::new();
            let mut stop = take(item, &mut batch);
            while stop.is_none() && batch.len() < MAX_BATCH {
                match messages.next().now_or_never().flatten() {
                    Some(item) => stop = take(item, &mut batch),
                    None => break,
                }
            }
            // More than one message waiting means the stream is busy: wait a moment for
            // more, because a commit costs as much as dozens of messages, and fewer larger
            // transactions leave the CPU to requests. An idle stream is applied at once.
            if batch.len() > 1 {
                let until = tokio::time::sleep(COALESCE);
                tokio::pin!(until);
                while stop.is_none() && batch.len() < MAX_BATCH {
                    tokio::select! {
                        item = messages.next() => match item {
                            Some(item) => stop = take(item, &mut batch),
                            None => break,
                        },
                        () = &mut until => break,
                    }
                }
            }
            if !batch.is_empty() {
                let notices: Vec<Notice> = batch.iter().map(|m| self.notice(m)).collect();
                let last = batch.last().map(Message::sequence).unwrap_or(0);
                let model = self.model.clone();
                match run_blocking(move || model.apply_all(&batch)).await {
                    Ok(applied) => {
                        for (notice, applied) in notices.into_iter().zip(applied) {
                            if applied != Applied::AlreadyApplied {
                                self.notices.publish(notice);
                            }
                        }
                        self.applied.send_replace(last);
                    }
                    Err(e) => return Stop::Storage(e),
                }
            }
            if let Some(stop) = stop {
                return stop;
            }
        }
        Stop::Stream("subscription ended".into())
    }
}

impl Projector {
    /// The notice of `message`, published once it is applied.
    fn notice(&self, message: &Message) -> Notice {
        match message {
            Message::Batch(batch) => Notice {
                sequence: batch.sequence,
                aggregate: self.store.namespace().parse_aggregate(&batch.subject),
                types: batch.events.iter().map(|e| e.event.event_type()).collect(),
            },
            Message::Poison(poison) => Notice {
                sequence: poison.sequence,
                aggregate: None,
                types: Vec::new(),
            },
        }
    }
}

/// Adds a delivered item to `batch`, or says why following must stop.
fn take(item: Result<StoredBatch, ReadError>, batch: &mut Vec<Message>) -> Option<Stop> {
    match item {
        Ok(message) => batch.push(Message::Batch(message)),
        Err(ReadError::Poison(poison)) => batch.push(Message::Poison(poison)),
        Err(ReadError::Consumer(e)) => return Some(Stop::Stream(e.to_string())),
    }
    None
}

/// Why following the stream stopped.
enum Stop {
    /// The stream failed; re-subscribe.
    Stream(String),
    /// The read model failed; give up.
    Storage(ProjectionError),
}

/// Runs read-model work off the async threads.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProjectionError> + Send + 'static,
) -> Result<T, ProjectionError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(ProjectionError::Task(join.to_string())),
    }
}
