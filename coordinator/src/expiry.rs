//! The expiry process manager: a task whose deadline passes unfinished is expired; the
//! settlement manager then refunds it. A reservation whose task was never stored lapses
//! and goes back to its buyer's balance.
//!
//! Every replica runs it. The read model lists the tasks that are due; expiring one is an
//! append under the task's expected sequence, so when two replicas race, one wins and the
//! other finds the task already finished.

use std::time::Duration;

use chrono::Utc;

use crate::state::AppState;

/// How often due tasks are looked for.
pub const TICK: Duration = Duration::from_millis(500);

/// How often lapsed reservations are looked for (each look reads every buyer).
pub const SWEEP: Duration = Duration::from_secs(5);

/// Runs until `shutdown`.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => expire_due(&state).await,
            _ = sweep.tick() => state.release_lapsed().await,
            () = &mut shutdown => return,
        }
    }
}

/// Expires every task that is due now.
pub async fn expire_due(state: &AppState) {
    let due = match state.model.due(Utc::now()) {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!("cannot list due tasks: {e}");
            return;
        }
    };
    for task_id in due {
        match state.expire(&task_id).await {
            Ok(_) => tracing::info!(task = %task_id, "task expired"),
            // Another replica expired it, or it finished just now.
            Err(e) => tracing::debug!(task = %task_id, "not expired: {}", e.message),
        }
    }
}
