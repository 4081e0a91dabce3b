//! What every handler and process manager shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aicp_events::domain::assign::Policy;
use aicp_events::id::TaskId;
use aicp_events::store::{AppendError, Appended};
use aicp_events::{Aggregate, Envelope, EventStore, Expected};
use aicp_projections::notices::Notices;
use aicp_projections::projector::Progress;
use aicp_projections::views::TaskView;
use aicp_projections::ReadModel;
use tokio::sync::watch;

use crate::error::ApiError;

/// The coordinator's shared state: one pointer, because axum clones it for every request
/// and every middleware layer (a struct of handles cost 11% of a submission's CPU).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `shared` among handlers and process managers.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
#[derive(Debug)]
pub struct Shared {
    /// The event store: the only thing commands write to.
    pub store: EventStore,
    /// This replica's read model: the only thing queries read.
    pub model: ReadModel,
    /// How far the read model has applied the stream.
    pub progress: Progress,
    /// The default assignment policy.
    pub policy: Policy,
    /// How long a read waits for this replica's own acknowledged writes to show.
    pub write_wait: Duration,
    /// This replica's acknowledged writes the read model may not show yet.
    pub acked: Arc<crate::freshness::Acknowledged>,
    /// When this process started.
    pub started_at: Instant,
    /// The stream's last sequence at start: ready once the read model reaches it.
    pub ready_at: u64,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// What the projector applies, as it applies it: the live views' feed.
    pub notices: Notices,
    /// Workers heard from and queue-depth samples, for the dashboard.
    pub fleet: crate::fleet::Fleet,
    /// Largest body of any request but a batch submission, in bytes.
    pub max_body: usize,
    /// Largest body of a batch submission, in bytes.
    pub max_batch_body: usize,
    /// Whether every buyer must pay from a prepaid balance.
    pub require_deposit: bool,
    /// How long a reservation waits for its task before it is released.
    pub reservation_lapse: Duration,
    /// A request taking longer is answered 408.
    pub request_timeout: Duration,
    /// Authentication mode, the configured admin token and the rate limits.
    pub auth: Arc<crate::auth::Auth>,
    /// Turns true when the server starts shutting down: long-lived responses (the live
    /// event stream) end then, so the graceful shutdown does not wait for them.
    pub closing: watch::Receiver<bool>,
}

impl AppState {
    /// Appends through the store, counting the outcome.
    ///
    /// In a request sent with an `Idempotency-Key`, the caller's events carry the key and
    /// are appended under the key's msg id instead of `msg_id`: a duplicate is then the
    /// first request with the key, which the command answers from (see
    /// [`crate::idempotency`]).
    pub async fn append(
        &self,
        aggregate: &Aggregate,
        events: &[Envelope],
        expected: Expected,
        msg_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        match crate::idempotency::keyed_events(events) {
            Some((events, key_msg_id)) => {
                self.append_unkeyed(aggregate, &events, expected, Some(&key_msg_id))
                    .await
            }
            None => {
                self.append_unkeyed(aggregate, events, expected, msg_id)
                    .await
            }
        }
    }

    /// Appends `events` as they are, whatever request this is: for writes a keyed retry
    /// must not be answered from, such as a submission's reservation of its price.
    pub async fn append_unkeyed(
        &self,
        aggregate: &Aggregate,
        events: &[Envelope],
        expected: Expected,
        msg_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let result = self.store.append(aggregate, events, expected, msg_id).await;
        if let Ok(appended) = &result {
            self.acked
                .record(aggregate, appended.sequence, self.progress.applied());
        }
        let outcome = match &result {
            Ok(a) if a.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(AppendError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        self.metrics.appends.with_label_values(&[outcome]).inc();
        result
    }

    /// One task from the read model once it shows this replica's writes to the task, or 404.
    pub async fn fresh_task(&self, task_id: &TaskId) -> Result<TaskView, ApiError> {
        self.see_own_writes(task_id).await;
        self.task(task_id)
    }

    /// Waits (bounded) until the read model shows this replica's writes to the task.
    pub async fn see_own_writes(&self, task_id: &TaskId) {
        self.acked
            .wait_for_aggregate(
                &self.progress,
                &Aggregate::Task(task_id.clone()),
                self.write_wait,
            )
            .await;
    }

    /// Waits (bounded) until the read model shows every write this replica has had
    /// acknowledged: before any read that is not of one task.
    pub async fn fresh(&self) {
        self.acked
            .wait_for_all(&self.progress, self.write_wait)
            .await;
    }
}
