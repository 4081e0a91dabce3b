//! Read-your-writes on one replica, without making writes wait for the read model.
//!
//! A command answers as soon as JetStream acknowledges its append. The read model applies
//! it a moment later, so a read on the same replica right after could miss it. This module
//! remembers the sequences this replica has had acknowledged that its read model may not
//! have applied yet: a read of one task waits only if that task has such a write (and
//! only for its sequence), any other read only if this replica has any (for the newest).
//! Reads of everything else, and reads on a replica that wrote nothing, never wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use aicp_events::Aggregate;
use aicp_projections::projector::Progress;

/// Entries kept per aggregate before the applied ones are dropped.
const PRUNE_AT: usize = 4096;

/// Entries kept at most: past it (a read model that stopped applying) per-aggregate
/// tracking gives way to waiting for the newest write.
const MAX_ENTRIES: usize = 65_536;

/// The acknowledged writes of this replica, by aggregate.
#[derive(Debug, Default)]
pub struct Acknowledged {
    /// The newest sequence acknowledged to this replica.
    newest: AtomicU64,
    /// Every aggregate read must wait at least for this (set when the map overflowed).
    floor: AtomicU64,
    by_aggregate: Mutex<Entries>,
}

/// The per-aggregate sequences, and the size at which applied ones are next dropped
/// (doubling, so pruning costs O(1) per write however far the read model lags).
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Aggregate, u64>,
    prune_at: usize,
}

impl Acknowledged {
    /// Notes that an append to `aggregate` was acknowledged at `sequence`; `applied` is
    /// how far the read model has got, to forget what it has.
    pub fn record(&self, aggregate: &Aggregate, sequence: u64, applied: u64) {
        self.newest.fetch_max(sequence, Ordering::AcqRel);
        if sequence <= applied {
            return;
        }
        let mut entries = self.lock();
        if entries.map.len() >= entries.prune_at.max(PRUNE_AT) {
            entries.map.retain(|_, s| *s > applied);
            if entries.map.len() >= MAX_ENTRIES {
                entries.map.clear();
                self.floor
                    .fetch_max(self.newest.load(Ordering::Acquire), Ordering::AcqRel);
            }
            entries.prune_at = entries.map.len() * 2;
        }
        let entry = entries.map.entry(aggregate.clone()).or_insert(0);
        *entry = (*entry).max(sequence);
    }

    /// The sequence a read of `aggregate` must see, if the read model may not have it.
    pub fn for_aggregate(&self, aggregate: &Aggregate) -> u64 {
        let own = self.lock().map.get(aggregate).copied().unwrap_or(0);
        own.max(self.floor.load(Ordering::Acquire))
    }

    /// The sequence any other read must see: the newest acknowledged.
    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::Acquire)
    }

    /// Forgets `aggregate`'s entry once `applied` covers it.
    fn forget(&self, aggregate: &Aggregate, applied: u64) {
        let mut entries = self.lock();
        if entries.map.get(aggregate).is_some_and(|s| *s <= applied) {
            entries.map.remove(aggregate);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every change is a single map call: a panic cannot leave it half-changed.
        self.by_aggregate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most `timeout`) until the read model shows this replica's writes to
    /// `aggregate`; at once if it already does.
    pub async fn wait_for_aggregate(
        &self,
        progress: &Progress,
        aggregate: &Aggregate,
        timeout: Duration,
    ) {
        let needed = self.for_aggregate(aggregate);
        if needed > progress.applied() && !progress.wait_for(needed, timeout).await {
            return;
        }
        if needed > 0 {
            self.forget(aggregate, progress.applied());
        }
    }

    /// Waits (at most `timeout`) until the read model shows every write this replica has
    /// had acknowledged so far; at once if it already does.
    pub async fn wait_for_all(&self, progress: &Progress, timeout: Duration) {
        let needed = self.newest();
        if needed > progress.applied() {
            progress.wait_for(needed, timeout).await;
        }
    }
}

/// Middleware: a read (GET) that is not of one task sees this replica's acknowledged
/// writes; a task's own read waits in its handler, for that task only.
pub async fn reads_see_writes(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let one_task = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|p| ONE_TASK.contains(&p.as_str()));
    if request.method() == axum::http::Method::GET && !one_task {
        state.fresh().await;
    }
    next.run(request).await
}

/// The routes that read one task, waiting for that task's writes only.
const ONE_TASK: [&str; 2] = ["/tasks/{id}", "/v1/tasks/{id}"];

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Aggregate {
        Aggregate::Task(id.parse().expect("a valid id"))
    }

    #[test]
    fn a_read_waits_only_for_its_own_aggregate() {
        let acked = Acknowledged::default();
        acked.record(&task("a"), 10, 5);
        acked.record(&task("b"), 12, 5);
        assert_eq!(acked.for_aggregate(&task("a")), 10);
        assert_eq!(acked.for_aggregate(&task("c")), 0, "never written here");
        assert_eq!(acked.newest(), 12);
        acked.record(&task("c"), 4, 5);
        assert_eq!(acked.for_aggregate(&task("c")), 0, "already applied");
    }

    #[test]
    fn applied_entries_are_pruned_and_an_overflow_falls_back_to_the_newest() {
        let acked = Acknowledged::default();
        for n in 0..PRUNE_AT as u64 {
            acked.record(&task(&format!("t{n}")), n + 1, 0);
        }
        // Everything so far applied: the next record prunes it all.
        acked.record(&task("new"), 99_999, PRUNE_AT as u64);
        assert_eq!(acked.lock().map.len(), 1);
        assert_eq!(acked.for_aggregate(&task("t1")), 0);
        for n in 0..MAX_ENTRIES as u64 {
            acked.record(&task(&format!("u{n}")), 100_000 + n, 0);
        }
        let newest = acked.newest();
        acked.record(&task("last"), newest + 1, 0);
        assert!(
            acked.for_aggregate(&task("unknown")) >= newest,
            "after an overflow every task read waits for the newest write"
        );
    }
}
